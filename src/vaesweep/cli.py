"""Entry points: ``vaesweep`` (a Hydra app: one run, or ``-m`` for a sweep) and its
subcommands ``best``, ``reproduce``, ``report`` and ``convert``."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

from vaesweep.contract import conf_dir
from vaesweep.errors import VaesweepError, stop_signal
from vaesweep.stops import catching_stops
from vaesweep.job.rundir import remove_refused

log = logging.getLogger("vaesweep")

#: the ``_target_`` a config may name for ``hydra.utils.instantiate`` anywhere in the app (Hydra
#: callbacks, logging handlers beyond Hydra's own): vaesweep's own run-folder callback only.
#: Call sites add what they need (the sweepers: optuna.samplers.*, optuna.pruners.*), so a
#: config cannot run other code.
EXECUTION_WHITELIST: tuple[str, ...] = ("vaesweep.job.rundir.RunDir",)


CONF_DIR = conf_dir()


def _quiet_lightning() -> None:
    """Lightning adds its own console handlers (on ``lightning``, and on ``lightning.pytorch``
    and ``lightning.fabric`` when the root logger had none at import); Hydra's root handler
    already prints their records, so each line appeared twice (``INFO: GPU available...`` and
    ``[...][lightning...][INFO] - GPU available...``). Drop theirs (and the advertising tip)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(NoTips())


def fail(e: VaesweepError) -> NoReturn:
    """A user error as one line on stderr, and its exit code (no traceback)."""
    print(f"vaesweep: error: {e}", file=sys.stderr)
    raise SystemExit(e.exit_code) from None


def warn_repeated(overrides: list[str]) -> list[str]:
    """One warning line on stderr per key given more than once among the command line's
    ``overrides`` (Hydra takes the last, silently):
    ``vaesweep: warning: kl.beta_norm is given twice (0.1, 0.2); using the last, 0.2``.
    Returns the lines printed."""
    given: dict[str, list[str]] = {}
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and not key.startswith("~"):
            given.setdefault(key.lstrip("+"), []).append(value)
    lines = []
    for key, values in given.items():
        if len(values) > 1:
            times = "twice" if len(values) == 2 else f"{len(values)} times"
            lines.append(f"vaesweep: warning: {key} is given {times} ({', '.join(values)}); "
                         f"using the last, {values[-1]}")
            print(lines[-1], file=sys.stderr)
    return lines


