"""Every private API of Hydra and Optuna that vaesweep uses, in one place.

The sweepers extend Hydra's basic sweeper and the Optuna sweeper plugin, which have no public
extension API, and they need a few Optuna storage operations that ``optuna.Study`` does not
offer across processes. Each use is here, with why no public API serves. ``INTERNALS`` lists
every one of them with the parameters vaesweep passes, and tests/test_compat.py checks that each
exists, is callable and still takes those parameters, then that each behaves as used. A new
release of Hydra, the sweeper or Optuna that keeps them passes; one that moves, renames or
re-signs one fails by name (``signature_problem``). ``make test-latest`` runs that check, and
the whole suite, on the newest releases the ranges in pyproject.toml allow.

Where a public API serves, the sweepers use it instead: ``study.tell(trial, state=...)`` for
trials of this process, ``trial.set_user_attr`` for live ``optuna.Trial`` objects.
"""
from __future__ import annotations

import datetime
import inspect
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

def _get(owner: Any, attr: str) -> Any:
    return getattr(owner, attr, None)  # a missing one is reported by signature_problem


#: Each upstream internal used here or by the sweepers (vaesweep.sweep.sweepers), as
#: ``"owner.name": (the object, the parameters passed, in order)``. ``self`` is left out; a
#: parameter may gain a default or be followed by new optional ones without breaking a call.
#: The sweepers also read attributes the base classes set in ``__init__``/``setup`` (config,
#: launcher, sweep's storage, n_trials, ...); tests/test_sweeps.py drives them end to end.
_ST = optuna.storages.BaseStorage
INTERNALS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "BasicSweeper.__init__": (_get(BasicSweeper, "__init__"), ("max_batch_size", "params")),
    "BasicSweeper.setup": (_get(BasicSweeper, "setup"),
                           ("hydra_context", "task_function", "config")),
    "BasicSweeper._parse_config": (_get(BasicSweeper, "_parse_config"), ()),
    "BasicSweeper.split_arguments": (_get(BasicSweeper, "split_arguments"),
                                     ("overrides", "max_batch_size")),
    "BasicSweeper.get_job_batch": (_get(BasicSweeper, "get_job_batch"), ()),
    "BasicSweeper.is_done": (_get(BasicSweeper, "is_done"), ()),
    "BasicSweeper.validate_batch_is_legal": (_get(BasicSweeper, "validate_batch_is_legal"),
                                             ("batch",)),
    "OptunaSweeperImpl.__init__": (_get(OptunaSweeperImpl, "__init__"), (
        "sampler", "direction", "storage", "study_name", "n_trials", "n_jobs",
        "max_failure_rate", "custom_search_space", "params")),
    "OptunaSweeperImpl.setup": (_get(OptunaSweeperImpl, "setup"),
                                ("hydra_context", "task_function", "config")),
    "OptunaSweeperImpl._get_directions": (_get(OptunaSweeperImpl, "_get_directions"), ()),
    "OptunaSweeperImpl._process_searchspace_config": (
        _get(OptunaSweeperImpl, "_process_searchspace_config"), ()),
    "OptunaSweeperImpl._parse_sweeper_params_config": (
        _get(OptunaSweeperImpl, "_parse_sweeper_params_config"), ()),
    "OptunaSweeperImpl._configure_trials": (_get(OptunaSweeperImpl, "_configure_trials"), (
        "trials", "search_space_distributions", "fixed_params", "fixed_overrides")),
    "OptunaSweeperImpl._to_grid_sampler_choices": (
        _get(OptunaSweeperImpl, "_to_grid_sampler_choices"), ("distribution",)),
    "create_params_from_overrides": (create_params_from_overrides, ("arguments",)),
    "BaseStorage.get_trial": (_get(_ST, "get_trial"), ("trial_id",)),
    "BaseStorage.get_trial_id_from_study_id_trial_number": (
        _get(_ST, "get_trial_id_from_study_id_trial_number"), ("study_id", "trial_number")),
    "BaseStorage.set_trial_user_attr": (_get(_ST, "set_trial_user_attr"),
                                        ("trial_id", "key", "value")),
    "BaseStorage.set_trial_system_attr": (_get(_ST, "set_trial_system_attr"),
                                          ("trial_id", "key", "value")),
    "BaseStorage.set_trial_state_values": (_get(_ST, "set_trial_state_values"),
                                           ("trial_id", "state")),
    "BaseStorage.create_new_trial": (_get(_ST, "create_new_trial"),
                                     ("study_id", "template_trial")),
    "Study._pop_waiting_trial_id": (_get(optuna.Study, "_pop_waiting_trial_id"), ()),
    "BaseDistribution._contains": (_get(optuna.distributions.BaseDistribution, "_contains"),
                                   ("param_value_in_internal_repr",)),
    "Trial.__init__": (_get(optuna.trial.Trial, "__init__"), ("study", "trial_id")),
    "check_distribution_compatibility": (
        _get(optuna.distributions, "check_distribution_compatibility"), ("dist_old", "dist_new")),
    "FrozenTrial.__init__": (_get(optuna.trial.FrozenTrial, "__init__"), (
        "number", "state", "value", "datetime_start", "datetime_complete", "params",
        "distributions", "user_attrs", "system_attrs", "intermediate_values", "trial_id")),
}


def signature_problem(name: str, obj: Any, params: tuple[str, ...]) -> str | None:
    """Why ``obj`` (the internal ``name``) no longer takes ``params`` as vaesweep passes them,
    or None when it does.

    ``params`` must be the leading parameters after ``self``, in order and by name; any
    further parameter must have a default (or be ``*args``/``**kwargs``).

    Returns:
        one line naming the internal, what vaesweep passes and the signature found; None
    """
    if obj is None or not callable(obj):
        return f"{name} is gone or not callable: vaesweep uses it with ({', '.join(params)})"
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError) as e:
        return f"{name}: its signature cannot be read ({e})"
    named = [p for p in sig.parameters.values() if p.name not in ("self", "cls")
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    extra = [p.name for p in named[len(params):] if p.default is p.empty]
    if [p.name for p in named[:len(params)]] != list(params) or extra:
        return (f"{name}{sig} no longer matches how vaesweep calls it: "
                f"({', '.join(params)})" + (f"; new required {extra}" if extra else ""))
    return None



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


def distribution_conflict(old: optuna.distributions.BaseDistribution,
                          new: optuna.distributions.BaseDistribution) -> str | None:
    """Why Optuna's storage refuses a parameter sampled from ``new`` in a study whose trials
    stored it with ``old`` (another kind, other categorical choices, log scale switched), as
    Optuna words it; None when it accepts it (a moved range or step). Optuna's own check
    (``check_distribution_compatibility``) is public but marked "not for library users"."""
    try:
        optuna.distributions.check_distribution_compatibility(old, new)
    except ValueError as e:
        return str(e)
    return None


def job_exception(ret: Any) -> BaseException | None:
    """The exception a Hydra job failed with (``JobReturn.return_value`` raises it again, and
    Hydra logs "Error executing job" on the way), or None."""
    value = getattr(ret, "_return_value", None)
    return value if isinstance(value, BaseException) else None
