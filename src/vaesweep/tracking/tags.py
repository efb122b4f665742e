"""Tag writes that several processes may make at once on the same run (the workers of one
study share its parent run; each may close the same stale run)."""
from __future__ import annotations

from typing import Any, Mapping

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Sets ``tags`` on run ``run_id`` in one ``log_batch``, safely when several processes set
    the same key at once (the workers of one study share its parent run).

    ``MlflowClient.set_tag`` is a read-then-insert: two workers that set a new key together on
    a database store both insert, and one fails with a unique-key violation on ``tag_pk``.
    MLflow's batch path (``SqlAlchemyStore._set_tags``) retries that conflict as an update.
    Values are written as strings, cut to 5,000 characters (MLflow's limit on a tag value)."""
    items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, tags=items[i:i + 100])


def delete_tag(client: MlflowClient, run_id: str, key: str) -> None:
    """Deletes tag ``key`` of run ``run_id``; a tag another process deleted first is not an
    error."""
    try:
        client.delete_tag(run_id, key)
    except Exception as e:
        if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
