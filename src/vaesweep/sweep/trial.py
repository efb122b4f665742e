"""The job's side of an Optuna trial: its MLflow run id recorded on the trial, and pruning.

The sweeper runs trials in launched jobs (possibly other processes or machines), so a job
re-opens its trial from the study's RDB storage by number.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import optuna
from lightning.pytorch.callbacks import Callback

from vaesweep.sweep.compat import trial_by_number

log = logging.getLogger(__name__)


def storage(url: Any) -> Any:
    """The Optuna storage for ``url``. SQLite waits up to 60 s for a lock another worker holds,
    rather than failing with "database is locked" after sqlite3's default 5 s."""
    if isinstance(url, str) and url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def open_trial(study_cfg: Mapping[str, Any], pruner_cfg: Any = None) -> optuna.Trial | None:
    """The running trial ``study.trial`` of study ``study.name`` in ``study.storage``."""
    if study_cfg.get("trial") is None or not study_cfg.get("name"):
        return None
    pruner = None
    if pruner_cfg:
        from hydra.utils import instantiate
        pruner = instantiate(pruner_cfg, _execution_whitelist_=("optuna.pruners.*",))
    study = optuna.load_study(study_name=study_cfg["name"], storage=storage(study_cfg["storage"]),
                              pruner=pruner)
    return trial_by_number(study, int(study_cfg["trial"]))


class OptunaPruning(Callback):
    """Reports ``monitor`` at every validation and raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        step = trainer.global_step
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.monitor}={value:.5g}")
