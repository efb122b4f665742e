"""Tag writes that several processes may make at once on the same run (the workers of one
study share its parent run; each may close the same stale run)."""
from __future__ import annotations

from typing import Any, Mapping

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from vaesweep.errors import ConfigError


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


#: the names a user gives (``study.name``, ``tracking.experiment``, ``tracking.run_name``)
NAME_ALLOWED = ("a non-empty name without both a ' and a \" (MLflow's search filters quote "
                "a name with the quote it lacks)")


def check_name(key: str, value: Any) -> str:
    """``value`` as a name that works in every place vaesweep puts it: MLflow tags, run and
    experiment names and search filters, Optuna study names and file names (see
    :func:`filter_value`, :func:`file_part`). Raises a ConfigError naming ``key`` for an
    empty (or blank) name and one holding both quote characters."""

    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip() \
            or ("'" in str(value) and '"' in str(value)):
        raise ConfigError(key, value, NAME_ALLOWED)
    return str(value)


def filter_value(value: Any, key: str = "name") -> str:
    """``value`` quoted as a string of an MLflow search filter (``tags.`k` = <this>``).
    MLflow's filter grammar takes a string in single or double quotes and has no escape
    inside them (it strips the outer quotes): a value with a ' is put in double quotes.
    A value with both quote characters cannot be written: a ConfigError naming ``key``."""

    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ConfigError(key, value, NAME_ALLOWED)


def file_part(name: Any) -> str:
    """``name`` as one part of a file name (``best_<name>.yaml``, ``report_<name>``): path
    separators and control characters replaced by ``_``, so the file lands in the folder
    meant."""
    return "".join("_" if c in "/\\" or ord(c) < 32 else c for c in str(name)) or "_"
