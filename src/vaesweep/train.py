"""One training job, read top to bottom as steps: check the config, tune the hardware, build data
and model, open the MLflow run, assemble the callbacks and the Trainer, fit, test, evaluate,
and record the metrics, pictures and final checkpoint. Returns the metrics; the CLI returns the
objectives.

The steps' helpers live beside it in :mod:`vaesweep.job`: ``checks`` (the job's config checks
and :func:`~vaesweep.job.checks.prepare`), ``hardware`` (threads, GPU share, allocator, fast
path), ``resume`` (checkpoints, mid-epoch resume, random state), ``callbacks``, ``context``
(what the job reads from Hydra), ``faults`` and ``pictures``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from vaesweep.contract import ATTR_RUN_ID, TAG_COMMIT, TAG_DATA_SHAPE, TAG_SCHEDULE_UNFINISHED
from vaesweep.job import convergence
from vaesweep.job.callbacks import BetaTrace, Throughput, TruncatedCheckpoint, progress_bar
from vaesweep.job.checks import check_job, objectives, prepare, resolve, validate_job
from vaesweep.job.context import PER_JOB, job_tags, output_dir, run_name, sweeper_setting
from vaesweep.job.faults import machine_fault
from vaesweep.job.hardware import cpu_threads, fast_path, gpu_memory_share, tune_allocator
from vaesweep.job.pictures import log_pictures, picture_indices
from vaesweep.job.resume import RUN_ID_FILE, RandomState, RunIdFile, continued_run, resumable
from vaesweep.likelihood.gaussian_optimal import fix_sigma_for_evaluation
from vaesweep.metrics.evaluate import evaluate_model
from vaesweep.sweep.progress import job_callbacks
from vaesweep.sweep.trial import OptunaPruning, open_trial
from vaesweep.tracking import TrackedRun, flatten, git_commit, process_tracking_uri_kept
from vaesweep.tracking.tags import set_tags

__all__ = ["run_job", "validate_job", "objectives", "machine_fault"]

# Lightning 2.6's own call into torch's pytree (not ours, nothing to act on), printed by
# every trial of a sweep
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig | Mapping[str, Any], tags: Mapping[str, str] | None = None,
            run_id: str | None = None, extra_callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train, test and evaluate one VAE on the Hydra config ``cfg`` (DictConfig or mapping),
    recorded in one MLflow run (``run_id``: continue that run; ``tags``: added to the job's own).

    Returns every final metric by its name (docs/pages/metrics.md) (floats, D and R in nats per example),
    plus ``_run_id``, the MLflow run's id. Raises :class:`~vaesweep.errors.ConfigError`
    (before anything is written) for a bad config, checkpoint or store; a failure while
    training marks the run FAILED and propagates.

    The process-wide settings it makes for the job, torch's CPU threads and MLflow's tracking
    URI (with ``$MLFLOW_TRACKING_URI``), are put back when it returns or raises, so a later
    job in the same process starts from the same state (a notebook, a script, Hydra's basic
    launcher)."""
    # 1. config checks, then the job's process settings (threads, tracking URI; put back after)
    c = resolve(cfg)
    check_job(c)
    with _process_settings(c):
        return _job(c, tags, run_id, extra_callbacks)


