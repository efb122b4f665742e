"""Every private API of Hydra and Optuna that vaesweep uses, in one place.

The sweepers extend Hydra's basic sweeper and the Optuna sweeper plugin, which have no public
extension API, and they need a few Optuna storage operations that ``optuna.Study`` does not
offer across processes. Each use is here, with why no public API serves, and
tests/test_compat.py checks, for the pinned versions below, that each exists and behaves as
used. Upgrading a pinned package: run that test first; a failure names the internal that moved.

Where a public API serves, the sweepers use it instead: ``study.tell(trial, state=...)`` for
trials of this process, ``trial.set_user_attr`` for live ``optuna.Trial`` objects.
"""
from __future__ import annotations

import datetime
from typing import Any

import optuna

# Hydra's grid sweeper: the class (and its config) that ``hydra/sweeper=basic`` builds, with
# no public import path; the vaesweep sweeper subclasses it (its _parse_config, split_arguments,
# get_job_batch, is_done and max_batch_size are used as the base class uses them)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf  # noqa: F401
# the Optuna sweeper's implementation (its _get_directions, _process_searchspace_config,
# _parse_sweeper_params_config, _configure_trials and _to_grid_sampler_choices are used) and its
# parser of sweep overrides into Optuna distributions
from hydra_plugins.hydra_optuna_sweeper._impl import (  # noqa: F401
    OptunaSweeperImpl, create_params_from_overrides)

from vaesweep.contract import ATTR_FAIL_REASON

#: the versions these internals were checked against (pyproject.toml pins hydra to these;
#: optuna to a range, of which this is the version tested)
PINNED = {"hydra-core": "1.4.0rc3", "hydra-optuna-sweeper": "1.4.0rc3", "optuna": "5.0.0"}


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage id of a trial (Optuna exposes only its number)."""
    return trial._trial_id


def frozen_trial(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The stored state of one trial, read without loading every trial of the study."""
    return study._storage.get_trial(trial._trial_id)


def trial_by_number(study: optuna.Study, number: int) -> optuna.Trial:
    """The running trial ``number`` of ``study``, as a live ``optuna.Trial`` another process
    (a launched job) can report to: Optuna has no public "trial by number" for ask/tell across
    processes."""
    tid = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    return optuna.trial.Trial(study, tid)


def fail_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial,
               reason: str) -> None:
    """Marks a RUNNING trial FAIL with ``fail_reason``, from another process than the one that
    asked it (a stale trial, or one the user interrupted). Not ``study.tell``: it runs the
    sampler's ``after_trial``, which for the grid sampler calls ``study.stop()`` (an error
    outside ``optimize``); and the trial's process is gone."""
    tid = trial._trial_id
    study._storage.set_trial_user_attr(tid, ATTR_FAIL_REASON, reason)
    study._storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)


def is_running(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether ``trial`` is still RUNNING in the storage (not the cached view)."""
    return frozen_trial(study, trial).state == optuna.trial.TrialState.RUNNING


def ask_with_system_attrs(study: optuna.Study, attrs: dict[str, Any]) -> optuna.Trial:
    """``study.ask()``, but the trial is created RUNNING with ``attrs`` as system attributes in
    one transaction (an enqueued trial is taken first and given them, as ``ask`` would).
    ``study.ask`` creates the trial, then tags it: a process killed in between leaves an
    untagged RUNNING trial."""
    study._thread_local.cached_all_trials = None
    waiting = study._pop_waiting_trial_id()
    if waiting is not None:
        for k, v in attrs.items():
            study._storage.set_trial_system_attr(waiting, k, v)
        return optuna.Trial(study, waiting)
    template = optuna.trial.FrozenTrial(
        number=-1, state=optuna.trial.TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
        distributions={}, user_attrs={}, system_attrs=attrs, intermediate_values={},
        trial_id=-1)
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template))


def distribution_contains(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (external representation) lies inside ``dist`` (Optuna has no public
    check; its samplers use ``_contains`` on the internal representation)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def job_exception(ret: Any) -> BaseException | None:
    """The exception a Hydra job failed with (``JobReturn.return_value`` raises it again, and
    Hydra logs "Error executing job" on the way), or None."""
    value = getattr(ret, "_return_value", None)
    return value if isinstance(value, BaseException) else None
