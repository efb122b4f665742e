"""One training job: validate the config, build data and model, train, test, evaluate, and
record everything in one MLflow run. Returns the metrics; the CLI returns the objectives."""
from __future__ import annotations

import inspect
import logging
import math
import time
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
from vaesweep.module import OPTIMIZERS, VAEModule
from vaesweep.names import METRIC_NAMES, is_metric_name
from vaesweep.tracking import (TAG_COMMIT, TAG_PARENT, TAG_SWEEP, TAG_TRIAL, TrackedRun,
                               flatten, git_commit)
from vaesweep.tracking.plots import kl_per_dim_figure, reconstructions_figure, traversals_figure

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
        if key not in accepted:
            raise ConfigError(f"trainer.{key}", c["trainer"][key], "a lightning.Trainer argument")
    optim = c.get("optim") or {}
    if optim.get("name") not in OPTIMIZERS:
        raise ConfigError("optim.name", optim.get("name"), sorted(OPTIMIZERS))
    number("optim.lr", optim.get("lr", 1e-3), 0.0, lo_open=True)
    number("data.batch_size", c["data"].get("batch_size", 64), 1, integer=True)
    uri = str(c["tracking"]["uri"])
    if "://" not in uri and not uri.startswith("databricks"):
        raise ConfigError("tracking.uri", uri, "an MLflow tracking URI such as sqlite:///mlflow.db, "
                          "postgresql://..., http://host:port")


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


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd() / "outputs" / time.strftime("%Y-%m-%d_%H-%M-%S")


# -- the job --------------------------------------------------------------------------------
def run_job(cfg: DictConfig | Mapping[str, Any], tags: Mapping[str, str] | None = None,
            run_id: str | None = None, extra_callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train, test and evaluate one VAE; returns every final metric by its DESIGN §4 name."""
    from vaesweep.data import VAEDataModule

    c = resolve(cfg)
    check_job(c)
    threads = cpu_threads(c)
    if threads:
        torch.set_num_threads(threads)
    L.seed_everything(int(c.get("seed", 0)), workers=True, verbose=False)
    dm = VAEDataModule(c["data"])
    module = VAEModule(c, dm.imageset.shape)
    out = output_dir()
    trainer_cfg = dict(c["trainer"])
    ckpt_path = c.get("ckpt_path")

    study = dict(c.get("study") or {})
    tags = {TAG_COMMIT: git_commit(), **job_tags(study), **(tags or {})}
    callbacks: list[Callback] = list(extra_callbacks)
    trial = None
    if study.get("trial") is not None:
        from vaesweep.sweep.trial import OptunaPruning, open_trial
        trial = open_trial(study, sweeper_setting("pruner"))
        monitor = study.get("prune_on") or next(
            (o for o in c.get("objective") or [] if str(o).startswith("val/")), "val/loss")
        if sweeper_setting("pruner"):
            callbacks.append(OptunaPruning(trial, monitor))
    with TrackedRun(c["tracking"]["uri"], c["tracking"]["experiment"],
                    c["tracking"].get("run_name"), tags=tags, run_id=run_id) as run:
        log.info("MLflow run %s (%s)", run.run_id, c["tracking"]["uri"])
        if trial is not None:
            trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({k: v for k, v in flatten(c).items() if k not in PER_JOB})
        run.log_text(OmegaConf.to_yaml(OmegaConf.create(c)), "config.yaml")
        from lightning.pytorch.loggers import MLFlowLogger
        logger = MLFlowLogger(tracking_uri=c["tracking"]["uri"], run_id=run.run_id,
                              experiment_name=c["tracking"]["experiment"])
        speed = Throughput()
        ckpt = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0)
        callbacks += [speed, ckpt, BetaTrace(run, trainer_cfg.get("log_every_n_steps", 50))]
        trainer = L.Trainer(**trainer_cfg, logger=logger, callbacks=callbacks,
                            default_root_dir=str(out))
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        test = trainer.test(module, datamodule=dm, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
        if c.get("metrics", {}).get("enabled", True):
            from vaesweep.metrics.evaluate import evaluate_model
            evaluated = evaluate_model(module, dm.imageset, dm.test_idx, c.get("metrics", {}),
                                       int(c.get("seed", 0)))
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
