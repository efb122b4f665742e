"""One progress display for a sweep: trials done out of n, the running trial's step out of
``max_steps``, elapsed time and an estimate of the time left.

In a terminal it is a live rich display below the log (Lightning's per-trial bar is turned
off while it runs); when the output is not a terminal (CI, a log file) it is a plain log line
every ``progress.every_s`` seconds and one when a trial starts. Configured by ``progress.*``
(conf/config.yaml). The sweepers open it around their launches (:func:`sweep_progress`); the
launcher wrapper reports trials started and finished, and a job that runs in the sweep's own
process reports its steps through :class:`StepProgress`. Jobs in other processes (joblib,
Ray, SLURM) count when they finish.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from lightning.pytorch.callbacks import Callback

from vaesweep.errors import ConfigError, number

log = logging.getLogger("vaesweep.sweep")

DISPLAYS = ("auto", "live", "lines", "off")
_current: "SweepProgress | None" = None


def current() -> "SweepProgress | None":
    """The display of the sweep running in this process, if any."""
    return _current


def check_progress(c: Mapping[str, Any]) -> None:
    """``progress.display`` and ``progress.every_s`` (checked with the job's config, so a bad
    value stops a sweep before its first trial)."""
    p = c.get("progress") or {}
    if p.get("display", "auto") not in DISPLAYS:
        raise ConfigError("progress.display", p.get("display"), list(DISPLAYS))
    number("progress.every_s", p.get("every_s", 30), 0.0, lo_open=True)


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class SweepProgress:
    """The state of a sweep's progress, and its display (``live``, ``lines`` or ``off``).

    ``done``: trials finished so far, or a function that counts them (an Optuna sweeper
    counts COMPLETE and PRUNED trials in its study, so failed ones are not counted)."""

    def __init__(self, name: str, total: int, done: int | Callable[[], int] = 0,
                 display: str = "auto", every_s: float = 30.0, stream: Any = None) -> None:
        self.name, self.total, self.every_s = name, int(total), float(every_s)
        self._count = done if callable(done) else None
        self.done = int(done() if callable(done) else done)
        self.stream = stream if stream is not None else sys.stdout
        if display == "auto":
            display = "live" if _is_terminal(self.stream) else "lines"
        self.display = display
        self.t0 = time.monotonic()
        self.running: list[str] = []
        self.batch_t0: float | None = None
        self.durations: list[float] = []
        self.step = self.max_steps = 0
        self.phase = ""
        self._train_t0: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    # -- what the sweep reports ------------------------------------------------------------
    def started(self, labels: Sequence[str]) -> None:
        """A batch of trials (``labels``: their names, e.g. ``trial 3``) is launched."""
        self._recount()
        self.running, self.batch_t0 = list(labels), time.monotonic()
        self.step = self.max_steps = 0
        self.phase = "starting"
        if self.display == "lines":
            log.info("[%s] %s started | %s", self.name, ", ".join(self.running), self.summary())
        self._refresh()

    def finished(self, n: int) -> None:
        """The launched batch returned ``n`` jobs."""
        if self.batch_t0 is not None:
            self.durations += [time.monotonic() - self.batch_t0] * max(1, n)
        # the sweeper records the trials after this; counted again at the next start and end
        self.done = min(self.total, self.done + n)
        self.running, self.batch_t0, self.phase = [], None, ""
        self._refresh()

    def _recount(self) -> None:
        if self._count is not None:
            self.done = int(self._count())

    def training(self, max_steps: int) -> None:
        self.max_steps, self.step, self.phase = int(max_steps), 0, "training"
        self._train_t0 = time.monotonic()
        self._refresh()

    def stepped(self, step: int) -> None:
        self.step = int(step)
        self._refresh()

    def phase_is(self, phase: str) -> None:
        self.phase = phase
        self._refresh()

    # -- numbers ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self) -> float | None:
        """Seconds left: the mean duration of this sweep's finished trials (before the first
        one, the running trial's pace over its steps so far) times what is left to run."""
        now = time.monotonic()
        per_trial = sum(self.durations) / len(self.durations) if self.durations else None
        if per_trial is None and self.step > 0 and self.max_steps and self._train_t0:
            per_trial = (now - self._train_t0) / self.step * self.max_steps
        if per_trial is None:
            return None
        batch = max(1, len(self.running))
        waiting = max(0, self.total - self.done - len(self.running))
        left_now = max(0.0, per_trial - (now - self.batch_t0)) if self.batch_t0 else 0.0
        return left_now + math.ceil(waiting / batch) * per_trial

    def summary(self) -> str:
        return (f"{self.done} of {self.total} trials done | elapsed {duration(self.elapsed())}"
                f" | ETA {duration(self.eta())}")

    def line(self) -> str:
        """The status as one line (the ``lines`` display)."""
        now = ", ".join(self.running) or "no trial"
        if self.max_steps:
            now += f": step {self.step}/{self.max_steps}"
        if self.phase and self.phase != "training":
            now += f" ({self.phase})"
        return f"[{self.name}] {self.done} of {self.total} trials done | {now} | " \
               f"elapsed {duration(self.elapsed())} | ETA {duration(self.eta())}"

    # -- display ---------------------------------------------------------------------------
    def __enter__(self) -> "SweepProgress":
        global _current
        _current = self
        if self.display == "live":
            self._start_live()
        elif self.display == "lines":
            self._thread = threading.Thread(target=self._lines, name="vaesweep-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        global _current
        _current = None
        self._stop.set()
        try:
            self._recount()
        except Exception:  # the storage failed: the sweep's own error is what matters
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live is not None:
            self._stop_live()

    def _lines(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.running:
                log.info("%s", self.line())

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                   TextColumn)
        from rich.text import Text

        sweep = self

        class Status(ProgressColumn):
            """Elapsed and ETA on the trials row, computed at each redraw (they move while a
            trial evaluates and nothing else reports); the phase on the steps row."""

            def render(self, task: Any) -> Text:
                if task.id == sweep._trials:
                    return Text(f"elapsed {duration(sweep.elapsed())} • "
                                f"ETA {duration(sweep.eta())}")
                return Text(str(task.fields.get("info", "")))

        console = Console(file=self.stream)
        self._live = Progress(TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), Status(),
                              console=console, refresh_per_second=2, transient=False)
        self._trials = self._live.add_task(f"{self.name} trials", total=self.total,
                                           completed=self.done, info="")
        self._steps = self._live.add_task("", total=None, info="", visible=False)
        self._live.start()
        # logging's console handlers hold the real stream; point them at rich's proxy (now
        # sys.stdout / sys.stderr) so log lines print above the display, not through it
        self._handlers = _repoint_handlers({id(sys.__stdout__): sys.stdout,
                                            id(sys.__stderr__): sys.stderr})
        self._refresh()

    def _stop_live(self) -> None:
        self._refresh()
        proxies = {id(sys.stdout): sys.__stdout__, id(sys.stderr): sys.__stderr__}
        self._live.stop()
        _repoint_handlers(proxies)  # also the handlers Hydra made for its jobs meanwhile
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._live = None

    def _refresh(self) -> None:
        if self._live is None:
            return
        self._live.update(self._trials, completed=self.done)
        label = ", ".join(self.running)
        phase = "" if self.phase == "training" else self.phase
        self._live.update(self._steps, description=f"{label} steps" if label else "",
                          total=self.max_steps or None, completed=self.step, info=phase,
                          visible=bool(label))


