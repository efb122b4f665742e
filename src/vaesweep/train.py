"""One training job: validate the config, build data and model, train, test, evaluate, and
record everything in one MLflow run. Returns the metrics; the CLI returns the objectives."""
from __future__ import annotations

import errno
import inspect
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

import vaesweep.resolvers  # noqa: F401  (resolvers the configs use)
from vaesweep.errors import ConfigError, number
from vaesweep.kl.weighting import TAG_UNFINISHED
from vaesweep.likelihood.gaussian_optimal import fix_sigma_for_evaluation
from vaesweep.module import OPTIMIZERS, VAEModule
from vaesweep.names import METRIC_NAMES, TEST_METRICS, is_metric_name
from vaesweep.tracking import (TAG_COMMIT, TAG_DATA_SHAPE, TAG_PARENT, TAG_SWEEP, TAG_TRIAL,
                               TrackedRun, flatten, git_commit)
from vaesweep.tracking.run import check_store
from vaesweep.tracking.plots import kl_per_dim_figure, reconstructions_figure, traversals_figure

# Lightning 2.6's own call into torch's pytree (not ours, nothing to act on), printed by
# every trial of a sweep
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

log = logging.getLogger(__name__)


# -- config checks that belong to the job (the parts check their own keys) ------------------
def resolve(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as plain containers; a missing mandatory value is a ConfigError."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore
    except MissingMandatoryValue as e:
        raise ConfigError(str(e.full_key), "???", "a value (this key has no default)") from None
    except InterpolationResolutionError as e:
        raise ConfigError(str(getattr(e, "full_key", "?")), "interpolation", str(e)) from None


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///rel.db`` as an absolute URI: MLflow caches stores by URI, so a relative
    path would stay bound to the first working directory of the process."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        path, sep, query = uri[len(prefix):].partition("?")
        return prefix + str(Path(path).expanduser().resolve()) + sep + query
    return uri


def check_job(c: Mapping[str, Any]) -> None:
    number("seed", c.get("seed", 0), 0, 2**32 - 1, integer=True)
    objective = c.get("objective") or []
    if isinstance(objective, str):
        objective = [objective]
    for name in objective:
        if not is_metric_name(name):
            raise ConfigError("objective", name, "metric names of DESIGN §4: " + ", ".join(METRIC_NAMES))
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in c.get("trainer", {}):
        if key not in accepted and key not in FAST_PATH:
            raise ConfigError(f"trainer.{key}", c["trainer"][key], "a lightning.Trainer argument")
    check_fast_path(c.get("trainer", {}))
    check_trainer_numbers(c.get("trainer", {}))
    number("tracking.n_images", (c.get("tracking") or {}).get("n_images", 8), 1, integer=True)
    from vaesweep.sweep.progress import check_progress
    check_progress(c)
    optim = c.get("optim") or {}
    if optim.get("name") not in OPTIMIZERS:
        raise ConfigError("optim.name", optim.get("name"), sorted(OPTIMIZERS))
    number("optim.lr", optim.get("lr", 1e-3), 0.0, lo_open=True)
    number("data.batch_size", c["data"].get("batch_size", 64), 1, integer=True)
    uri = str(c["tracking"]["uri"])
    if "://" not in uri and not uri.startswith("databricks"):
        raise ConfigError("tracking.uri", uri, "an MLflow tracking URI such as sqlite:///mlflow.db, "
                          "postgresql://..., http://host:port")
    prune_on = (c.get("study") or {}).get("prune_on")
    if prune_on is not None and not (str(prune_on).startswith("val/") and is_metric_name(str(prune_on))):
        raise ConfigError("study.prune_on", prune_on, "null or a val/* metric name (reported at "
                          "each validation): " + ", ".join(VAL_NAMES) + ", val/kl_dim_<j>")
    from vaesweep.metrics.evaluate import resolve_settings
    resolve_settings(c.get("metrics"))  # checked now, not after training


#: the metrics a job reports at each validation (what a pruner can read)
VAL_NAMES = tuple(n for n in METRIC_NAMES if n.startswith("val/"))
#: test/* names computed by the evaluation, and the ``metrics.enabled`` entry that computes each
EVALUATED = {f"test/{m}": ("dci" if m.startswith("dci_") else m) for m in TEST_METRICS}


def check_objectives(c: Mapping[str, Any], imageset: Any, module: VAEModule) -> None:
    """Every objective (and ``study.prune_on``) names a metric this job will produce, given
    its data, model, validation and ``metrics.enabled``: a sweep whose objective is never
    logged would fail every trial with a NaN objective, or prune nothing."""
    from vaesweep.metrics.evaluate import FACTOR_METRICS, LABEL_METRICS, resolve_settings
    enabled = set(resolve_settings(c.get("metrics"))["enabled"])
    names = c.get("objective") or []
    names = [("objective", str(n)) for n in ([names] if isinstance(names, str) else names)]
    if (c.get("study") or {}).get("prune_on"):
        names.append(("study.prune_on", str(c["study"]["prune_on"])))
    data = (c.get("data") or {}).get("name")
    for key, name in names:
        need = ""
        if name in EVALUATED:
            source = EVALUATED[name]
            if source not in enabled:
                need = (f"metrics.enabled to include {source} (it is "
                        f"{sorted(enabled) if enabled else 'false'})")
            elif source in FACTOR_METRICS and getattr(imageset, "factors", None) is None:
                need = (f"data with ground-truth factors, such as data=dsprites (data {data!r} "
                        "has none)")
            elif source in LABEL_METRICS and getattr(imageset, "labels", None) is None:
                need = f"data with class labels (data {data!r} has none)"
        elif name.startswith("val/"):
            limit = (c.get("trainer") or {}).get("limit_val_batches")
            if limit is not None and float(limit) == 0:
                need = f"validation, which trainer.limit_val_batches={limit} turns off"
            elif name == "val/sigma" and module.head.sigma() is None:
                need = f"a likelihood head with a sigma (likelihood {c['likelihood'].get('name')!r} has none)"
            elif name == "val/implied_sigma" and module.head.implied_sigma(1.0) is None:
                need = (f"a likelihood head that implies a sigma (likelihood "
                        f"{c['likelihood'].get('name')!r} does not)")
            elif name.startswith("val/kl_dim_") and int(name.rsplit("_", 1)[1]) >= module.latent_dim:
                need = f"a latent index below model.latent_dim={module.latent_dim}"
        if need:
            raise ConfigError(key, name, "a metric this job produces", f"{name} needs {need}")


#: Trainer arguments that count (steps, epochs, batches), with their least value; Lightning
#: would take 6.5 steps, and ``int()`` here would make log_every_n_steps=2.5 into 2
TRAINER_COUNTS = {"max_steps": -1, "min_steps": 0, "max_epochs": -1, "min_epochs": 0,
                  "log_every_n_steps": 1, "check_val_every_n_epoch": 1,
                  "accumulate_grad_batches": 1, "num_sanity_val_steps": -1}
#: Trainer arguments that are a count of batches (int) or a fraction of an epoch (float)
TRAINER_FRACTIONS = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                     "limit_predict_batches", "val_check_interval")


