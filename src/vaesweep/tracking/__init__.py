"""Tracking: MLflow runs (parent/child links, params, artifacts) and their pictures."""
from vaesweep.tracking.run import (TAG_COMMIT, TAG_DATA_SHAPE, TAG_PARENT, TAG_SWEEP, TAG_TRIAL,
                                   TrackedRun, flatten, git_commit,
                                   process_tracking_uri_kept)

__all__ = ["TAG_COMMIT", "TAG_DATA_SHAPE", "TAG_PARENT", "TAG_SWEEP", "TAG_TRIAL", "TrackedRun",
           "flatten", "git_commit", "process_tracking_uri_kept"]
