"""The ecosystem's conventions, on one small Optuna sweep run as a user runs it (output to a
pipe, as in CI or a log file): MLflow's experiment kind, source tags and run description;
Optuna's objective names; the sweep's progress lines; each console message once."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import search_runs

N_TRIALS = 2
STEPS = 40
# digits and an MLP: a trial trains 40 steps in about a second
ARGS = ["-m", "+sweep=quick", "data=digits", "model=mlp", "data.subset=null",
        f"trainer.max_steps={STEPS}", "trainer.val_check_interval=20",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "metrics.enabled=false",
        "tracking.log_checkpoint=false", "threads=1", f"hydra.sweeper.n_trials={N_TRIALS}",
        "++progress.every_s=0.2"]  # ++: also runs on a checkout without the key


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep's folder, its tracking URI and its console output (stdout and stderr)."""
    d = tmp_path_factory.mktemp("conventions")
    uri = f"sqlite:///{d}/mlflow.db"
    # an experiment made before vaesweep's first run, without a kind (by hand, or by an
    # older vaesweep): the sweep reuses it
    MlflowClient(tracking_uri=uri).create_experiment("vaesweep", artifact_location=str(d / "mlruns"))
    env = {**os.environ, "VAESWEEP_DATA": str(d / "data"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-m", "vaesweep", *ARGS], cwd=d, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    return d, uri, res.stdout


def _runs(uri: str):
    runs = search_runs(uri)
    parent = next(r for r in runs if r.data.tags.get("vaesweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == N_TRIALS
    return parent, children


# -- MLflow ----------------------------------------------------------------------------------
def test_the_experiment_is_a_model_training_experiment(sweep):
    _, uri, _ = sweep
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("vaesweep")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_experiment_kind_on_new_experiments_and_a_chosen_kind_is_kept(tmp_path):
    from vaesweep.tracking.run import experiment_id
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    new = experiment_id(client, "new")
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    mine = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    assert experiment_id(client, "mine") == mine
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"


def test_every_run_has_mlflow_source_tags_and_keeps_vaesweep_tags(sweep):
    from vaesweep.tracking.run import git_commit
    _, uri, _ = sweep
    parent, children = _runs(uri)
    for run in [parent, *children]:
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "vaesweep"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == tags["vaesweep.git_commit"] == git_commit()
        assert tags["vaesweep.sweep"] == "quick"
    assert sorted(r.data.tags["vaesweep.trial"] for r in children) == ["0", "1"]


def test_the_parent_run_describes_the_sweeps_result(sweep):
    d, uri, _ = sweep
    parent, children = _runs(uri)
    note = parent.data.tags["mlflow.note.content"]
    study = optuna.load_study(study_name="quick", storage=f"sqlite:///{d}/optuna.db")
    assert f"{N_TRIALS} of {N_TRIALS} trials complete" in note
    assert "test/distortion (minimize), test/rate (minimize)" in note
    best = study.best_trials
    assert f"Pareto set ({len(best)} trials)" in note
    for t in best:  # one table row per Pareto trial: its number, weight, values and run
        row = next(l for l in note.splitlines() if l.startswith(f"| {t.number} |"))
        assert f"{t.params['kl.beta_norm']:.4g}" in row
        assert f"{t.values[0]:.4g}" in row and f"{t.values[1]:.4g}" in row
        assert t.user_attrs["mlflow_run_id"] in row


# -- Optuna ----------------------------------------------------------------------------------
def test_the_study_names_its_objectives(sweep):
    d, _, _ = sweep
    study = optuna.load_study(study_name="quick", storage=f"sqlite:///{d}/optuna.db")
    assert study.metric_names == ["test/distortion", "test/rate"]
    df = study.trials_dataframe()
    assert {"values_test/distortion", "values_test/rate"} <= set(df.columns)
    assert "values_0" not in df.columns


# -- the console -----------------------------------------------------------------------------
def test_progress_is_printed_as_lines_when_the_output_is_not_a_terminal(sweep):
    _, _, out = sweep
    started = re.findall(r"\[quick\] trial (\d) started \| (\d) of 2 trials done \| "
                         r"elapsed \S+ \| ETA (\S+)", out)
    assert [(t, n) for t, n, _ in started] == [("0", "0"), ("1", "1")], out[-3000:]
    # the ETA is known once a trial has finished
    assert started[1][2] != "?"
    # periodic lines with the running trial's step out of max_steps
    steps = re.findall(rf"\[quick\] \d of 2 trials done \| trial (\d): step (\d+)/{STEPS}"
                       r".* \| elapsed \S+ \| ETA \S+", out)
    assert steps, out[-3000:]
    assert all(0 <= int(s) <= STEPS for _, s in steps)
    # no live display codes in a log
    assert "\x1b[" not in out and "\r" not in out


def test_each_console_message_appears_once(sweep):
    _, _, out = sweep
    lines = out.splitlines()
    # Lightning's lines once per trial, through Hydra's handler only (not also "INFO: ...")
    for message in ("GPU available: False", "`Trainer.fit` stopped: `max_steps=40` reached."):
        assert sum(message in l for l in lines) == N_TRIALS, message
    assert not [l for l in lines if l.startswith("INFO: ")]
    # Optuna's ExperimentalWarnings (QMCSampler, set_metric_names) were checked and silenced
    assert "ExperimentalWarning" not in out and "is experimental" not in out


def test_a_bad_progress_setting_is_one_error_before_the_study(tmp_path):
    from conftest import run_cli
    res = run_cli([*ARGS, "progress.display=fancy"], tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "progress.display='fancy' is invalid" in res.stderr
    assert "auto" in res.stderr and "lines" in res.stderr
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{tmp_path}/optuna.db")


def test_eta_from_finished_trials_and_from_the_running_trials_pace():
    from vaesweep.sweep.progress import SweepProgress, duration
    p = SweepProgress("s", total=5, display="off")
    assert p.eta() is None
    p.started(["trial 0"])
    p.training(100)
    p._train_t0 -= 10.0  # 10 s of training so far
    p.batch_t0 -= 10.0
    p.stepped(50)         # half way: 20 s a trial, 10 s left of this one, 4 more to go
    assert p.eta() == pytest.approx(10 + 4 * 20, abs=1.0)
    p.batch_t0 -= 20.0
    p.finished(1)         # the trial took 30 s
    assert p.done == 1
    p.started(["trial 1", "trial 2"])  # two at once: 2 left after them, one more batch
    assert p.eta() == pytest.approx(30 + 1 * 30, abs=1.0)
    assert duration(3725) == "1h02m" and duration(65) == "1m05s" and duration(None) == "?"


def test_a_grid_shows_the_job_that_runs_not_the_whole_grid(tmp_path):
    """Hydra's basic launcher gets a grid as one batch and runs it job after job: the
    display must name the job that runs (it named every job of the grid at once, with
    0 trials done until the whole grid had finished)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAESWEEP_DATA": str(tmp_path / "data")}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-m", "vaesweep", "-m", "+sweep=keras_scaling",
                          "debug=smoke", "seed=0", "keras_kl=mean", "rec_weight=784,1,2"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:]
    started = re.findall(r"\[keras_scaling\] (job [\d, job]+) started \| (\d) of 3 trials done",
                         res.stdout)
    assert started == [("job 0", "0"), ("job 1", "1"), ("job 2", "2")], res.stdout[-3000:]