def check_trainer_numbers(trainer: Mapping[str, Any]) -> None:
    """Counts are whole numbers; batch limits and ``val_check_interval`` are a whole number
    of batches or a fraction in [0, 1] (Lightning's meaning of a float), checked before the
    run starts rather than inside it."""
    for key, lo in TRAINER_COUNTS.items():
        if trainer.get(key) is not None:
            number(f"trainer.{key}", trainer[key], lo, integer=True)
    for key in TRAINER_FRACTIONS:
        value = trainer.get(key)
        if value is None or isinstance(value, (str, Mapping)):  # a time, for val_check_interval
            continue
        lo = 1 if key == "val_check_interval" else 0
        allowed = (f"a whole number of batches (>= {lo}) or a fraction of an epoch in "
                   f"{'(0' if lo else '[0'}, 1]")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"trainer.{key}", value, allowed)
        ok = (value >= lo) if isinstance(value, int) else (0 < value <= 1 if lo else 0 <= value <= 1)
        if not ok:
            raise ConfigError(f"trainer.{key}", value, allowed)


def objectives(c: Mapping[str, Any], metrics: Mapping[str, float]) -> float | list[float]:
    """The values named in ``objective`` (one float, or a list for several)."""
    names = c.get("objective") or []
    names = [names] if isinstance(names, str) else list(names)
    values = [float(metrics.get(n, float("nan"))) for n in names]
    return values[0] if len(values) == 1 else values


