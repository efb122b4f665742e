"""MLflow runs: one per training job, never left RUNNING.

A :class:`TrackedRun` creates the run (or continues an existing one), logs the flattened
resolved config as dotted params and ``config.yaml``, and on exit marks the run FINISHED,
FAILED (an exception) or KILLED (Ctrl-C / SIGTERM).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TAG_SWEEP, TAG_TRIAL, TAG_COMMIT, TAG_PARENT = (
    "vaesweep.sweep", "vaesweep.trial", "vaesweep.git_commit", "mlflow.parentRunId")
MAX_PARAM = 6000  # MLflow's limit on a param value's length


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"kl": {"beta_norm": 0.1}}`` -> ``{"kl.beta_norm": 0.1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so the run is marked KILLED on the way out."""


class TrackedRun:
    """Context manager around one MLflow run (see module docstring)."""

    def __init__(self, uri: str, experiment: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
            run = self.client.create_run(exp_id, tags=tags, run_name=run_name)
        else:
            run = self.client.get_run(run_id)
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self._old_term: Any = None

    def __enter__(self) -> "TrackedRun":
        def on_term(signum: int, frame: Any) -> None:
            raise Interrupted(f"signal {signum}")
        try:
            self._old_term = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread (e.g. a joblib worker thread)
            self._old_term = None
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        if exc_type is None:
            status = "FINISHED"
        elif exc_type.__name__ == "TrialPruned":  # optuna's: stopped early on purpose
            status = "KILLED"
            self.client.set_tag(self.run_id, "vaesweep.state", "PRUNED")
        elif issubclass(exc_type, (KeyboardInterrupt, Interrupted)):
            status = "KILLED"
        else:
            status = "FAILED"
        if exc is not None:
            self.client.set_tag(self.run_id, "vaesweep.error", f"{exc_type.__name__}: {exc}"[:5000])
        self.client.set_terminated(self.run_id, status)
        return False

    # -- logging helpers ---------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.log_metric_series([(k, float(v), step) for k, v in metrics.items()], now)

    def log_metric_series(self, series: Iterable[tuple[str, float, int]],
                          timestamp: int | None = None) -> None:
        now = timestamp or int(time.time() * 1000)
        items = [Metric(k, v, now, s) for k, v, s in series]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_figure(self, fig: Any, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)
