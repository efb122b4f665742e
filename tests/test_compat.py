"""The Hydra and Optuna internals in vaesweep.sweep.compat: each still exists with the
parameters vaesweep passes, and behaves as used. A new release that keeps them passes; one that
moves or re-signs one fails here by name (``make test-latest`` runs this on the newest releases)."""
from __future__ import annotations

import optuna
import pytest

from vaesweep.sweep import compat

S = optuna.trial.TrialState


@pytest.mark.parametrize("name", sorted(compat.INTERNALS))
def test_each_internal_still_takes_the_parameters_vaesweep_passes(name):
    obj, params = compat.INTERNALS[name]
    assert compat.signature_problem(name, obj, params) is None


class _Moved:
    def renamed(self, study_id, number): ...
    def more_required(self, trial_id, key, value, extra): ...
    def more_optional(self, trial_id, key, value, extra=None, *args, **kwargs): ...


@pytest.mark.parametrize("obj, params, expected", [
    (None, ("trial_id",), "is gone"),
    (_Moved.renamed, ("study_id", "trial_number"), "no longer matches"),
    (_Moved.more_required, ("trial_id", "key", "value"), "new required ['extra']"),
])
def test_a_moved_renamed_or_resigned_internal_is_named(obj, params, expected):
    problem = compat.signature_problem("Upstream.thing", obj, params)
    assert problem is not None and "Upstream.thing" in problem and expected in problem


def test_new_optional_parameters_keep_an_internal_usable():
    assert compat.signature_problem("x", _Moved.more_optional, ("trial_id", "key", "value")) is None


def test_create_params_from_overrides_parses_a_sweep_into_distributions():
    space, fixed, _ = compat.create_params_from_overrides(
        ["kl.beta=interval(0.1,1)", "seed=0", "kl=beta,geco"])
    assert isinstance(space["kl.beta"], optuna.distributions.FloatDistribution)
    assert space["kl"].choices == ("beta", "geco") and fixed == {"seed": "0"}


@pytest.fixture
def study():
    return optuna.create_study(storage="sqlite:///:memory:")


def test_ask_with_system_attrs_creates_a_running_trial_tagged_in_one_step(study):
    t = compat.ask_with_system_attrs(study, {"vaesweep.pid": 123})
    frozen = compat.frozen_trial(study, t)
    assert frozen.state == S.RUNNING and frozen.system_attrs["vaesweep.pid"] == 123
    assert compat.trial_id(t) == compat.trial_id(frozen)
    study.enqueue_trial({"x": 1.0})
    queued = compat.ask_with_system_attrs(study, {"vaesweep.pid": 7})  # the enqueued one first
    assert queued.number == 1 and queued.suggest_float("x", 0, 2) == 1.0
    assert compat.frozen_trial(study, queued).system_attrs["vaesweep.pid"] == 7


def test_fail_trial_records_the_reason_and_the_state(study):
    t = study.ask()
    assert compat.is_running(study, t)
    compat.fail_trial(study, t, "stale: gone")
    frozen = compat.frozen_trial(study, t)
    assert frozen.state == S.FAIL and frozen.user_attrs["fail_reason"] == "stale: gone"
    assert not compat.is_running(study, t)


def test_trial_by_number_reopens_a_running_trial_for_reporting(study):
    study.ask()
    t = study.ask()
    again = compat.trial_by_number(study, 1)
    again.report(0.5, step=3)
    assert again.number == t.number and compat.frozen_trial(study, t).intermediate_values == {3: 0.5}


def test_job_exception_reads_a_failed_hydra_job(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    ret = JobReturn()
    ret.status, ret._return_value = JobStatus.FAILED, ValueError("boom")
    assert isinstance(compat.job_exception(ret), ValueError)
    ok = JobReturn()
    ok.status, ok.return_value = JobStatus.COMPLETED, 1.0
    assert compat.job_exception(ok) is None


def test_distribution_contains_tells_inside_from_outside():
    log_float = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
    choice = optuna.distributions.CategoricalDistribution(["constant", "linear"])
    assert compat.distribution_contains(log_float, 0.01)
    assert not compat.distribution_contains(log_float, 2.0)
    assert compat.distribution_contains(choice, "linear")
    assert not compat.distribution_contains(choice, "cosine")


def test_distribution_conflict_is_what_optuna_s_storage_refuses():
    F, C = optuna.distributions.FloatDistribution, optuna.distributions.CategoricalDistribution
    old = F(1e-3, 1.0, log=True)
    assert compat.distribution_conflict(old, F(1e-2, 10.0, log=True)) is None  # a moved range
    assert "kind" in compat.distribution_conflict(old, C([0.01, 0.1]))
    assert "log" in compat.distribution_conflict(old, F(1e-3, 1.0))
    assert "dynamic value space" in compat.distribution_conflict(C(["a", "b"]), C(["a"]))
    study = optuna.create_study()  # the same verdicts as Optuna's own storage
    study.ask().suggest_categorical("x", ["a", "b"])
    with pytest.raises(ValueError, match="dynamic value space"):
        study.ask().suggest_categorical("x", ["a"])