# -- callbacks ------------------------------------------------------------------------------
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
        import resource
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


# -- pictures -------------------------------------------------------------------------------
@torch.no_grad()
def log_pictures(run: TrackedRun, module: VAEModule, x: torch.Tensor,
                 kl_dim: np.ndarray) -> None:
    module.eval()
    x_hat = module.reconstruct(x)
    fig = reconstructions_figure(x.cpu().numpy(), x_hat.float().cpu().numpy())
    run.log_figure(fig, "reconstructions.png")
    mu = module.represent(x[:1])
    values = torch.linspace(-2.5, 2.5, 9, device=mu.device)
    z = mu.repeat(module.latent_dim * len(values), 1).view(module.latent_dim, len(values), -1)
    for j in range(module.latent_dim):
        z[j, :, j] = values
    imgs = module.head.mean(module.decode(z.flatten(0, 1))).float().cpu().numpy()
    rows = imgs.reshape(module.latent_dim, len(values), *imgs.shape[1:])
    run.log_figure(traversals_figure(rows, kl_dim), "traversals.png")
    run.log_figure(kl_per_dim_figure(kl_dim), "kl_per_dim.png")
    import matplotlib.pyplot as plt
    plt.close("all")


#: config keys that differ per job of a sweep: tags, not params
PER_JOB = ("study.trial", "study.parent_run_id")


