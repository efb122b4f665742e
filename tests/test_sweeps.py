"""Named studies: each composes; `quick` runs, is killed, resumes, and its best run
reproduces exactly; two workers share one study without losing or duplicating trials."""
from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose, run_cli, search_runs, with_steps

# imported now, not inside a test: Lightning, torch and torchmetrics give their loggers a
# console handler bound to sys.stderr at import, which inside a test is that test's capture,
# closed when it ends (later tests' records would then fail on it)
import vaesweep.train  # noqa: E402,F401

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# the quick study on a tiny budget: smoke trainer, a small subset, fast metrics
# (keys, not `trainer=smoke`: a sweep file's own trainer values override a group choice)
TINY = ["trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "data.subset=384", "data.batch_size=32", "metrics=fast"]



def test_the_studies_the_issue_names_exist():
    assert {"quick", "beta_norm_grid", "reduction_equivalence", "schedules", "likelihoods",
            "pareto", "locatello_betavae", "keras_scaling"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_each_named_study_composes_and_resolves(name):
    import vaesweep.resolvers  # noqa: F401
    cfg = compose([f"+sweep={name}"])
    c = OmegaConf.to_container(cfg, resolve=True)
    assert c["study"]["name"] == name
    assert c["objective"], "a study names its objectives"


@pytest.mark.parametrize("name", SWEEPS)
def test_each_named_study_prints_with_cfg_job(tmp_path, name):
    res = run_cli([f"+sweep={name}", "--cfg", "job", "--resolve"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"name: {name}" in res.stdout


def _study(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="quick", storage=f"sqlite:///{cwd}/optuna.db")


def _finished_trials(cwd: Path) -> int:
    """Finished trials in ``cwd``'s optuna.db, read in milliseconds (loading the study through
    Optuna takes a second or more on a busy machine: too slow to watch a sweep); 0 while the
    file or its tables are not there yet, or the sweep holds the lock."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{cwd}/optuna.db?mode=ro", uri=True,
                                                timeout=0.1)) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state IN "
                              "('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
    except sqlite3.Error:
        return 0


def _children(cwd: Path):
    runs = search_runs(f"sqlite:///{cwd}/mlflow.db")
    return ([r for r in runs if r.data.tags.get("vaesweep.role") != "parent"],
            [r for r in runs if r.data.tags.get("vaesweep.role") == "parent"])


def _env(cwd: Path) -> dict:
    e = {**os.environ, "VAESWEEP_DATA": str(cwd / "data"), "PYTHONUNBUFFERED": "1"}
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


@pytest.mark.slow
def test_quick_runs_is_killed_resumes_then_best_and_reproduce(tmp_path):
    # the sampler's draws, not quick's design: after 6 steps the design's first points (one
    # schedule, beta_norm rising) are one run dominating the others, and the Pareto set of
    # `best` is the point here (the design's resume: test_a_designed_study_runs_...)
    # 60 steps: a trial lasts about 1.5 s (at TINY's 6 steps, 0.6 s: all four had finished
    # before a slow poll saw the second, once in CI)
    args = ["-m", "+sweep=quick", *with_steps(TINY, 60), "hydra.sweeper.n_trials=4",
            "hydra.sweeper.enqueue=null"]
    proc = subprocess.Popen([sys.executable, "-m", "vaesweep", *args], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    # kill -9 once two trials have finished: mid-study, and most likely mid-trial
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _finished_trials(tmp_path) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _study(tmp_path).trials
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in before) < 4

    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = _study(tmp_path)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert all(not t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    children, parents = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    # every finished trial has exactly one MLflow child run, linked to the parent
    by_trial = {}
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == pid
        assert r.data.tags["vaesweep.sweep"] == "quick"
        assert r.info.status != "RUNNING"
        by_trial.setdefault(int(r.data.tags["vaesweep.trial"]), []).append(r)
    for t in complete:
        finished = [r for r in by_trial[t.number] if r.info.status == "FINISHED"]
        assert len(finished) == 1 and t.user_attrs["mlflow_run_id"] == finished[0].info.run_id
    assert any(k.startswith("pareto_") or k.startswith("best") for k in parents[0].data.metrics)

    res = run_cli(["best", "quick"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Pareto set" in res.stdout and (tmp_path / "best_quick.yaml").is_file()
    run_id = next(line.split(": ")[1] for line in res.stdout.splitlines()
                  if line.strip().startswith("mlflow run:"))
    res = run_cli(["reproduce", run_id.strip()], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("identical"), res.stdout


@pytest.mark.slow
def test_two_workers_share_one_study_every_trial_once(tmp_path):
    cmd = [sys.executable, "-m", "vaesweep", "-m", "+sweep=quick", *TINY,
           "hydra.sweeper.n_trials=4"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    study = _study(tmp_path)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) >= 4
    children, parents = _children(tmp_path)
    trials = [int(r.data.tags["vaesweep.trial"]) for r in children]
    assert sorted(trials) == sorted(t.number for t in study.trials)
    assert {t.user_attrs["mlflow_run_id"] for t in finished} <= {r.info.run_id for r in children}
    assert len(parents) == 1, [p.info.run_id for p in parents]  # one parent for both workers


def test_a_joining_worker_waits_for_the_study_s_parent_run_and_checks_its_store(tmp_path):
    """Workers that start together: the one that created the study opens the parent run and
    names it in the study; a joining worker waits for that name instead of creating a second
    parent. A name from another experiment or store, or none within the wait, is not used."""
    import threading

    from vaesweep.sweep.parent import study_parent
    from vaesweep.tracking import TrackedRun

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = {"uri": uri, "experiment": "vaesweep"}
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    parent = TrackedRun(uri, "vaesweep", run_name="sweep:s").run_id
    threading.Timer(1.0, study.set_user_attr, ("mlflow_parent_run_id", parent)).start()
    t0 = time.monotonic()
    assert study_parent(study, settings, wait=30, poll=0.1) == parent  # named after ~1 s
    assert 0.8 < time.monotonic() - t0 < 20
    # a run of another experiment is not this sweep's parent
    assert study_parent(study, {**settings, "experiment": "other"}, wait=0) is None
    TrackedRun(uri, "other", run_name="x")
    assert study_parent(study, {**settings, "experiment": "other"}, wait=0) is None
    # a run id the store does not have
    study.set_user_attr("mlflow_parent_run_id", "0" * 32)
    assert study_parent(study, settings, wait=0) is None
    # no name at all within the wait
    fresh = optuna.create_study(study_name="t", storage=f"sqlite:///{tmp_path}/optuna.db")
    t0 = time.monotonic()
    assert study_parent(fresh, settings, wait=0.5, poll=0.1) is None
    assert time.monotonic() - t0 >= 0.5


def test_a_trial_is_born_with_its_owner_so_a_killed_sweep_leaves_no_anonymous_trial(tmp_path):
    """Asking and tagging are one transaction: a kill between them cannot leave a RUNNING
    trial without an owner, which resume would count as live forever."""
    from vaesweep.sweep.sweepers import ask_owned, fail_stale_trials
    from vaesweep.tracking.stale import TAG_PID, owner

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", study_name="s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = ask_owned(study, owner(os.getpid()) | {TAG_PID: str(dead.pid)})
    frozen = study._storage.get_trial(t._trial_id)
    assert frozen.state == optuna.trial.TrialState.RUNNING
    assert frozen.system_attrs[TAG_PID] == dead.pid
    alive = ask_owned(study, owner())
    assert fail_stale_trials(study) == [t.number]
    states = {x.number: x.state for x in study.get_trials()}
    assert states == {t.number: optuna.trial.TrialState.FAIL,
                      alive.number: optuna.trial.TrialState.RUNNING}
    assert "died" in study.trials[t.number].user_attrs["fail_reason"]


# -- the zero-work path of every command (issue 15) --------------------------------------------
DONE = ["-m", "+sweep=quick", "data=digits", "model=mlp", "data.subset=null", "study.name=done_t",
        "trainer.max_steps=6", "trainer.val_check_interval=3", "metrics=fast",
        "metrics.enabled=[active_units]", "tracking.log_checkpoint=false", "threads=1",
        "hydra.sweeper.n_trials=1"]


@pytest.mark.slow
def test_rerunning_a_finished_study_says_so_writes_its_summary_and_stays_finished(tmp_path):
    first = run_cli([*DONE, "hydra.sweep.dir=multirun/first"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli([*DONE, "hydra.sweep.dir=multirun/again"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "already has its 1 finished trials" in out, out[-3000:]
    assert "Traceback" not in out
    study = optuna.load_study(study_name="done_t", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 1  # nothing ran
    summary = OmegaConf.load(tmp_path / "multirun/again/optimization_results.yaml")
    assert summary.study == "done_t" and summary.best[0].trial == 0
    _, parents = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


@pytest.mark.slow
def test_resuming_with_a_search_space_optuna_cannot_store_is_refused_before_anything_is_written(
        tmp_path):
    """A resume whose override changes a searched key's choices or its kind of distribution
    (Optuna raised inside the first new trial: a traceback naming no key, that trial left
    RUNNING, the study's FINISHED parent run rewritten FAILED) is one line naming the key and
    both distributions, exit 2, and nothing written."""
    first = run_cli([*DONE, "hydra.sweeper.enqueue=null", "hydra.sweep.dir=multirun/first"],
                    tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="done_t", storage=f"sqlite:///{tmp_path}/optuna.db")
    stored = study.trials[0].distributions
    for override, stored_text in [
            ("kl/schedule=choice(constant,linear)", "CategoricalDistribution(choices=("
             "'constant', 'linear', 'sigmoid'))"),
            ("kl.beta_norm=choice(0.01,0.1)", str(stored["kl.beta_norm"]))]:
        key = override.split("=", 1)[0]
        res = run_cli([*DONE, "hydra.sweeper.enqueue=null", "hydra.sweeper.n_trials=2",
                       override, "hydra.sweep.dir=multirun/again"], tmp_path)
        assert res.returncode == 2, res.stderr[-3000:]
        errors = [l for l in res.stderr.splitlines() if l.startswith("vaesweep: error:")]
        assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
        line = errors[0]
        assert f"{key}='{override.split('=', 1)[1]}'" in line and "'done_t'" in line, line
        assert stored_text in line and "CategoricalDistribution(choices=(" in line, line
        assert "study.name=" in line, line
        study = optuna.load_study(study_name="done_t", storage=f"sqlite:///{tmp_path}/optuna.db")
        assert [t.state.name for t in study.trials] == ["COMPLETE"]  # no new trial
        children, parents = _children(tmp_path)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert [r.info.status for r in children] == ["FINISHED"]
        assert not (tmp_path / "multirun/again").exists()


def _cli(args, capsys) -> tuple[int, str, str]:
    """A subcommand in this process. Logging handlers it adds (``report`` configures the root
    logger) are taken off again: they write to this test's captured stderr, which is closed
    once the test ends, and later tests' log records would fail on it."""
    import logging

    from vaesweep.cli import main
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        code = main(list(args)) or 0
    except SystemExit as e:
        code = e.code
    finally:
        root.handlers[:] = handlers
    out = capsys.readouterr()
    return code, out.out, out.err


def test_best_on_a_study_with_no_trials_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path}/optuna.db")
    code, out, err = _cli(["best", "empty"], capsys)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "sweep='empty' is invalid" in err
    assert "has no trials yet" in err and "vaesweep -m +sweep=empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]


def test_read_commands_create_no_store(tmp_path, monkeypatch, capsys):
    """`best` and `reproduce` in a folder without stores: one error, and no empty optuna.db or
    mlflow.db left behind (a read must not write)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store reads it
    code, _, err = _cli(["best", "quick"], capsys)
    assert code == 2 and "--storage='sqlite:///optuna.db'" in err and "does not exist" in err, err
    code, _, err = _cli(["reproduce", "0123456789abcdef0123456789abcdef"], capsys)
    assert code == 2 and "--tracking-uri='sqlite:///mlflow.db'" in err, err
    assert list(tmp_path.iterdir()) == []


def test_report_over_zero_complete_runs_says_so(tmp_path, capsys):
    """A sweep whose every run failed: the report is written and says there is nothing to
    plot, exit 0."""
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("vaesweep", artifact_location=str(tmp_path / "mlruns"))
    parent = client.create_run(exp, tags={"vaesweep.role": "parent", "vaesweep.sweep": "dead"})
    child = client.create_run(exp, tags={"vaesweep.sweep": "dead", "vaesweep.trial": "0",
                                         "mlflow.parentRunId": parent.info.run_id})
    client.set_terminated(child.info.run_id, "FAILED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    code, out, err = _cli(["report", "dead", "--tracking-uri", uri, "--no-log",
                           "--out", str(tmp_path / "rep"), "--storage", "", "-q"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    answer = (tmp_path / "rep" / "answer.md").read_text()
    assert "0 of 1 runs complete** (1 failed)" in answer, answer
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()


@pytest.mark.slow
def test_reproduce_from_the_file_best_writes_compares_with_the_original_run(tmp_path, monkeypatch, capsys):
    from vaesweep.train import run_job
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "data"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose(["data=digits", "model=mlp", "trainer=smoke", "metrics.enabled=false",
                   "tracking.log_checkpoint=false", "threads=1", f"tracking.uri={uri}"])
    run_id = run_job(cfg)["_run_id"]
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    study.add_trial(optuna.trial.create_trial(
        params={}, distributions={}, value=1.0, user_attrs={"mlflow_run_id": run_id}))
    code, out, err = _cli(["best", "s", "--tracking-uri", uri], capsys)
    assert code == 0, err
    code, out, err = _cli(["reproduce", "best_s.yaml", "--tracking-uri", uri], capsys)
    assert code == 0, err
    assert f" of {run_id}:" in out and "no original run" not in out, out
    assert out.strip().endswith("identical"), out


# -- debug=smoke: any run or study in seconds (issue 15) ----------------------------------------
@pytest.mark.parametrize("name", SWEEPS)
def test_debug_smoke_wins_over_every_named_study(name):
    from vaesweep.cli import debug_last
    args = debug_last(["debug=smoke", f"+sweep={name}"])  # the order a user may type
    assert args == [f"+sweep={name}", "+debug=smoke"]
    c = OmegaConf.to_container(compose(args), resolve=False)
    assert c["trainer"]["max_steps"] == 6 and c["data"]["subset"] == 512
    assert c["tracking"]["experiment"] == "vaesweep-debug"
    assert c["study"]["storage"] == "sqlite:///debug_optuna.db"
    assert c["study"]["name"] == name  # the study keeps its name, in its own storage
    # the evaluation is the smoke preset, and the params say so (not the study's preset name
    # over smoke-sized values)
    assert c["metrics"]["preset"] == "smoke"
    assert c["metrics"]["iwae_points"] == compose(["trainer=smoke"])["metrics"]["iwae_points"]


@pytest.mark.slow
def test_debug_smoke_turns_quick_into_a_smoke_study(tmp_path):
    res = run_cli(["-m", "debug=smoke", "+sweep=quick", "hydra.sweeper.n_trials=1", "threads=1"],
                  tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "optuna.db").exists(), "a smoke study must not touch the real one"
    study = optuna.load_study(study_name="quick", storage=f"sqlite:///{tmp_path}/debug_optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    runs = search_runs(f"sqlite:///{tmp_path}/mlflow.db", "vaesweep-debug")
    child = next(r for r in runs if r.data.tags.get("vaesweep.trial") == "0")
    assert child.data.params["trainer.max_steps"] == "6"
    assert child.data.params["data.subset"] == "512"
    # every metric of quick's preset still runs (quick's data have labels, not factors)
    assert {"test/linear_probe_acc", "test/knn_acc", "test/iwae_nll"} <= set(child.data.metrics)
    assert not search_runs(f"sqlite:///{tmp_path}/mlflow.db", "vaesweep")


def test_parallel_launchers_are_told_from_the_basic_one():
    """On the launchers' real configs: hydra.sweeper.n_jobs > 1 is refused only on the basic
    launcher, which runs one job at a time."""
    from hydra import compose as hcompose, initialize_config_dir

    from conftest import CONF
    from vaesweep.sweep.sweepers import is_parallel_launcher
    for group, parallel in (("basic", False), ("joblib", True), ("submitit_local", True)):
        with initialize_config_dir(config_dir=str(CONF), job_name="test"):
            cfg = hcompose(config_name="config", overrides=[f"hydra/launcher={group}"],
                           return_hydra_config=True)
        assert is_parallel_launcher(cfg.hydra.launcher) is parallel, group


def test_the_trials_at_once_follow_the_launcher_s_n_jobs_or_say_why_not(caplog):
    """hydra.sweeper.n_jobs unset follows joblib's hydra.launcher.n_jobs (-1: every core);
    a launcher setting it outweighs, or a parallel launcher without n_jobs, is a warning.
    Before, ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` ran one trial at a time, silently."""
    import logging

    from joblib import effective_n_jobs

    from vaesweep.sweep.sweepers import trials_at_once
    joblib_at = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    ray = {"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"}
    cases = [(None, {**joblib_at, "n_jobs": 2}, 2, "follows hydra.launcher.n_jobs=2"),
             (None, {**joblib_at, "n_jobs": -1}, effective_n_jobs(-1), "follows"),
             (None, basic, 1, None), (None, None, 1, None),
             (None, ray, 1, "hydra.sweeper.n_jobs is not set: the RayLauncher runs 1 trial"),
             (1, {**joblib_at, "n_jobs": 3}, 1, "2 of the 3 workers of hydra.launcher.n_jobs=3 "
                                                 "stay idle"),
             (2, {**joblib_at, "n_jobs": 2}, 2, None), (2, ray, 2, None)]
    for n_jobs, launcher, want, said in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vaesweep.sweep"):
            assert trials_at_once(n_jobs, launcher) == want, (n_jobs, launcher)
        text = caplog.text
        if said is None:
            assert not text, (n_jobs, launcher, text)
        else:
            assert said in text, (n_jobs, launcher, text)


@pytest.mark.parametrize("n_jobs", [-1, 2, None])
def test_each_joblib_job_gets_its_share_of_the_cores_with_joblib_s_default_n_jobs(monkeypatch, n_jobs):
    """joblib's default hydra.launcher.n_jobs=-1 (every core) shares the cores out too: each
    job took every core before (torch's default), as many threads as cores per worker."""
    from types import SimpleNamespace

    from joblib import effective_n_jobs

    import vaesweep.job.hardware as hw
    hydra = SimpleNamespace(initialized=lambda: True,
                            get=lambda: SimpleNamespace(launcher={"n_jobs": n_jobs}))
    monkeypatch.setattr(hw, "HydraConfig", hydra)
    monkeypatch.setattr(hw.os, "cpu_count", lambda: 8)
    workers = effective_n_jobs(n_jobs) if n_jobs else 1
    assert hw.launcher_jobs() == workers
    assert hw.cpu_threads({}) == (max(1, 8 // workers) if workers > 1 else None)


@pytest.mark.slow
def test_a_joblib_sweep_without_sweeper_n_jobs_runs_the_launcher_s_n_jobs_at_once(tmp_path):
    """End to end: two trials, launched as one batch of two (one batch of one, then another,
    before)."""
    res = run_cli(["-m", "+sweep=quick", *TINY, "metrics.enabled=false", "threads=1",
                   "hydra.sweeper.n_trials=2", "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2"], tmp_path, env=_env(tmp_path))
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "hydra.sweeper.n_jobs follows hydra.launcher.n_jobs=2: 2 trial(s) at once" in log
    assert "is launching 2 jobs" in log and "is launching 1 jobs" not in log, log[-3000:]
    assert [t.state for t in _study(tmp_path).trials] == [optuna.trial.TrialState.COMPLETE] * 2


# -- a designed study: hydra.sweeper.enqueue ----------------------------------------------------
SPACE = {"kl.beta_norm": optuna.distributions.FloatDistribution(0.001, 1.0, log=True),
         "kl/schedule": optuna.distributions.CategoricalDistribution(["constant", "linear"])}
DESIGN = [{"kl.beta_norm": 0.01, "kl/schedule": "constant"},
          {"kl.beta_norm": 0.1, "kl/schedule": "constant"},
          {"kl.beta_norm": 0.01, "kl/schedule": "linear"}]


def _run(study: optuna.Study, design, state=optuna.trial.TrialState.COMPLETE) -> dict:
    """Asks one trial over SPACE as the sweeper does and ends it in ``state``: its params."""
    from vaesweep.sweep.sweepers import ask_owned
    t = ask_owned(study, {}, design)
    for k, d in SPACE.items():
        t._suggest(k, d)
    if state == optuna.trial.TrialState.COMPLETE:
        study.tell(t, 1.0)
    else:
        study.tell(t, state=state)
    return study.trials[t.number].params


def test_a_resumed_space_optuna_stores_is_a_warning_one_it_refuses_a_config_error(caplog):
    """What Optuna stores beside the study's trials (a moved range, a key added or dropped)
    is logged, naming the key; what it refuses is a ConfigError naming both distributions."""
    import logging

    from vaesweep.errors import ConfigError
    from vaesweep.sweep.sweepers import check_resumed_space
    F, C = optuna.distributions.FloatDistribution, optuna.distributions.CategoricalDistribution
    study = optuna.create_study(study_name="s")
    study.add_trial(optuna.trial.create_trial(
        params={"kl.beta_norm": 0.1, "seed": 0}, values=[1.0],
        distributions={"kl.beta_norm": F(1e-3, 1.0, log=True), "seed": C([0, 1])}))
    check_resumed_space(optuna.create_study(), {"x": C(["a"])}, {})  # no trials: nothing
    with caplog.at_level(logging.WARNING, logger="vaesweep.sweep"):
        check_resumed_space(study, {"kl.beta_norm": F(1e-2, 1.0, log=True), "lr": F(0.1, 1.0)},
                            {"seed": "0"})
    text = caplog.text
    assert "kl.beta_norm is searched over FloatDistribution(high=1.0, log=True, low=0.01" in text
    assert "searched now, not in the study's trials: lr" in text
    assert "searched by the study's trials, not now: seed (now 0)" in text
    with pytest.raises(ConfigError) as e:
        check_resumed_space(study, {"seed": C([0, 1, 2])}, {}, {"seed": "choice(0,1,2)"})
    msg = str(e.value)
    assert msg.startswith("seed='choice(0,1,2)' is invalid") and "'s'" in msg
    assert "CategoricalDistribution(choices=(0, 1))" in msg and "(0, 1, 2)" in msg
    assert "study.name=<new name>" in msg


def test_a_point_whose_trial_has_written_only_some_params_is_still_held():
    """Another worker writes its trial's params one by one after asking: while only some are
    written, its point is still held (else four workers on SQLite could run one point twice)."""
    from vaesweep.sweep.sweepers import ask_owned, check_design, next_design_point
    design = check_design(OmegaConf.create(DESIGN), SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    a = ask_owned(study, {}, design)
    key = next(iter(SPACE))
    a._suggest(key, SPACE[key])  # one of its two params written
    assert study.trials[a.number].params == {key: DESIGN[0][key]}
    assert next_design_point(study, design) == DESIGN[1]


def test_a_designed_study_runs_its_points_first_and_a_resume_runs_only_the_missing():
    from vaesweep.sweep.sweepers import ask_owned, check_design
    design = check_design(OmegaConf.create(DESIGN), SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert _run(study, design) == DESIGN[0]
    assert _run(study, design, optuna.trial.TrialState.FAIL) == DESIGN[1]
    # trials asked together (n_jobs > 1) get different points
    a, b = ask_owned(study, {}, design), ask_owned(study, {}, design)
    assert [study.trials[t.number].system_attrs["fixed_params"] for t in (a, b)] == [
        DESIGN[1], DESIGN[2]]  # the failed point is run again
    for t in (a, b):
        for k, d in SPACE.items():
            t._suggest(k, d)
        study.tell(t, 1.0)
    drawn = _run(study, design)  # past the design: the sampler's draw
    assert drawn not in DESIGN and set(drawn) == set(SPACE)
    # nothing is left waiting in the study for a worker
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_a_key_fixed_on_the_command_line_says_which_design_values_it_replaces(caplog):
    from vaesweep.sweep.sweepers import check_design
    only = {"kl.beta_norm": SPACE["kl.beta_norm"]}
    with caplog.at_level("WARNING", logger="vaesweep.sweep"):
        check_design(DESIGN, only, fixed=["kl/schedule"])
    warned = [r.getMessage() for r in caplog.records if "set on the command line" in r.getMessage()]
    values = ", ".join(dict.fromkeys(p["kl/schedule"] for p in DESIGN))
    assert warned == [f"hydra.sweeper.enqueue: kl/schedule is set on the command line, so the "
                      f"design's values of it ({values}) are not run; 2 design point(s) remain"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="vaesweep.sweep"):
        check_design(DESIGN, SPACE)
    assert not [r for r in caplog.records if "set on the command line" in r.getMessage()]


def test_a_design_point_outside_the_search_space_is_one_config_error():
    from vaesweep.sweep.sweepers import check_design
    from vaesweep.errors import ConfigError
    with pytest.raises(ConfigError, match=r"enqueue\[1\]\.kl\.beta_norm.*5\.0.*range"):
        check_design([DESIGN[0], {"kl.beta_norm": 5.0, "kl/schedule": "constant"}], SPACE)
    with pytest.raises(ConfigError, match=r"enqueue\[0\].*kl/schedule.*cosine"):
        check_design([{"kl.beta_norm": 0.1, "kl/schedule": "cosine"}], SPACE)
    with pytest.raises(ConfigError, match=r"enqueue\[0\].*every searched key"):
        check_design([{"kl.beta_norm": 0.1}], SPACE)
    # a key set on the command line is dropped from the points: the repeats become one
    only = {"kl.beta_norm": SPACE["kl.beta_norm"]}
    assert check_design(DESIGN, only, fixed=["kl/schedule"]) == [
        {"kl.beta_norm": 0.01}, {"kl.beta_norm": 0.1}]


def test_the_quick_study_runs_its_design_in_order(tmp_path):
    """`make run`'s study is a design (docs/pages/studies.md, "What makes a result"): its trials are the enqueued points."""
    points = OmegaConf.load(ROOT / "sweeps" / "quick.yaml").hydra.sweeper.enqueue
    res = run_cli(["-m", "+sweep=quick", *TINY, "hydra.sweeper.n_trials=2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = sorted(_study(tmp_path).trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.params for t in trials] == [dict(p) for p in points[:2]]