def _is_terminal(stream: Any) -> bool:
    try:
        from rich.console import Console
        return Console(file=stream).is_terminal and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _repoint_handlers(streams: Mapping[int, Any]) -> list[tuple[logging.StreamHandler, Any]]:
    """Every logging StreamHandler whose stream is a key of ``streams`` (by id) is given the
    value instead; returns (handler, old stream) pairs."""
    changed = []
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and id(h.stream) in streams \
                    and not isinstance(h, logging.FileHandler):
                changed.append((h, h.setStream(streams[id(h.stream)])))
    return changed


@contextlib.contextmanager
def sweep_progress(config: Any, name: str, total: int,
                   done: int | Callable[[], int] = 0) -> Iterator[SweepProgress]:
    """The display for a sweep of ``total`` trials, as ``progress.*`` of ``config`` says."""
    p = config.get("progress") or {}
    with SweepProgress(name, total, done, display=str(p.get("display", "auto")),
                       every_s=float(p.get("every_s", 30))) as progress:
        yield progress


class StepProgress(Callback):
    """Reports a job's training steps and phases to the sweep's display (same process)."""

    def __init__(self, progress: SweepProgress) -> None:
        self.progress = progress

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.progress.training(trainer.max_steps if trainer.max_steps > 0 else 0)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.progress.stepped(trainer.global_step)

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        if not trainer.sanity_checking:
            self.progress.phase_is("validating")

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if not trainer.sanity_checking:
            self.progress.phase_is("training")

    def on_test_start(self, trainer: Any, module: Any) -> None:
        self.progress.phase_is("testing")

    def on_test_end(self, trainer: Any, module: Any) -> None:
        self.progress.phase_is("evaluating")


def job_callbacks(trainer_cfg: dict[str, Any]) -> list[Callback]:
    """In a sweep with a display in this process: the callback that feeds it, and Lightning's
    own bar turned off in ``trainer_cfg`` (one display for the sweep)."""
    progress = current()
    if progress is None or progress.display == "off":
        return []
    trainer_cfg["enable_progress_bar"] = False
    return [StepProgress(progress)]