def verbose() -> bool:
    """``VAESWEEP_VERBOSE=1``: a failed run shows its Python traceback, not one line."""
    return os.environ.get("VAESWEEP_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def _traceback_to_log_file(e: BaseException) -> str | None:
    """Writes ``e``'s traceback to the job's log file only (Hydra's file handler), not to the
    console; returns the file's path, or None when there is none."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return None
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed:", (),
                            (type(e), e, e.__traceback__))
    for h in files:
        h.handle(record)
    return files[0].baseFilename


def run_failure(e: BaseException) -> VaesweepError | None:
    """A run that failed on its numbers (a non-finite loss) as one clear line, with the
    traceback kept in the log file; None for other failures."""
    if not (isinstance(e, FloatingPointError) and str(e).startswith("non-finite loss")):
        return None
    where = _traceback_to_log_file(e)
    err = VaesweepError(f"the run stopped: {e}; the traceback is in "
                        f"{where or 'the job log'} (or set VAESWEEP_VERBOSE=1)")
    err.exit_code = 1
    return err


def is_stop(e: BaseException) -> bool:
    """Whether ``e`` is the user stopping the job: Ctrl-C, or SIGINT/SIGTERM inside a run
    (:class:`vaesweep.errors.Interrupted`)."""
    return stop_signal(e) is not None


def interrupted(e: BaseException) -> NoReturn:
    """The user stopped the job (Ctrl-C, SIGTERM): one line naming the signal and the MLflow
    runs marked KILLED, and the shell's exit code for that signal."""
    stop = stop_signal(e)
    assert stop is not None, "called for a stop only (is_stop)"
    name, signum = stop
    runs = list(getattr(e, "killed_runs", []))  # an Interrupted's; none outside any run
    what = (f"MLflow run{'s' if len(runs) > 1 else ''} {', '.join(runs)} "
            f"{'are' if len(runs) > 1 else 'is'} marked KILLED" if runs
            else "no MLflow run had started")
    print(f"vaesweep: interrupted by {name}: {what}", file=sys.stderr)
    raise SystemExit(128 + signum) from None


def _task(cfg: Any) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from vaesweep.train import machine_fault, objectives, run_job  # start-up time: torch not for --help

    _quiet_lightning()
    if HydraConfig.get().mode == RunMode.RUN:  # a sweep's own sweeper says it, once
        warn_repeated(list(HydraConfig.get().overrides.task))
    try:
        metrics = run_job(cfg)
    except VaesweepError as e:
        if HydraConfig.get().mode == RunMode.RUN:
            remove_refused()  # a refused run leaves no outputs/<day>/<time>/ behind
            fail(e)
        raise
    except Exception as e:
        if HydraConfig.get().mode == RunMode.RUN and machine_fault(e):  # disk full, read-only
            fail(VaesweepError(f"the run stopped on a fault of the machine: "
                               f"{type(e).__name__}: {e}"[:1000]))
        failure = run_failure(e) if HydraConfig.get().mode == RunMode.RUN and not verbose() else None
        if failure is not None:
            fail(failure)
        raise
    return objectives(cfg, metrics)


def _quiet_known_warnings() -> None:
    """Library warnings checked to be harmless for vaesweep, not shown to the user."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    # QMCSampler has been marked experimental since Optuna 3.0 (still in 5.0); the `quick`
    # study uses only its documented arguments (qmc_type, scramble, seed), which the tests
    # run (tests/test_sweeps.py, test_conventions.py), so an interface change fails a test
    # rather than a user's sweep.
    warnings.filterwarnings("ignore", message="QMCSampler is experimental",
                            category=ExperimentalWarning)


def hydra_main() -> Any:
    import hydra

    _quiet_known_warnings()

    import vaesweep.resolvers  # noqa: F401  (resolvers the configs use; start-up time: torch)

    if not (CONF_DIR / "config.yaml").is_file():
        print(f"vaesweep: error: no config folder at {CONF_DIR} (set VAESWEEP_CONF_DIR)",
              file=sys.stderr)
        raise SystemExit(2)
    return hydra.main(config_path=str(CONF_DIR), config_name="config",
                      execution_whitelist=EXECUTION_WHITELIST)(_task)()


SUBCOMMANDS: dict[str, str] = {
    "best": "vaesweep.sweep.best:best_main",
    "reproduce": "vaesweep.sweep.best:reproduce_main",
    "report": "vaesweep.report.cli:report_main",
    "convert": "vaesweep.convert:convert_main",
}


def main(argv: list[str] | None = None) -> Any:
    """``vaesweep [subcommand] ARGS``. Ctrl-C and SIGTERM stop it with one line and exit code
    128 + the signal, at any point: never inside a store write or MLflow's table creation
    (:mod:`vaesweep.stops`)."""
    with catching_stops():
        return _main(argv)


def _main(argv: list[str] | None) -> Any:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        mod, _, fn = SUBCOMMANDS[argv[0]].partition(":")
        try:
            return getattr(importlib.import_module(mod), fn)(argv[1:])
        except VaesweepError as e:
            print(f"vaesweep {argv[0]}: error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except BrokenPipeError:
            # the reader stopped early (`vaesweep convert ... | head`): like any Unix filter,
            # stop quietly; stdout is pointed at devnull so Python's exit flush cannot fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        except BaseException as e:
            if is_stop(e) and not verbose():
                interrupted(e)
            raise
    if argv and argv[0] == "sweep":
        argv = sweep_argv(argv[1:])
    sys.argv = [sys.argv[0], *debug_last(argv)]
    try:
        return hydra_main()
    except BaseException as e:
        if is_stop(e) and not verbose():
            interrupted(e)
        raise


def debug_last(args: list[str]) -> list[str]:
    """``debug=NAME`` (or ``+debug=NAME``) anywhere on the command line becomes ``+debug=NAME``
    at its end: Hydra applies appended groups in command-line order, after the primary
    config's defaults, so the debug preset comes after ``+sweep=...`` and its values win
    (``conf/debug/``, as lightning-hydra-template's debug group, which is last in its defaults)."""
    picked = [a for a in args if a.split("=", 1)[0].lstrip("+") == "debug" and "=" in a]
    if not picked:
        return list(args)
    return [a for a in args if a not in picked] + ["+debug=" + picked[-1].split("=", 1)[1]]


def sweep_argv(args: list[str]) -> list[str]:
    """``vaesweep sweep NAME [overrides]`` is ``vaesweep -m +sweep=NAME [overrides]``."""
    names = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
    if not args or args[0].startswith("-") or "=" in args[0]:
        print("usage: vaesweep sweep NAME [OVERRIDE ...]\nnamed studies: " + ", ".join(names),
              file=sys.stderr)
        raise SystemExit(2)
    if args[0] not in names:
        print(f"vaesweep: error: sweep={args[0]!r} is invalid: allowed is one of "
              + ", ".join(names), file=sys.stderr)
        raise SystemExit(2)
    return ["-m", f"+sweep={args[0]}", *args[1:]]