def job_tags(study: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags linking a job to its sweep (DESIGN §4)."""
    from hydra.core.hydra_config import HydraConfig
    tags: dict[str, Any] = {}
    if study.get("name"):
        tags[TAG_SWEEP] = study["name"]
    if study.get("parent_run_id"):
        tags[TAG_PARENT] = study["parent_run_id"]
    trial = study.get("trial")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        tags["vaesweep.overrides"] = " ".join(hc.overrides.task)[:5000]
        if trial is None and hc.mode.name == "MULTIRUN":
            trial = hc.job.num
        if not study.get("name") and hc.runtime.choices.get("sweep"):
            tags[TAG_SWEEP] = hc.runtime.choices.get("sweep")
    if trial is not None:
        tags[TAG_TRIAL] = str(trial)
    return {k: str(v) for k, v in tags.items()}


def run_name(c: Mapping[str, Any], study: Mapping[str, Any]) -> str:
    """``tracking.run_name``, else ``<sweep>-<trial>`` in a sweep, else head-weighting-random.
    (MLflow's own random names would repeat: the job seeds Python's RNG before the run.)"""
    import secrets
    if c["tracking"].get("run_name"):
        return str(c["tracking"]["run_name"])
    tags = job_tags(study)
    if TAG_SWEEP in tags and TAG_TRIAL in tags:
        return f"{tags[TAG_SWEEP]}-{tags[TAG_TRIAL]}"
    return f"{c['likelihood']['name']}-{c['kl']['name']}-{secrets.token_hex(3)}"


def sweeper_setting(key: str) -> Any:
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    return OmegaConf.to_container(sweeper[key], resolve=True) if sweeper.get(key) else None


def cpu_threads(c: Mapping[str, Any]) -> int | None:
    """Torch CPU threads for this job: ``threads`` if set; under a parallel launcher, the
    cores shared out between its jobs (oversubscribed threads spin and run many times
    slower); otherwise torch's default."""
    if c.get("threads"):
        return int(number("threads", c["threads"], 1, integer=True))
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
        n_jobs = launcher.get("n_jobs") or 1
        if n_jobs and int(n_jobs) > 1:
            import os
            return max(1, (os.cpu_count() or 1) // int(n_jobs))
    return None


# -- speed (README "Performance", benchmarks/) ----------------------------------------------
#: keys of the ``trainer`` node that are not lightning.Trainer arguments: the job's fast path
#: (conf/trainer/gpu.yaml); the job takes them out before it builds the Trainer
FAST_PATH: dict[str, Any] = {"compile": False, "channels_last": False, "data_on_device": "auto"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_fast_path(trainer: Mapping[str, Any]) -> None:
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
    import os
    import platform
    if platform.system() != "Linux" or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return
    import ctypes
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
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        n_jobs = int(HydraConfig.get().launcher.get("n_jobs") or 1)
        if n_jobs > 1:
            return 1.0 / n_jobs
    return None


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
    from lightning.pytorch.callbacks import ProgressBar
    if not trainer_cfg.get("enable_progress_bar", True) or any(
            isinstance(cb, ProgressBar) for cb in callbacks):
        return []
    every = int(trainer_cfg.get("log_every_n_steps") or 50)
    try:
        import rich  # noqa: F401
    except ImportError:
        from lightning.pytorch.callbacks import TQDMProgressBar
        return [TQDMProgressBar(refresh_rate=every)]
    return [SparseProgressBar(every)]


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd() / "outputs" / time.strftime("%Y-%m-%d_%H-%M-%S")


#: faults of the machine, not of a job: the disk is full or read-only
MACHINE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def machine_fault(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it) is a fault of the machine that every next job would
    hit too; the sweeper stops rather than failing trial after trial."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
            return True
        if "database or disk is full" in str(e) or "readonly database" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


# -- resuming a killed run ------------------------------------------------------------------
#: written next to the checkpoints: a run resumed from them continues this MLflow run
RUN_ID_FILE = "mlflow_run_id"


def resolve_ckpt(value: Any, out: Path) -> Path | None:
    """``ckpt_path`` as an existing file: ``last`` is this run's ``checkpoints/last.ckpt``."""
    if value in (None, ""):
        return None
    if str(value) == "last":
        path = out / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError("ckpt_path", "last", f"a run whose folder holds {path}",
                              "`last` is looked up in this run's output folder: set "
                              "hydra.run.dir=<the killed run's folder>, or give the checkpoint's path")
        return path
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", str(value), "null, last, or the path of a checkpoint file",
                          f"{path} does not exist")
    return path


def check_checkpoint(path: Path, value: Any, module: VAEModule) -> None:
    """The checkpoint loads without unpickling code (``weights_only=True``) and fits the model."""
    import pickle
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [""]
        # torch explains at length; the line that names what the file wanted to load:
        why = next((l.split("error:", 1)[-1].strip() for l in lines
                    if "GLOBAL" in l or "Unpickler error:" in l), lines[0])
        raise ConfigError("ckpt_path", str(value), "a Lightning checkpoint that loads with "
                          "torch.load(weights_only=True)", f"{type(e).__name__}: {why[:300]}") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "optimizer_states" not in ckpt:
        raise ConfigError("ckpt_path", str(value), "a Lightning training checkpoint "
                          "(with state_dict and optimizer_states)")
    want = {k: tuple(v.shape) for k, v in module.state_dict().items() if hasattr(v, "shape")}
    have = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ConfigError("ckpt_path", str(value), "a checkpoint of this model (same model, "
                          "head and latent_dim)", f"differs in {diff}")


def checkpoint_run_id(path: Path) -> str | None:
    """The MLflow run that wrote the checkpoints in ``path``'s folder, if recorded."""
    f = path.parent / RUN_ID_FILE
    return f.read_text().strip() or None if f.is_file() else None


def _generator(loader: Any) -> torch.Generator | None:
    """The torch.Generator that orders a loader's batches (its sampler's, or its own for
    data.loaders.DeviceBatches), if it has one."""
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        return loader.generator
    for s in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for obj in (s, getattr(s, "sampler", None)):
            if isinstance(getattr(obj, "generator", None), torch.Generator):
                return obj.generator
    return None


class ResumableBatches:
    """The training loader, resumable in the middle of an epoch: Lightning keeps its
    ``state_dict`` (the sampler's generator at the start of the epoch and the batches trained
    since) in every checkpoint, and a resumed run skips to the same batch of the same order."""

    def __init__(self, loader: Any, trained_in_epoch: Any) -> None:
        self.loader, self.trained_in_epoch = loader, trained_in_epoch
        self.generator = _generator(loader)
        self._epoch_start: torch.Tensor | None = None
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        skip = 0
        if self._resume is not None and self.generator is not None:
            self.generator.set_state(self._resume["generator"])
            skip = int(self._resume["batches"])
        self._resume = None
        self._epoch_start = None if self.generator is None else self.generator.get_state()
        it = iter(self.loader)
        for _ in range(min(skip, len(self.loader))):
            next(it)
        return it

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._epoch_start, "batches": int(self.trained_in_epoch())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._resume = state


def resumable(dm: Any) -> Any:
    """``dm`` with a training loader that resumes mid-epoch (see :class:`ResumableBatches`)."""
    make = dm.train_dataloader

    def train_dataloader() -> ResumableBatches:
        return ResumableBatches(
            make(), lambda: dm.trainer.fit_loop.epoch_loop.batch_progress.current.completed)
    dm.train_dataloader = train_dataloader
    return dm


class RandomState(Callback):
    """Keeps the random generators (torch, numpy, random) in checkpoints and restores them when
    training resumes, so the reparameterisation noise continues as if never stopped."""

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        import random
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "random": random.getstate(),
                 "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restore = state

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if self._restore is None:
            return
        import random
        s, self._restore = self._restore, None
        torch.set_rng_state(s["torch"])
        random.setstate(s["random"])
        kind, keys, pos, has_gauss, gauss = s["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


class RunIdFile(Callback):
    """Writes the MLflow run id beside the checkpoints when training starts (after Lightning
    has looked whether the checkpoint folder is empty), so a resumed run continues that run."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.run_id)


def prepare(cfg: DictConfig | Mapping[str, Any], out: Path | None, sweep: bool = False
            ) -> tuple[dict[str, Any], Any, VAEModule, Path | None]:
    """Everything a job checks before it trains: the config, the data, the model, the
    checkpoint to resume from (``out``: the run's folder, None when unknown), the tracking
    store, and the objectives of an Optuna trial (``sweep``, or ``study.trial`` set). Raises a VaesweepError naming the key at the first bad value."""
    from vaesweep.data import VAEDataModule
    c = resolve(cfg)
    check_job(c)
    c["tracking"]["uri"] = absolute_sqlite(str(c["tracking"]["uri"]))
    dm = VAEDataModule(c["data"])
    module = VAEModule(c, dm.imageset.shape)
    ckpt = None
    if out is not None or str(c.get("ckpt_path")) != "last":
        ckpt = resolve_ckpt(c.get("ckpt_path"), out or Path.cwd())
        if ckpt is not None:
            check_checkpoint(ckpt, c.get("ckpt_path"), module)
    if (c.get("study") or {}).get("trial") is not None or sweep:  # an Optuna trial: objectives
        check_objectives(c, dm.imageset, module)
    check_store(str(c["tracking"]["uri"]))  # last: it may create the store's tables
    return c, dm, module, ckpt


def validate_job(cfg: DictConfig | Mapping[str, Any], objectives: bool = False) -> None:
    """Checks a job's config as :func:`run_job` would, without training or tracking (the
    sweepers check their first job before they touch a study; ``ckpt_path=last`` is in each
    job's own folder, checked by the job). ``objectives``: also that the job produces the
    metrics named by ``objective`` and ``study.prune_on`` (an Optuna study reads them)."""
    prepare(cfg, None, sweep=objectives)


# -- the job --------------------------------------------------------------------------------
def run_job(cfg: DictConfig | Mapping[str, Any], tags: Mapping[str, str] | None = None,
            run_id: str | None = None, extra_callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train, test and evaluate one VAE; returns every final metric by its DESIGN §4 name."""
    c = resolve(cfg)
    check_job(c)
    threads = cpu_threads(c)
    if threads:
        torch.set_num_threads(threads)
    tune_allocator()
    share = gpu_memory_share(c)
    if share:
        torch.cuda.set_per_process_memory_fraction(share)
    L.seed_everything(int(c.get("seed", 0)), workers=True, verbose=False)
    out = output_dir()
    c, dm, module, ckpt_path = prepare(c, out)
    resumable(dm)
    trainer_cfg = dict(c["trainer"])
    fast = fast_path(trainer_cfg)
    dm.data_on_device = fast["data_on_device"]
    module.use_fast_path(compile=fast["compile"], channels_last=fast["channels_last"])
    if ckpt_path is not None:
        run_id = run_id or _continued_run(c["tracking"]["uri"], ckpt_path)

    study = dict(c.get("study") or {})
    tags = {TAG_COMMIT: git_commit(), TAG_DATA_SHAPE: ",".join(map(str, dm.imageset.shape)),
            **job_tags(study), **(tags or {})}
    callbacks: list[Callback] = list(extra_callbacks)
    trial = None
    if study.get("trial") is not None:
        from vaesweep.sweep.trial import OptunaPruning, open_trial
        trial = open_trial(study, sweeper_setting("pruner"))
        monitor = study.get("prune_on") or next(
            (o for o in c.get("objective") or [] if str(o).startswith("val/")), "val/loss")
        if sweeper_setting("pruner"):
            callbacks.append(OptunaPruning(trial, monitor))
    with TrackedRun(c["tracking"]["uri"], c["tracking"]["experiment"], run_name(c, study),
                    tags=tags, run_id=run_id) as run:
        log.info("MLflow run %s (%s)%s", run.run_id, c["tracking"]["uri"],
                 f", resumed from {ckpt_path}" if ckpt_path else "")
        if trial is not None:
            trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({k: v for k, v in flatten(c).items() if k not in PER_JOB})
        run.log_text(OmegaConf.to_yaml(OmegaConf.create(c)), "config.yaml")
        from lightning.pytorch.loggers import MLFlowLogger
        logger = MLFlowLogger(tracking_uri=c["tracking"]["uri"], run_id=run.run_id,
                              experiment_name=c["tracking"]["experiment"])
        speed = Throughput()
        # checkpoints/last.ckpt after every validation, written atomically (ckpt_path=last);
        # Lightning writes save_last only along with a top-k checkpoint, so this *is* the top 1
        ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1,
                               enable_version_counter=False)
        callbacks += [speed, ckpt, BetaTrace(run, trainer_cfg.get("log_every_n_steps", 50)),
                      RandomState(), RunIdFile(out / "checkpoints" / RUN_ID_FILE, run.run_id)]
        from vaesweep.sweep.progress import job_callbacks
        callbacks += job_callbacks(trainer_cfg)  # a sweep's display: Lightning's bar off
        callbacks += progress_bar(trainer_cfg, callbacks)
        trainer = L.Trainer(**trainer_cfg, logger=logger, callbacks=callbacks,
                            default_root_dir=str(out))
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        unfinished = module.kl.unfinished(trainer.global_step)
        if unfinished:  # it never trained at its target weight: say so where results are read
            log.warning("%s", unfinished)
            run.client.set_tag(run.run_id, TAG_UNFINISHED, unfinished[:5000])
        # σ-VAE: one σ, from the training images, for every evaluated batch (test and metrics)
        fix_sigma_for_evaluation(module, dm.imageset, dm.train_idx, seed=int(c.get("seed", 0)))
        test = trainer.test(module, datamodule=dm, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
        if c.get("metrics", {}).get("enabled", True):
            from vaesweep.metrics.evaluate import evaluate_model
            evaluated = evaluate_model(module, dm.imageset, dm.test_idx, c.get("metrics", {}),
                                       int(c.get("seed", 0)), train_idx=dm.train_idx)
            metrics.update(evaluated)
        metrics["system/images_per_second"] = speed.images_per_second
        if speed.steps:
            metrics["system/page_faults_per_step"] = speed.faults / speed.steps
            metrics["system/sys_seconds_per_step"] = speed.sys_seconds / speed.steps
        run.log_metrics({k: v for k, v in metrics.items()
                         if k.startswith(("test/", "system/")) and math.isfinite(v)},
                        step=trainer.global_step)
        x = dm.imageset.batch(dm.test_idx[: c["tracking"].get("n_images", 8)]).to(module.device)
        kl_dim = np.array([metrics.get(f"val/kl_dim_{j}", 0.0) for j in range(module.latent_dim)])
        log_pictures(run, module, x, kl_dim)
        final = out / "checkpoints" / "final.ckpt"
        trainer.save_checkpoint(final, weights_only=False)  # full state, so it can resume
        if c["tracking"].get("log_checkpoint", True):
            run.log_artifact(final, "checkpoints")
        metrics["_run_id"] = run.run_id  # type: ignore[assignment]
    return metrics


def _continued_run(uri: str, ckpt: Path) -> str | None:
    """The MLflow run to continue when resuming from ``ckpt``: the one that wrote it, if this
    tracking store has it."""
    run_id = checkpoint_run_id(ckpt)
    if run_id is None:
        return None
    from mlflow.tracking import MlflowClient
    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:
        log.warning("The checkpoint's MLflow run %s is not in %s: logging to a new run", run_id, uri)
        return None
    return run_id
