"""Hardware tuning for one job (docs/pages/performance.md, benchmarks/): torch CPU threads and the
GPU memory share under a parallel launcher, glibc's allocator, and the opt-in fast path
(``trainer.compile``, ``channels_last``, ``data_on_device``)."""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Any, Mapping

import torch
from hydra.core.hydra_config import HydraConfig

from vaesweep.errors import ConfigError, number


def cpu_threads(c: Mapping[str, Any]) -> int | None:
    """Torch CPU threads for this job: ``threads`` if set; under a parallel launcher, the
    cores shared out between its jobs (oversubscribed threads spin and run many times
    slower); otherwise torch's default."""
    if c.get("threads"):
        return int(number("threads", c["threads"], 1, integer=True))
    n_jobs = launcher_jobs()
    if n_jobs > 1:
        return max(1, (os.cpu_count() or 1) // n_jobs)
    return None


def launcher_jobs() -> int:
    """How many jobs the Hydra launcher runs at once: its ``n_jobs`` as joblib counts it (-1:
    every core, -2: all but one; joblib's own default is -1), 1 outside Hydra or for a
    launcher without ``n_jobs``. (Read as a plain ``int(n_jobs) > 1``, joblib's default -1
    gave no share: every worker took every core.)"""
    if not HydraConfig.initialized():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0:
        return 1
    if n_jobs < 0:
        from joblib import effective_n_jobs  # only under a launcher that counts like joblib
        return int(effective_n_jobs(n_jobs))
    return n_jobs


#: keys of the ``trainer`` node that are not lightning.Trainer arguments: the job's fast path
#: (conf/trainer/gpu.yaml); the job takes them out before it builds the Trainer
FAST_PATH: dict[str, Any] = {"compile": False, "channels_last": False, "data_on_device": "auto"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_fast_path(trainer: Mapping[str, Any]) -> None:
    """``trainer.compile`` (bool or a torch.compile mode), ``trainer.channels_last`` (bool) and
    ``trainer.data_on_device`` (auto, true, false); raises ConfigError otherwise."""
    value = trainer.get("compile", False)
    if not isinstance(value, bool) and value not in COMPILE_MODES:
        raise ConfigError("trainer.compile", value, ["false", "true", *COMPILE_MODES])
    value = trainer.get("channels_last", False)
    if not isinstance(value, bool):
        raise ConfigError("trainer.channels_last", value, "true or false")
    value = trainer.get("data_on_device", "auto")
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError("trainer.data_on_device", value, "auto, true or false")


def fast_path(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """Takes the :data:`FAST_PATH` keys out of ``trainer_cfg``, with their defaults."""
    return {k: trainer_cfg.pop(k, default) for k, default in FAST_PATH.items()}


def tune_allocator() -> None:
    """Keeps memory freed by one training step for the next instead of handing it back to the
    kernel. With glibc's defaults, blocks above a sliding mmap threshold are unmapped when
    freed and the heap top is trimmed, so every step faults its activations in again: conv64
    at batch 64 took about 13,000 minor page faults per step and a third more CPU time than
    with this setting (benchmarks/RESULTS.md). Blocks up to 32 MiB (glibc's maximum) then come
    from the heap, and up to 1 GiB of free heap is kept. Process-wide and idempotent; does
    nothing off glibc, or when ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
    ``GLIBC_TUNABLES`` choose for themselves."""
    if platform.system() != "Linux" or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)


def gpu_memory_share(c: Mapping[str, Any]) -> float | None:
    """Under a parallel launcher on a GPU machine, each job's share of the device memory
    (1 / n_jobs), so several small trials share one GPU without one taking it all."""
    if str(c.get("trainer", {}).get("accelerator", "cpu")) == "cpu" or not torch.cuda.is_available():
        return None
    n_jobs = launcher_jobs()
    return 1.0 / n_jobs if n_jobs > 1 else None
