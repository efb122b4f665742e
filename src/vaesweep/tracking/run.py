"""MLflow runs: one per training job, never left RUNNING.

A :class:`TrackedRun` creates the run (or continues an existing one), logs the flattened
resolved config as dotted params and ``config.yaml``, and on exit marks the run FINISHED,
FAILED (an exception) or KILLED (Ctrl-C / SIGTERM; :mod:`vaesweep.stops`: never raised
inside a store call).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse
from typing import Any, Iterable, Iterator, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from vaesweep import stops
from vaesweep.errors import ConfigError, Interrupted  # Interrupted: re-exported, its old home
from vaesweep.tracking.stale import owner
from vaesweep.tracking.tags import delete_tag, set_tags

from vaesweep.contract import (MODEL_TRAINING, TAG_CHANGED_PARAMS, TAG_COMMIT, TAG_DATA_SHAPE,  # noqa: F401
                               TAG_ERROR, TAG_EXPERIMENT_KIND, TAG_PARENT, TAG_PREVIOUS_ERROR,
                               TAG_RESUMES, TAG_STATE, TAG_SWEEP, TAG_TRIAL, launch_dir,
                               sqlite_path)

log = logging.getLogger(__name__)

MAX_PARAM = 6000  # MLflow's limit on a param value's length
#: what MLflow's UI shows in a run's Source column: the command that made it
SOURCE_NAME = "vaesweep"


@contextlib.contextmanager
def process_tracking_uri_kept() -> Iterator[None]:
    """Leave the process's MLflow tracking URI as it was on entry: both
    ``mlflow.set_tracking_uri``'s setting and the ``MLFLOW_TRACKING_URI`` environment variable.

    Lightning's ``MLFlowLogger`` calls ``mlflow.set_tracking_uri(uri)``, which also writes the
    environment variable for subprocesses, and nothing undoes it. The config's default store
    reads ``$MLFLOW_TRACKING_URI``, so every later job composed in the same process (a
    notebook, a script calling :func:`vaesweep.train.run_job` twice, ``vaesweep best`` after a
    job) logged into the first job's store, whatever its own folder. Restored on any exit,
    a stop included. Raises nothing of its own."""
    from mlflow.tracking import set_tracking_uri
    from mlflow.tracking._tracking_service import utils  # MLflow keeps the setting there
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = getattr(utils, "_tracking_uri", None)
    try:
        yield
    finally:
        set_tracking_uri(uri)  # a no-op when unchanged; None unsets it
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


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


TRACKING = ("tracking.uri", "a reachable, writable MLflow tracking store")


def store_error(uri: str, e: BaseException, key: tuple[str, str] = TRACKING) -> Exception:
    """A failure of a store itself (unreachable, unwritable, disk full) as one clear
    :class:`ConfigError` naming its key (default ``tracking.uri``)."""
    detail = str(getattr(e, "message", None) or e).strip().splitlines()
    detail = detail[0][:300] if detail else ""
    if "sqlite" in uri and ("unable to open" in detail or "readonly" in detail):
        detail += " (is the folder writable?)"
    return ConfigError(key[0], uri, key[1], f"{type(e).__name__}: {detail}")


@contextlib.contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Serialises, between the processes of this machine, a step on an SQLite database: the
    creation of its tables (workers that start together otherwise run MLflow's or Optuna's
    migrations at once, and all but one fail), and a sweep's count-and-ask of its next trials.
    An flock on the database file itself: SQLite's own locks are POSIX record locks, which
    flocks do not touch. Other stores: no lock."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_store(uri: str, key: tuple[str, str] = TRACKING, timeout: float = 10.0) -> None:
    """Fails fast, with one :class:`ConfigError` naming ``key`` (default ``tracking.uri``), when
    a store cannot be used: an SQLite file in a folder that cannot be written, a database server
    that does not answer, an HTTP server without MLflow's ``/health``. (MLflow itself retries an
    unreachable database for about 100 s before it gives up.)"""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return
        import tempfile
        folder = path.resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder) as f:  # root ignores permission bits
                f.write(b"0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            if Path(path).exists():
                with open(path, "r+b"):
                    pass
        except OSError as e:
            raise ConfigError(key[0], uri, key[1], f"{e.strerror or e}: {folder}") from None
        check_sqlite_file(uri, key)
        if key == TRACKING:  # create MLflow's tables now, one process at a time
            try:
                with creation_lock(uri):
                    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as e:
                raise store_error(uri, e, key) from None
    elif scheme in ("postgresql", "mysql", "mssql"):
        import sqlalchemy
        args = {"connect_timeout": int(timeout)} if scheme in ("postgresql", "mysql") else {}
        try:
            engine = sqlalchemy.create_engine(uri, connect_args=args)
            with engine.connect():
                pass
            engine.dispose()
        except Exception as e:
            raise store_error(uri, e, key) from None
    elif scheme in ("http", "https"):
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read(100)
        except (OSError, urllib.error.URLError) as e:
            raise store_error(uri, e, key) from None


def check_sqlite_file(uri: str, key: tuple[str, str] = TRACKING) -> None:
    """Refuses, with one :class:`ConfigError` naming ``key``, an ``sqlite:///`` store whose file
    exists but is no readable SQLite database (truncated, overwritten, not SQLite): SQLite's
    ``PRAGMA quick_check`` on the file opened read-only. A file that does not exist, a locked
    database (another worker writing) and other stores pass: their own calls report them.
    MLflow and Optuna would otherwise fail with an SQLAlchemy traceback (``database disk
    image is malformed``)."""
    import sqlite3
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=60)
        try:
            row = con.execute("PRAGMA quick_check(1)").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:  # locked, or cannot be opened: not known to be corrupt
        return
    except sqlite3.DatabaseError as e:  # "database disk image is malformed", "file is not a database"
        problem = f"{type(e).__name__}: {e}"
    else:
        if row is None or row[0] == "ok":
            return
        problem = f"quick_check: {str(row[0]).splitlines()[0][:200]}"
    raise ConfigError(key[0], uri, key[1], f"{path} is not a readable SQLite database ({problem}): "
                      "restore it from a backup, or move it aside to start a new store")


def check_tracking_uri(uri: str) -> None:
    """A SQLite store that does not exist is a user error (MLflow would create an empty one)."""
    if "://" not in uri and not uri.startswith("databricks"):
        raise ConfigError("--tracking-uri", uri, "an MLflow tracking URI such as "
                          "sqlite:///mlflow.db or http://127.0.0.1:5000")
    p = sqlite_path(uri)
    if p is not None and not p.is_file():
        raise ConfigError("--tracking-uri", uri, "an existing MLflow store",
                          hint=f"{p} does not exist: run a sweep first, e.g. "
                               "`vaesweep -m +sweep=quick`, or pass --tracking-uri")
    if urlparse(uri).scheme == "file":
        raise ConfigError("--tracking-uri", uri, "a database or server URI (sqlite:///..., "
                          "postgresql://..., http://...)")
    check_sqlite_file(uri, ("--tracking-uri", "a readable MLflow tracking store"))


def restore_command(uri: str, kind: str, ident: str) -> str:
    """The shell command that restores a soft-deleted MLflow run (``kind`` "run") or
    experiment ("experiment") of the store ``uri``."""
    option = "--run-id" if kind == "run" else "--experiment-id"
    return (f"MLFLOW_TRACKING_URI={shlex.quote(uri)} mlflow {kind}s restore {option} "
            f"{shlex.quote(str(ident))}")


def deleted_experiment(key: str, name: str, uri: str, exp: Any) -> ConfigError:
    """The ConfigError for a soft-deleted experiment ``exp`` named by ``key``: which one,
    and how to restore it."""
    return ConfigError(key, name, "an active MLflow experiment",
                       f"experiment {name!r} (id {exp.experiment_id}) of {uri} is deleted: "
                       f"restore it with `{restore_command(uri, 'experiment', exp.experiment_id)}`"
                       f", or choose another {key}")


def deleted_run(key: str, value: Any, uri: str, run_id: str, allowed: str,
                other: str) -> ConfigError:
    """The ConfigError for a soft-deleted run ``run_id`` reached through ``key``: what is
    ``allowed``, which run is deleted, how to restore it, and the ``other`` way out."""
    return ConfigError(key, value, allowed,
                       f"MLflow run {run_id} of {uri} is deleted: restore it with "
                       f"`{restore_command(uri, 'run', run_id)}`, or {other}")


def check_experiment(uri: str, name: str, key: str = "tracking.experiment") -> None:
    """Experiment ``name`` of store ``uri`` is active or does not exist yet (then it is
    created): a soft-deleted one (``mlflow experiments delete``) takes no runs, and is a
    ConfigError naming ``key``, the experiment's id and how to restore it. A store that
    cannot be read is :func:`store_error`."""
    try:
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except Exception as e:
        raise store_error(uri, e) from None
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise deleted_experiment(key, name, uri, exp)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing (by whichever worker comes first),
    tagged as a model-training experiment (:data:`TAG_EXPERIMENT_KIND`) unless it has a kind.
    A soft-deleted one is a ConfigError on ``tracking.experiment`` (:func:`check_experiment`)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise deleted_experiment("tracking.experiment", name, client.tracking_uri, exp)
    if exp is None:
        where = None  # MLflow's default: ./mlruns of the working folder
        if sqlite_path(client.tracking_uri) is not None and Path.cwd().resolve() != launch_dir().resolve():
            where = str(launch_dir().resolve() / "mlruns")  # hydra.job.chdir=true: not the job's folder
        try:
            return client.create_experiment(name, artifact_location=where,
                                            tags={TAG_EXPERIMENT_KIND: MODEL_TRAINING})
        except Exception as e:
            if getattr(e, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if TAG_EXPERIMENT_KIND not in exp.tags:  # made by hand or by an older vaesweep
        try:
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, MODEL_TRAINING)
        except Exception:
            # a read-then-insert too: another worker may have tagged it a moment earlier
            if TAG_EXPERIMENT_KIND not in client.get_experiment(exp.experiment_id).tags:
                raise
    return exp.experiment_id


def source_tags() -> dict[str, str]:
    """MLflow's own source tags (the UI's Source column and commit): the ``vaesweep`` command,
    run locally, at this checkout's git commit (when it is one). Set explicitly: MLflow would
    take ``sys.argv[0]``, which in a launcher's worker is the launcher's own script."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE
    tags = {MLFLOW_SOURCE_NAME: SOURCE_NAME, MLFLOW_SOURCE_TYPE: "LOCAL"}
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def set_note(client: MlflowClient, run_id: str, markdown: str) -> None:
    """The run's description in MLflow's UI (``mlflow.note.content``, markdown)."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
    set_tags(client, run_id, {MLFLOW_RUN_NOTE: markdown})


class TrackedRun:
    """Context manager around one MLflow run (see module docstring)."""

    def __init__(self, uri: str, experiment: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None) -> None:
        self.uri = uri
        check_store(uri)
        self._params: dict[str, str] = {}  # a continued run's params (they are immutable)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            if run_id is None:
                exp_id = experiment_id(self.client, experiment)
                tags = {**owner(), **source_tags(),
                        **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
                run = self.client.create_run(exp_id, tags=tags, run_name=run_name)
            else:
                run = self.client.get_run(run_id)
                if run.info.lifecycle_stage == "deleted":
                    raise deleted_run("run_id", run_id, uri, run_id, "an active (not deleted) "
                                      "MLflow run", "continue another run")
                self._params = dict(run.data.params)
                # a continued run: now owned by this process, its old error kept aside
                resumes = int(run.data.tags.get(TAG_RESUMES, 0)) + 1
                old_error = run.data.tags.get(TAG_ERROR)
                kept = {TAG_PREVIOUS_ERROR: old_error} if old_error is not None else {}
                # the workers of one study continue its parent run together: race-safe writes
                set_tags(self.client, run_id, {TAG_RESUMES: resumes, **kept, **owner(),
                                               **source_tags(), **(tags or {})})
                if old_error is not None:
                    delete_tag(self.client, run_id, TAG_ERROR)
                self.client.update_run(run_id, status="RUNNING")
        except ConfigError:
            raise
        except Exception as e:
            if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" and run_id:
                            raise ConfigError("run_id", run_id, f"a run of the tracking store {uri}") from None
            raise store_error(uri, e) from None
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> "TrackedRun":
        self._old_handlers = stops.install()  # a stop is raised, outside store calls
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        stops.leave(self._old_handlers, exc)  # a stop: its frames released, locks with them
        if exc_type is None:
            status = "FINISHED"
        elif exc_type.__name__ == "TrialPruned":  # optuna's: stopped early on purpose
            status = "KILLED"
        elif issubclass(exc_type, (KeyboardInterrupt, Interrupted)):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            end_tags = {}
            if exc_type is not None and exc_type.__name__ == "TrialPruned":
                end_tags[TAG_STATE] = "PRUNED"
            if exc is not None:
                end_tags[TAG_ERROR] = f"{exc_type.__name__}: {exc}"
            if end_tags:
                set_tags(self.client, self.run_id, end_tags)
            self.client.set_terminated(self.run_id, status)
            if isinstance(exc, Interrupted):
                exc.killed_runs.append(self.run_id)
        except Exception as e:  # the store itself failed (disk full, server gone)
            if exc is None:
                raise store_error(self.uri, e) from None
            # keep the job's own error; the run stays RUNNING until the sweep's next start
            # closes it (tracking/stale.py)
            log.error("Could not mark MLflow run %s %s: %s", self.run_id, status, e)
        return False

    # -- logging helpers ---------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs params; on a continued run only the new ones (MLflow params are immutable):
        changed values are listed in the tag ``vaesweep.changed_params``."""
        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        if self._params:
            changed = [f"{p.key}: {self._params[p.key]} -> {p.value}" for p in items
                       if p.key in self._params and self._params[p.key] != p.value]
            if changed:
                set_tags(self.client, self.run_id, {TAG_CHANGED_PARAMS: "; ".join(changed)})
            items = [p for p in items if p.key not in self._params]
            self._params.update({p.key: p.value for p in items})
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
