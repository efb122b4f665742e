"""Entry points: ``vaesweep`` (a Hydra app: one run, or ``-m`` for a sweep) and its
subcommands ``best``, ``reproduce``, ``report`` and ``convert``."""
from __future__ import annotations

import importlib.resources
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from vaesweep.errors import VaesweepError

log = logging.getLogger("vaesweep")

#: the ``_target_`` a config may name for ``hydra.utils.instantiate`` anywhere in the app (Hydra
#: callbacks, logging handlers beyond Hydra's own): none. Call sites add what they need
#: (the sweepers: optuna.samplers.*, optuna.pruners.*), so a config cannot run other code.
EXECUTION_WHITELIST: tuple[str, ...] = ()


def conf_dir() -> Path:
    """The Hydra config folder: ``$VAESWEEP_CONF_DIR`` when set, else the package's ``conf``.

    In a checkout ``src/vaesweep/conf`` is a link to the top-level ``conf/`` (whose ``sweep``
    links to ``sweeps/``), so an editable install reads the source tree; a wheel or a
    non-editable ``pip install .`` carries both folders' YAML files as package data there."""
    env = os.environ.get("VAESWEEP_CONF_DIR")
    return Path(env) if env else Path(str(importlib.resources.files("vaesweep") / "conf"))


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


def _task(cfg: Any) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from vaesweep.train import machine_fault, objectives, run_job

    _quiet_lightning()
    try:
        metrics = run_job(cfg)
    except VaesweepError as e:
        if HydraConfig.get().mode == RunMode.RUN:
            fail(e)
        raise
    except Exception as e:
        if HydraConfig.get().mode == RunMode.RUN and machine_fault(e):  # disk full, read-only
            fail(VaesweepError(f"the run stopped on a fault of the machine: "
                               f"{type(e).__name__}: {e}"[:1000]))
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

    import vaesweep.resolvers  # noqa: F401  (resolvers used by the configs)

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
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        mod, _, fn = SUBCOMMANDS[argv[0]].partition(":")
        try:
            return getattr(importlib.import_module(mod), fn)(argv[1:])
        except VaesweepError as e:
            print(f"vaesweep {argv[0]}: error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
    if argv and argv[0] == "sweep":
        argv = sweep_argv(argv[1:])
    sys.argv = [sys.argv[0], *argv]
    return hydra_main()


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
