"""Hydra's entry point for vaesweep's sweepers (Hydra discovers plugins in ``hydra_plugins.*``
and imports every plugin module at start-up, for every ``vaesweep`` command).

This module holds what Hydra reads at start-up: the sweepers' configs, registered as
``hydra/sweeper=vaesweep_optuna`` and ``hydra/sweeper=vaesweep_basic``, and two thin Sweeper
classes that the configs' ``_target_`` name. The sweepers themselves are in
:mod:`vaesweep.sweep.sweepers`, imported when a sweep starts: they import MLflow, Lightning and
torch, which a single run or ``--help`` should not wait for here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig

from vaesweep.contract import DEFAULT_STORAGE
from vaesweep.sweep.compat import BasicSweeperConf


class _Deferred(Sweeper):
    """A Sweeper that builds the vaesweep sweeper ``_impl_name`` when Hydra instantiates it."""

    _impl_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from vaesweep.sweep import sweepers  # start-up time: see the module's docstring
        self.impl = getattr(sweepers, self._impl_name)(*args, **kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)


class VaesweepOptunaSweeper(_Deferred):
    """``hydra/sweeper=vaesweep_optuna``: :class:`vaesweep.sweep.sweepers.VaesweepOptunaSweeper`."""

    _impl_name = "VaesweepOptunaSweeper"


class VaesweepBasicSweeper(_Deferred):
    """``hydra/sweeper=vaesweep_basic``: :class:`vaesweep.sweep.sweepers.VaesweepBasicSweeper`."""

    _impl_name = "VaesweepBasicSweeper"


@dataclass
class VaesweepOptunaConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.vaesweep_sweepers.sweepers.VaesweepOptunaSweeper"
    storage: Any = DEFAULT_STORAGE
    # trials asked for and launched together; null: the launcher's n_jobs (joblib's), else 1
    n_jobs: Any = None
    # a failed trial is recorded FAIL with its reason and the study goes on
    max_failure_rate: float = 1.0
    # an optuna.pruners class, e.g. {_target_: optuna.pruners.MedianPruner, n_warmup_steps: 200}
    pruner: Any = None
    # this many failed trials in a row stop the sweep (0: never), so a fault every trial hits
    # (a missing file, a wrong URL on a worker) does not fail trials forever
    max_failures_in_a_row: int = 20
    # trials run first, in this order, each a mapping of every key in `params` to a value
    # inside its range ({kl.beta_norm: 0.01, kl/schedule: linear}); a resumed study runs
    # only those it has not finished; the sampler draws the trials past them
    enqueue: Any = None


@dataclass
class VaesweepBasicConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.vaesweep_sweepers.sweepers.VaesweepBasicSweeper"


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="vaesweep_optuna", node=VaesweepOptunaConf, provider="vaesweep")
cs.store(group="hydra/sweeper", name="vaesweep_basic", node=VaesweepBasicConf, provider="vaesweep")
