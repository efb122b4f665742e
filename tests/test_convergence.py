"""convergence.stop: a run stops when its validation ELBO has converged, by the report's own
rule (vaesweep.contract.elbo_change), with trainer.max_steps as the cap; the reason and the
step are tagged on the run."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import CONF, search_runs
from test_bad_input import BASE, main
from vaesweep.contract import CONVERGED_RTOL, CONVERGED_WINDOW, elbo_change
from vaesweep.errors import ConfigError
from vaesweep.job.convergence import DEFAULTS, TAG_STOP, TAG_STOP_STEP, ConvergenceStop, settings


def test_elbo_change_reads_the_last_window_of_steps():
    # last step 2000: the window starts at the last validation at or before 1600 (1500)
    assert elbo_change([500, 1000, 1500, 2000], [300, 260, 250, 249]) == (250, 249, 1 / 249)
    assert elbo_change([500, 1000], [300, 260], window=0.5) == (300, 260, 40 / 260)
    assert elbo_change([0, 10], [1.0, 0.0])[2] == math.inf
    # cannot tell: one validation, or none before the window
    assert elbo_change([500], [300]) is None
    assert elbo_change([900, 1000], [300, 299]) is None
    with pytest.raises(ValueError, match="differ in length"):
        elbo_change([1, 2], [1.0])


class FakeRun:
    def __init__(self):
        self.tags = {}
        self.client, self.run_id = self, "r"

    def set_tag(self, run_id, key, value):
        self.tags[key] = value

    def log_batch(self, run_id, tags=(), **_):
        self.tags.update({t.key: t.value for t in tags})


def trainer_at(step, elbo):
    return SimpleNamespace(global_step=step, callback_metrics={"val/elbo": elbo},
                           sanity_checking=False, should_stop=False)


def validate(cb, history):
    """Feed ``history`` [(step, elbo)] to the callback; the step it stopped at, or None."""
    for step, elbo in history:
        t = trainer_at(step, elbo)
        cb.on_validation_end(t, None)
        if t.should_stop:
            return step
    return None


def test_a_flat_elbo_stops_and_an_improving_one_does_not():
    flat = [(s, 250.0 + 5_000.0 / s) for s in range(100, 2001, 100)]  # < 1 % over 20 % from ~600
    improving = [(s, 250.0 + 50_000.0 / s) for s in range(100, 2001, 100)]
    assert validate(ConvergenceStop(FakeRun()), improving) is None
    stopped = validate(ConvergenceStop(FakeRun()), flat)
    assert stopped is not None and 500 <= stopped < 2000
    # the rule at the stop is the report's: converged there, not one validation earlier
    steps = [s for s, _ in flat if s <= stopped]
    values = [v for s, v in flat if s <= stopped]
    assert elbo_change(steps, values)[2] < CONVERGED_RTOL
    assert elbo_change(steps[:-1], values[:-1])[2] >= CONVERGED_RTOL
    # min_steps holds it back
    assert validate(ConvergenceStop(FakeRun(), min_steps=1500), flat) == 1500
    assert validate(ConvergenceStop(FakeRun(), rtol=1e-9), flat) is None


def test_the_history_survives_a_checkpoint():
    cb = ConvergenceStop(FakeRun())
    validate(cb, [(100, 300.0), (200, 280.0)])
    again = ConvergenceStop(FakeRun())
    again.load_state_dict(cb.state_dict())
    assert validate(again, [(300, 279.9)]) == 300  # 200 -> 300 moved 0.04 %


def test_the_defaults_are_the_reports_rule_and_config_yaml_sets_them():
    assert DEFAULTS["rtol"] == CONVERGED_RTOL and DEFAULTS["window"] == CONVERGED_WINDOW
    assert yaml.safe_load((CONF / "config.yaml").read_text())["convergence"] == DEFAULTS


@pytest.mark.parametrize("conf, match", [
    ({"convergence": {"stop": "yes"}}, "convergence.stop='yes' is invalid: allowed is true or false"),
    ({"convergence": {"rtol": 0}}, "convergence.rtol=0 is invalid"),
    ({"convergence": {"window": 1.0}}, "convergence.window=1.0 is invalid"),
    ({"convergence": {"patience": 3}}, "convergence.patience"),
    ({"convergence": {"stop": True}, "data": {"val_fraction": 0.0}}, "data.val_fraction=0"),
    ({"convergence": {"stop": True}, "trainer": {"val_check_interval": 500, "max_steps": 600}},
     "trainer.val_check_interval=500 is more than half of trainer.max_steps=600"),
])
def test_settings_that_cannot_work_are_refused(conf, match):
    with pytest.raises(ConfigError, match=match):
        settings(conf)


def stop_tags(uri):
    (run,) = search_runs(uri)
    return run.data.tags.get(TAG_STOP), run.data.tags.get(TAG_STOP_STEP), run


@pytest.mark.usefixtures("workdir")
def test_a_real_run_stops_when_converged_and_is_tagged():
    args = [*BASE, "trainer.max_steps=60", "trainer.val_check_interval=10",
            "convergence.stop=true", "convergence.rtol=0.9"]
    code, err = main(args)
    assert code == 0, err
    reason, step, run = stop_tags(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    # validations at 10 and 20: the second's window starts at 10, and 90 % is a loose rule
    assert (reason, step) == ("converged", "20")
    assert math.isfinite(run.data.metrics["test/elbo"])  # it went on to test and record


@pytest.mark.usefixtures("workdir")
def test_a_run_that_reaches_the_cap_is_tagged_so():
    code, err = main([*BASE, "trainer.max_steps=30", "trainer.val_check_interval=10",
                      "convergence.stop=true", "convergence.rtol=1e-9"])
    assert code == 0, err
    reason, step, _ = stop_tags(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    assert (reason, step) == ("cap", "30")
