"""A single run's folder (``hydra.run.dir``): checked to be writable before Hydra makes it, and
removed again when vaesweep refuses the run (docs/pages/reliability.md, "Bad input": a refusal leaves nothing).

:class:`RunDir` is a Hydra callback (``hydra.callbacks.vaesweep_run_dir`` in
``conf/config.yaml``); its ``on_run_start`` runs after the config is composed and before Hydra
creates the folder and writes ``.hydra/`` and the job's log file there."""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from vaesweep.errors import ConfigError, VaesweepError

#: the topmost folder of the current run's ``hydra.run.dir`` that did not exist before the
#: run (``outputs/`` itself, ``outputs/<day>`` or ``outputs/<day>/<time>``); None when the
#: folder was already there (a resumed run) or outside a single run
CREATED: Path | None = None


def check_writable(key: str, value: Any, path: Path, hint: str) -> None:
    """Refuses, with one :class:`vaesweep.errors.ConfigError` naming ``key`` and ``value``, a
    file or folder ``path`` that cannot be made: its nearest existing folder is not writable
    (a read-only file system, or no permission). A temporary folder is made and removed
    there: root ignores permission bits, so ``os.access`` is no test."""
    existing = path.expanduser().absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        existing = existing.parent
    try:
        Path(tempfile.mkdtemp(dir=existing)).rmdir()
    except OSError as e:
        raise ConfigError(key, value, "a folder that can be written",
                          f"{e.strerror or e}: {existing}; {hint}") from None


class RunDir(Callback):
    """Records which folders a single run is about to create, and refuses at once, in one
    line and exit code 2, a run whose folder cannot be written (a read-only working folder,
    which Hydra reported as an ``OSError`` traceback)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        global CREATED
        out = Path(str(config.hydra.run.dir)).expanduser().absolute()
        existing, created = out, None
        while not existing.exists() and existing.parent != existing:
            existing, created = existing.parent, existing
        CREATED = created
        try:
            check_writable("hydra.run.dir", str(config.hydra.run.dir), out,
                           "run vaesweep from a writable folder, or set hydra.run.dir=<a "
                           "writable folder>")
        except VaesweepError as e:
            CREATED = None
            print(f"vaesweep: error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None


def remove_refused() -> None:
    """Removes the folders the current single run created (:data:`CREATED`), when they hold
    nothing but Hydra's ``.hydra/`` and the job's ``*.log``: called when vaesweep refuses the
    run. A folder that was already there, or that holds anything else, is left as it is."""
    global CREATED
    top, CREATED = CREATED, None
    if top is None or not top.is_dir():
        return
    for f in top.rglob("*"):
        rel = f.relative_to(top).parts
        if f.is_dir() or ".hydra" in rel or f.suffix == ".log":
            continue
        return  # something of the run's own: keep it all
    root = logging.getLogger()
    for h in list(root.handlers):  # Hydra's file handler writes into the folder
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).is_relative_to(top):
            root.removeHandler(h)
            h.close()
    shutil.rmtree(top, ignore_errors=True)
