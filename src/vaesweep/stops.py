"""Stopping a job: SIGINT (Ctrl-C) and SIGTERM become :class:`vaesweep.errors.Interrupted`,
raised in the main thread, but never inside a database or config-library call.

A stop raised inside such a call can break what it was writing:

* inside a tracking or Optuna store transaction, SQLAlchemy treats the exit exception as a
  disconnect and drops the connection without a rollback; the traceback keeps it alive, so on
  SQLite the file stays locked and marking the run KILLED waits out MLflow's 20 s busy timeout;
* inside MLflow's first-time table creation (alembic), the database is left half-built and
  every later start fails on "table ... already exists";
* inside SQLAlchemy's garbage-collection callbacks the exception is printed as "Exception
  ignored" and the stop is lost;
* inside Hydra composing a trial's config, or OmegaConf under it, the stop came out as
  another error (Hydra's config source: ``UnboundLocalError: ... 'f'``; a half-updated node:
  a ConfigCompositionException), exit code 1 and the parent run FAILED.

So a stop that arrives while any frame of :data:`DEFER_IN` is on the stack (or inside a
:class:`held` block) is sent again every :data:`STOP_RECHECK_S` and raised once that call has
returned; after :data:`STOP_DEFER_S` it is raised wherever it lands (a call stuck on another
process's lock must not keep the job alive).
:func:`catching_stops` installs the handler for the whole CLI command; each
:class:`vaesweep.tracking.TrackedRun` installs it again while its run is open. Light on imports
(the CLI installs it before Hydra, MLflow or torch are imported).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from typing import Any, Iterator

from vaesweep.errors import Interrupted

#: the signals that stop a job (the user stopping it): its runs end KILLED, not FAILED. Ctrl-C
#: is SIGINT; without this handler Lightning turns a KeyboardInterrupt into ``sys.exit(1)``.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: modules a stop is never raised inside (see the module docstring)
DEFER_IN = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "pymysql", "alembic",
            "mlflow.store", "optuna.storages", "omegaconf",
            # Hydra composing a config (not its launchers, which run the jobs)
            "hydra._internal.config_loader_impl", "hydra._internal.defaults_list",
            "hydra._internal.config_repository", "hydra._internal.grammar",
            "hydra._internal.core_plugins.file_config_source",
            "hydra._internal.core_plugins.importlib_resources_config_source",
            "hydra._internal.core_plugins.structured_config_source",
            "hydra.core.config_loader", "hydra.core.override_parser")
#: how often a deferred stop is looked at again, and the longest it is deferred (seconds)
STOP_RECHECK_S = 0.05
STOP_DEFER_S = 5.0


_held = 0  # how many :class:`held` blocks the main thread is in


class held:
    """``with held() as hold:`` a stop that arrives inside the block is raised when the block
    ends or ``hold.release()`` is called (or after :data:`STOP_DEFER_S`): for steps that must
    happen together, such as creating a study and naming its parent run in it (a stop
    between them left a study whose next worker waited for a parent run that never came)."""

    def __init__(self) -> None:
        self.on = False

    def __enter__(self) -> "held":
        global _held
        _held += 1
        self.on = True
        return self

    def release(self) -> None:
        """Ends the hold early; a stop that arrived meanwhile is raised within
        :data:`STOP_RECHECK_S`."""
        global _held
        if self.on:
            _held -= 1
            self.on = False

    def __exit__(self, *exc: Any) -> None:
        self.release()


def in_deferred_call(frame: Any) -> bool:
    """Whether ``frame`` or one of its callers runs code of :data:`DEFER_IN`."""
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if any(name == m or name.startswith(m + ".") for m in DEFER_IN):
            return True
        frame = frame.f_back
    return False


def release_frames(exc: BaseException) -> None:
    """Clears the locals of the finished frames that ``exc`` (and the exceptions it arose
    from) passed through. A stop raised inside a store call after all (one that took longer
    than :data:`STOP_DEFER_S`) leaves its open transaction in a database connection that only
    those frames still hold: cleared, the connection closes and its lock is released."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__


def _send_again(signum: int) -> None:
    """Delivers ``signum`` to the main thread once more, :data:`STOP_RECHECK_S` from now."""
    main = threading.main_thread().ident
    timer = threading.Timer(STOP_RECHECK_S, signal.pthread_kill, (main, signum))
    timer.daemon = True
    timer.start()


def stop_handler() -> Any:
    """A signal handler that raises :class:`Interrupted`, deferred out of :data:`DEFER_IN`."""
    first: dict[int, float] = {}  # signal -> when it first arrived, while it is deferred

    def on_stop(signum: int, frame: Any) -> None:
        since = first.setdefault(signum, time.monotonic())
        if (_held or in_deferred_call(frame)) and time.monotonic() - since < STOP_DEFER_S:
            _send_again(signum)
            return
        first.clear()
        raise Interrupted(signum)
    return on_stop


def install() -> dict[int, Any]:
    """Installs :func:`stop_handler` for :data:`STOP_SIGNALS`; returns the handlers it
    replaced (for :func:`leave`), or ``{}`` outside the main thread, where Python allows
    no signal handler (e.g. a joblib worker thread)."""
    handler, old = stop_handler(), {}
    try:
        for sig in STOP_SIGNALS:
            old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        return {}
    return old


def leave(old: dict[int, Any], exc: BaseException | None) -> None:
    """Puts back the handlers :func:`install` replaced; when the block is left by a stop
    (``exc`` not an Exception: Interrupted, KeyboardInterrupt, SystemExit), releases the
    frames it passed through (:func:`release_frames`)."""
    for sig, handler in old.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if exc is not None and not isinstance(exc, Exception):
        release_frames(exc)


@contextlib.contextmanager
def catching_stops() -> Iterator[None]:
    """The block runs with :func:`stop_handler` installed (:func:`install`, :func:`leave`)."""
    old, exc = install(), None
    try:
        yield
    except BaseException as e:
        exc = e
        raise
    finally:
        leave(old, exc)
