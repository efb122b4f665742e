"""The job's own Lightning callbacks: the beta_eff trace, the throughput count and a
progress bar that redraws sparingly. (The callbacks that keep a run resumable are in
:mod:`vaesweep.job.resume`; a sweep's display in :mod:`vaesweep.sweep.progress`.)"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar

from vaesweep.job.faults import MACHINE_ERRNOS
from vaesweep.module import VAEModule
from vaesweep.tracking import TrackedRun


class BetaTrace(Callback):
    """Logs ``train/beta_eff`` at every optimiser step, written to MLflow in batches."""

    def __init__(self, run: TrackedRun, every: int) -> None:
        self.run, self.every = run, max(1, every)

    def flush(self, module: VAEModule) -> None:
        trace = module.pop_beta_trace()
        if trace:
            self.run.log_metric_series([("train/beta_eff", b, s) for s, b in trace])

    def on_train_batch_end(self, trainer, module, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self.flush(module)

    def on_train_end(self, trainer, module) -> None:
        self.flush(module)


class TruncatedCheckpoint(Callback):
    """A checkpoint that the disk could not hold (ENOSPC, EDQUOT) is removed when training
    stops on it: Lightning's "atomic" save writes to a temporary folder, then copies the file
    over the old one when that folder is on another file system, so the failed copy leaves a
    truncated checkpoint under ``folder``, which cannot be resumed from and keeps the disk full
    (the job's MLflow run and Optuna trial then could not be ended either). Runs before
    Lightning's logger is finalised."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        e: BaseException | None = exception
        while e is not None:
            if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
                for name in (e.filename2, e.filename):
                    path = Path(name).resolve() if isinstance(name, str) else None
                    if path is not None and path.suffix == ".ckpt" and self.folder in path.parents:
                        path.unlink(missing_ok=True)
            e = e.__cause__ or e.__context__


class Throughput(Callback):
    """Training images per second: wall time between consecutive optimiser-step ends, so
    data loading and the loop's own overhead count, validation does not; the first step is
    warm-up. Also counts minor page faults and system CPU time per step (resource usage of
    this process over the same steps)."""

    def __init__(self) -> None:
        self.images, self.steps, self.seconds = 0, 0, 0.0
        self.faults, self.sys_seconds = 0, 0.0
        self._last: float | None = None
        self._ru: Any = None
        self._paused = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now, ru = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        if self._last is not None:
            self.seconds += now - self._last - self._paused
            self.images += batch.shape[0]
            self.steps += 1
            self.faults += ru.ru_minflt - self._ru.ru_minflt
            self.sys_seconds += ru.ru_stime - self._ru.ru_stime
        self._last, self._ru, self._paused = now, ru, 0.0

    def on_validation_start(self, trainer, module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        self._paused += time.perf_counter() - self._v0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")



try:
    from lightning.pytorch.callbacks import RichProgressBar as _RichBar
except ImportError:  # pragma: no cover
    _RichBar = Callback  # type: ignore[misc,assignment]


class SparseProgressBar(_RichBar):  # type: ignore[misc,valid-type]
    """Lightning's rich progress bar, updated every ``every`` training batches and redrawn
    at most twice a second. Lightning's default redraws up to 100 times a second from a
    thread and reads the logged values (a device sync on GPU) at every batch: about 10 ms a
    step on a small CPU model (benchmarks/RESULTS.md)."""

    def __init__(self, every: int) -> None:
        super().__init__(refresh_rate=2)
        self.every = max(1, int(every))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if (batch_idx + 1) % self.every == 0 or last:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(trainer_cfg: Mapping[str, Any], callbacks: Sequence[Callback] = ()) -> list[Callback]:
    """The progress bar callback when the Trainer shows one and ``callbacks`` bring none
    (see :class:`SparseProgressBar`)."""
    if not trainer_cfg.get("enable_progress_bar", True) or any(
            isinstance(cb, ProgressBar) for cb in callbacks):
        return []
    every = int(trainer_cfg.get("log_every_n_steps") or 50)
    try:
        import rich  # noqa: F401
    except ImportError:
        return [TQDMProgressBar(refresh_rate=every)]
    return [SparseProgressBar(every)]