def _job(c: dict[str, Any], tags: Mapping[str, str] | None, run_id: str | None,
         extra_callbacks: Sequence[Callback]) -> dict[str, float]:
    """:func:`run_job`'s steps after the checks, within the job's process settings."""
    # seed (before anything is built)
    L.seed_everything(int(c.get("seed", 0)), workers=True, verbose=False)

    # 2. data, model and the checkpoint to resume from (checked before the run opens)
    out = output_dir()
    c, dm, module, ckpt_path = prepare(c, out)
    resumable(dm)
    trainer_cfg = dict(c["trainer"])
    fast = fast_path(trainer_cfg)
    dm.data_on_device = fast["data_on_device"]
    module.use_fast_path(compile=fast["compile"], channels_last=fast["channels_last"])
    if ckpt_path is not None:
        run_id = run_id or continued_run(c["tracking"]["uri"], ckpt_path, c.get("ckpt_path"))

    # 3. the Optuna trial this job is, if any
    study = dict(c.get("study") or {})
    callbacks: list[Callback] = list(extra_callbacks)
    trial = _open_trial(c, study, callbacks)

    # 4. tracking: one MLflow run, its params and config
    tags = {TAG_COMMIT: git_commit(), TAG_DATA_SHAPE: ",".join(map(str, dm.imageset.shape)),
            **job_tags(study), **(tags or {})}
    with TrackedRun(c["tracking"]["uri"], c["tracking"]["experiment"], run_name(c, study),
                    tags=tags, run_id=run_id) as run:
        log.info("MLflow run %s (%s)%s", run.run_id, c["tracking"]["uri"],
                 f", resumed from {ckpt_path}" if ckpt_path else "")
        if trial is not None:
            trial.set_user_attr(ATTR_RUN_ID, run.run_id)
        run.log_params({k: v for k, v in flatten(c).items() if k not in PER_JOB})
        run.log_text(OmegaConf.to_yaml(OmegaConf.create(c)), "config.yaml")
        logger = MLFlowLogger(tracking_uri=c["tracking"]["uri"], run_id=run.run_id,
                              experiment_name=c["tracking"]["experiment"])

        # 5. callbacks and trainer
        speed = Throughput()
        callbacks = _job_callbacks(callbacks, run, out, trainer_cfg, speed)
        callbacks += convergence.callbacks(c, run)  # convergence.stop: stop when converged
        trainer = L.Trainer(**trainer_cfg, logger=logger, callbacks=callbacks,
                            default_root_dir=str(out))

        # 6. fit
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        unfinished = module.loss_terms.unfinished(trainer.global_step)
        if unfinished:  # it never trained at its target weight: say so where results are read
            log.warning("%s", unfinished)
            set_tags(run.client, run.run_id, {TAG_SCHEDULE_UNFINISHED: unfinished})

        # 7. test and evaluate
        # σ-VAE: one σ, from the training images, for every evaluated batch (test and metrics)
        fix_sigma_for_evaluation(module, dm.imageset, dm.train_idx, seed=int(c.get("seed", 0)))
        test = trainer.test(module, datamodule=dm, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
        if c.get("metrics", {}).get("enabled", True):
            metrics.update(evaluate_model(module, dm.imageset, dm.test_idx, c.get("metrics", {}),
                                          int(c.get("seed", 0)), train_idx=dm.train_idx))
        metrics.update(_speed_metrics(speed))

        # 8. record: metrics, pictures, the final checkpoint
        run.log_metrics({k: v for k, v in metrics.items()
                         if k.startswith(("test/", "system/")) and math.isfinite(v)},
                        step=trainer.global_step)
        x = dm.imageset.batch(picture_indices(dm.test_idx, c["tracking"].get("n_images", 8)))
        x = x.to(module.device)
        kl_dim = np.array([metrics.get(f"val/kl_dim_{j}", 0.0) for j in range(module.latent_dim)])
        log_pictures(run, module, x, kl_dim)
        final = out / "checkpoints" / "final.ckpt"
        trainer.save_checkpoint(final, weights_only=False)  # full state, so it can resume
        if c["tracking"].get("log_checkpoint", True):
            run.log_artifact(final, "checkpoints")
        if trial is not None:  # the sweeper would tell Optuna FAIL: the run fails with it
            check_objective_values(c, metrics)
        metrics["_run_id"] = run.run_id  # type: ignore[assignment]
    return metrics


def check_objective_values(c: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """An Optuna trial's objectives (``objective``) are finite numbers in ``metrics``; else a
    FloatingPointError naming each missing or non-finite one, raised inside the trial's MLflow
    run, so that the run is FAILED (with the reason in ``vaesweep.error``) as the trial is
    FAIL in Optuna, never FINISHED beside a failed trial."""
    names = c.get("objective") or []
    names = [names] if isinstance(names, str) else list(names)
    bad = [f"{n}={'missing' if n not in metrics else metrics[n]}" for n in names
           if not (n in metrics and math.isfinite(float(metrics[n])))]
    if bad:
        raise FloatingPointError(f"non-finite objective value(s): {', '.join(bad)} (the trial "
                                 "produced no finite value for it)")


@contextlib.contextmanager
def _process_settings(c: Mapping[str, Any]) -> Iterator[None]:
    """The job's process-wide settings. Put back on exit: torch's CPU threads (``threads``, or
    a parallel launcher's share) and MLflow's tracking URI, which Lightning's MLFlowLogger sets
    (else a later job composed in this process logged into this job's store). Left as set:
    glibc's allocator tuning and a parallel launcher's GPU memory share, the same for every
    job of a launcher's process."""
    threads = torch.get_num_threads()
    wanted = cpu_threads(c)
    if wanted:
        torch.set_num_threads(wanted)
    tune_allocator()
    share = gpu_memory_share(c)
    if share:
        torch.cuda.set_per_process_memory_fraction(share)
    try:
        with process_tracking_uri_kept():
            yield
    finally:
        torch.set_num_threads(threads)


def _open_trial(c: Mapping[str, Any], study: Mapping[str, Any], callbacks: list[Callback]) -> Any:
    """The Optuna trial of a sweep's job (``study.trial`` set), else None; adds the pruning
    callback to ``callbacks`` when the sweeper has a pruner."""
    if study.get("trial") is None:
        return None
    trial = open_trial(study, sweeper_setting("pruner"))
    monitor = study.get("prune_on") or next(
        (o for o in c.get("objective") or [] if str(o).startswith("val/")), "val/loss")
    if sweeper_setting("pruner"):
        callbacks.append(OptunaPruning(trial, monitor))
    return trial


def _job_callbacks(given: Sequence[Callback], run: TrackedRun, out: Path,
                   trainer_cfg: Mapping[str, Any], speed: Throughput) -> list[Callback]:
    """``given`` and the job's callbacks: throughput, checkpoints, the beta_eff trace,
    resumability, and the display (a sweep's, or a sparse progress bar unless ``given``
    brings one)."""
    # checkpoints/last.ckpt after every validation, written atomically (ckpt_path=last);
    # Lightning writes save_last only along with a top-k checkpoint, so this *is* the top 1
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1,
                           enable_version_counter=False)
    callbacks: list[Callback] = [*given,
        speed, ckpt, BetaTrace(run, trainer_cfg.get("log_every_n_steps", 50)),
        RandomState(), RunIdFile(out / "checkpoints" / RUN_ID_FILE, run.run_id),
        TruncatedCheckpoint(out / "checkpoints")]
    callbacks += job_callbacks(trainer_cfg)  # a sweep's display: Lightning's bar off
    callbacks += progress_bar(trainer_cfg, callbacks)
    return callbacks


def _speed_metrics(speed: Throughput) -> dict[str, float]:
    """``system/*`` metrics of the training steps (docs/pages/performance.md)."""
    metrics = {"system/images_per_second": speed.images_per_second}
    if speed.steps:
        metrics["system/page_faults_per_step"] = speed.faults / speed.steps
        metrics["system/sys_seconds_per_step"] = speed.sys_seconds / speed.steps
    return metrics
