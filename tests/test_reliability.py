"""What a study survives, with the faults injected for real: kill -9 of a sweep in the middle of
a trial, a trial whose loss becomes NaN, kill -9 of a training run and its resumption from the
last checkpoint, a tracking store on a full disk, four workers on one SQLite study.
(`test_sweeps.py` kills and resumes `quick` and runs two workers; `test_postgres.py` runs the
workers on PostgreSQL and an MLflow server.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli, search_runs, with_steps
from faults import full_disk  # noqa: F401  (fixture)
from test_bad_input import main as vaesweep  # the entry point, in this process
from test_bad_input import main_out

S = optuna.trial.TrialState
# the quick study on a budget: a few steps, no evaluation, no checkpoint artifact, one thread
FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "data.subset=256", "data.batch_size=32",
        "metrics.enabled=false", "tracking.log_checkpoint=false", "threads=1"]



def env(cwd: Path, **extra: str) -> dict:
    e = {**os.environ, "VAESWEEP_DATA": str(cwd / "data"), "PYTHONUNBUFFERED": "1",
         "OMP_NUM_THREADS": "1", **extra}
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def start(args: Sequence[str], cwd: Path, log: str = "log.txt") -> subprocess.Popen:
    """``vaesweep ARGS`` in the background, in its own process group, output to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "vaesweep", *args], cwd=cwd, env=env(cwd),
                            stdout=open(cwd / log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(what, timeout: float = 300, every: float = 0.05, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = what()
        except Exception:
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc={proc.returncode}) first")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def load(storage: str, name: str = "quick") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def assert_every_trial_once(study: optuna.Study, uri: str, n_trials: int, workers: int,
                            experiment: str = "vaesweep") -> None:
    """Every trial exactly once in Optuna and once in MLflow: none lost, none duplicated."""
    trials = study.trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t.number for t in trials if t.state in (S.RUNNING, S.WAITING)], "left RUNNING"
    complete = [t for t in trials if t.state == S.COMPLETE]
    # workers that ask at the same moment may each start the last trial
    assert n_trials <= len(complete) <= n_trials + workers - 1, [t.state for t in trials]
    runs = search_runs(uri, experiment)
    children = [r for r in runs if r.data.tags.get("vaesweep.role") != "parent"]
    parents = [r for r in runs if r.data.tags.get("vaesweep.role") == "parent"]
    # one parent: only the worker that created the study opens one, the others continue it
    # (two parents split the study: `vaesweep report` reads one of them)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", \
        [(p.info.run_id, p.info.status) for p in parents]
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    tagged = sorted(int(r.data.tags["vaesweep.trial"]) for r in children)
    assert tagged == sorted(numbers), "a trial has no MLflow run, or more than one"
    by_id = {r.info.run_id: r for r in children}
    for t in complete:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["vaesweep.trial"] == str(t.number)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.metrics["test/distortion"] == pytest.approx(t.values[0])
    assert not [r.info.run_id for r in children if r.info.status == "RUNNING"]


def run_workers(args: Sequence[str], cwd: Path, workers: int, timeout: float = 900) -> None:
    procs = [start(args, cwd, f"worker{i}.txt") for i in range(workers)]
    deadline = time.time() + timeout
    for i, p in enumerate(procs):
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                kill9(q) if q.poll() is None else None
            raise
        assert p.returncode == 0, (cwd / f"worker{i}.txt").read_text()[-3000:]


# -- the stale-run machinery, in this process -------------------------------------------------
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_owner_alive_tells_dead_and_recycled_processes():
    from vaesweep.tracking.stale import TAG_PID_START, owner, owner_alive
    me = owner()
    assert owner_alive(me) is True
    assert owner_alive({**me, "vaesweep.pid": str(dead_pid())}) is False
    # same pid, another start time: the pid was recycled, the owner is gone
    assert owner_alive({**me, TAG_PID_START: "1"}) is False
    assert owner_alive({**me, "vaesweep.host": "elsewhere"}) is None
    assert owner_alive({}) is None


def test_close_stale_runs_touches_only_dead_owners_of_that_sweep(workdir):
    from vaesweep.tracking import TrackedRun
    from vaesweep.tracking.stale import close_stale_runs
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("vaesweep")
    dead = {"vaesweep.host": socket.gethostname(), "vaesweep.pid": str(dead_pid())}
    stale = client.create_run(exp, tags={"vaesweep.sweep": "quick", **dead}).info.run_id
    other_sweep = client.create_run(exp, tags={"vaesweep.sweep": "other", **dead}).info.run_id
    other_host = client.create_run(exp, tags={"vaesweep.sweep": "quick", **dead,
                                              "vaesweep.host": "elsewhere"}).info.run_id
    live = TrackedRun(uri, "vaesweep", tags={"vaesweep.sweep": "quick"}).run_id
    assert close_stale_runs(uri, "vaesweep", "quick") == [stale]
    run = client.get_run(stale)
    assert run.info.status == "KILLED"
    assert run.data.tags["vaesweep.error"].startswith(f"stale: its process {dead['vaesweep.pid']}")
    for rid in (other_sweep, other_host, live):
        assert client.get_run(rid).info.status == "RUNNING"


# -- kill -9 of a sweep in the middle of a trial ----------------------------------------------
@pytest.mark.slow
def test_sweep_killed_mid_trial_resumes_to_n_trials_and_closes_its_run(tmp_path):
    # 200 steps: the trial trains for about 4 s, while the poll below sees it within about
    # 0.5 s (at 12 steps it lasted 0.5 s, and a slow poll could miss it)
    args = ["-m", "+sweep=quick", *with_steps(FAST, 200), "hydra.sweeper.n_trials=2"]
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    proc = start(args, tmp_path)

    def trial_running():  # the trial's MLflow run exists and trains
        return [r for r in search_runs(uri) if r.data.tags.get("vaesweep.trial")
                and r.info.status == "RUNNING"]
    killed = wait_for(trial_running, proc=proc, every=0.2)[0]
    kill9(proc)
    assert load(storage).trials[-1].state == S.RUNNING
    assert MlflowClient(uri).get_run(killed.info.run_id).info.status == "RUNNING"

    res = run_cli(args, tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    study = load(storage)
    number = int(killed.data.tags["vaesweep.trial"])
    dead = study.trials[number]
    assert dead.state == S.FAIL and dead.user_attrs["fail_reason"].startswith("stale: the sweep process")
    assert len([t for t in study.trials if t.state == S.COMPLETE]) == 2
    run = MlflowClient(uri).get_run(killed.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["vaesweep.error"].startswith("stale: its process")
    assert not [r for r in search_runs(uri) if r.info.status == "RUNNING"]


# -- a NaN loss -------------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_trial_stops_at_once_is_failed_and_the_study_goes_on(workdir):
    """A real NaN: Adam at lr=1e30 sends the Gaussian head's weights to inf at step 1."""
    storage, uri = f"sqlite:///{workdir}/optuna.db", f"sqlite:///{workdir}/mlflow.db"
    study = optuna.create_study(study_name="quick", storage=storage,
                                directions=["minimize", "minimize"])
    study.enqueue_trial({"optim.lr": 1e30, "kl.beta_norm": 0.5})  # the first trial blows up
    code, err = vaesweep(["-m", "+sweep=quick", *with_steps(FAST, 6),
                          "likelihood=gaussian", "optim.lr=choice(0.0005,1e30)",
                          "hydra.sweeper.n_trials=2", "hydra.sweeper.enqueue=null"])
    assert code == 0, err[-3000:]
    study = load(storage)
    first = study.trials[0]
    assert first.params["optim.lr"] == 1e30 and first.state == S.FAIL
    reason = first.user_attrs["fail_reason"]
    assert reason.startswith("FloatingPointError: non-finite loss at step 1:"), reason
    assert len([t for t in study.trials if t.state == S.COMPLETE]) == 2  # it went on
    runs = {int(r.data.tags["vaesweep.trial"]): r for r in search_runs(uri)
            if r.data.tags.get("vaesweep.trial")}
    assert runs[0].info.status == "FAILED"
    assert "non-finite loss at step 1" in runs[0].data.tags["vaesweep.error"]
    # stopped at once: no validation (every 2 steps) ran
    assert not [k for k in runs[0].data.metrics if k.startswith("val/")]
    # the failed trial is one line in the sweep's log, not Hydra's "Error executing job"
    assert "Error executing job" not in err and "Traceback" not in err, err[-3000:]


def test_a_trial_without_its_objective_is_failed_in_both_stores(workdir):
    """A trial whose objective is missing (here: validation once an epoch, in a run shorter
    than one epoch, which the sweep's first-job checks do not model) is FAIL in Optuna and its
    MLflow run FAILED with the reason (the run said FINISHED: the stores disagreed)."""
    storage, uri = f"sqlite:///{workdir}/optuna.db", f"sqlite:///{workdir}/mlflow.db"
    fast = [a for a in FAST if not a.startswith(("trainer.max_steps", "trainer.val_check"))]
    code, err = vaesweep(["-m", "+sweep=quick", *fast, "study.name=noval",
                          "objective=[val/distortion,test/rate]", "trainer.max_steps=2",
                          "trainer.check_val_every_n_epoch=1", "trainer.val_check_interval=1.0",
                          "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failures_in_a_row=1",
                          "hydra.sweeper.enqueue=null"])
    assert code != 0 and "1 trials in a row failed" in err, err[-3000:]
    (trial,) = optuna.load_study(study_name="noval", storage=storage).trials
    assert trial.state == S.FAIL
    assert "val/distortion=missing" in trial.user_attrs["fail_reason"], trial.user_attrs
    (run,) = [r for r in search_runs(uri) if r.data.tags.get("vaesweep.trial") == "0"]
    assert run.info.status == "FAILED"
    assert "non-finite objective value(s): val/distortion=missing" in run.data.tags["vaesweep.error"]


@pytest.mark.slow
def test_nan_run_is_one_line_with_the_step_terms_and_a_hint(workdir):
    code, out, err = main_out(["trainer=smoke", "data.subset=64", "data.batch_size=16",
                               "metrics.enabled=false", "threads=1", "likelihood=gaussian",
                               "optim.lr=1e30", f"tracking.uri=sqlite:///{workdir}/mlflow.db"])
    assert code == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # (MLflow's and Lightning's own INFO lines aside: in this process they may have a handler)
    lines = [l for l in err.strip().splitlines() if l.startswith("vaesweep")]
    assert len(lines) == 1, err[-3000:]
    assert not [l for l in err.splitlines() if "Error" in l and not l.startswith("vaesweep")], err
    line = lines[0]
    assert line.startswith("vaesweep: error: the run stopped: non-finite loss at step 1:"), line
    for word in ("distortion=", "rate=", "beta_eff=", "lower optim.lr", "data's range",
                 "VAESWEEP_VERBOSE=1"):
        assert word in line, line
    logfile = line.split("the traceback is in ")[1].split(" (or set")[0]
    assert "Traceback" in Path(logfile).read_text()  # kept, in the job's log file
    (run,) = search_runs(f"sqlite:///{workdir}/mlflow.db")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_pruned_trial_says_so_in_one_line(workdir):
    """ThresholdPruner(upper=0) prunes every trial at its first validation (distortion > 0)."""
    code, out, err = main_out(["-m", "+sweep=quick", *FAST, "study.name=pruned",
                               "objective=[test/distortion]", "hydra.sweeper.direction=[minimize]",
                               "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                               "+hydra.sweeper.pruner.upper=0.0", "hydra.sweeper.n_trials=1"])
    assert code == 0, err[-3000:]
    assert "Error executing job" not in out + err and "Traceback" not in out + err, err[-3000:]
    assert "[pruned] trial 0 pruned at step 2: val/loss=" in out, out[-3000:]
    assert load(f"sqlite:///{workdir}/optuna.db", "pruned").trials[0].state == S.PRUNED


@pytest.mark.slow
def test_a_fault_every_trial_hits_stops_the_sweep(workdir):
    code, err = vaesweep(["-m", "+sweep=quick", *FAST, "likelihood=gaussian", "optim.lr=1e30",
                          "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failures_in_a_row=2"])
    assert code == 2, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(
        "vaesweep: error: 2 trials in a row failed (hydra.sweeper.max_failures_in_a_row=2)")
    study = load(f"sqlite:///{workdir}/optuna.db")
    assert [t.state for t in study.trials] == [S.FAIL, S.FAIL]
    runs = search_runs(f"sqlite:///{workdir}/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED", "FAILED"]  # + parent


# -- kill -9 of a training run, resumed from its last checkpoint ------------------------------
RESUME = ["kl=geco", "kl/schedule=linear", "kl.schedule.steps=8", "data.subset=256",
          "data.batch_size=32", "trainer=smoke", "trainer.max_steps=12",
          "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
          "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1", "metrics.enabled=false",
          "tracking.log_checkpoint=false", "threads=1"]


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint_exactly_in_the_same_mlflow_run(tmp_path):
    """GECO's multiplier, a linear warm-up, Adam's moments, the batch order and the noise all
    continue as if never stopped: the resumed run ends bit-identical to an uninterrupted one
    (230 training images in batches of 32: the run crosses an epoch boundary)."""
    ref_uri, uri = f"sqlite:///{tmp_path}/ref.db", f"sqlite:///{tmp_path}/run.db"
    ref = start([*RESUME, f"hydra.run.dir={tmp_path}/ref", f"tracking.uri={ref_uri}"], tmp_path,
                "ref.txt")
    run_args = [*RESUME, f"hydra.run.dir={tmp_path}/run", f"tracking.uri={uri}"]
    proc = start(run_args, tmp_path, "run.txt")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    wait_for(last.is_file, proc=proc, every=0.01)
    kill9(proc)
    at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < at < 12, f"killed at step {at}: too late to test a resumption"
    run_id = (last.parent / "mlflow_run_id").read_text()
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"

    res = run_cli([*run_args, "ckpt_path=last"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.txt").read_text()[-3000:]

    a = torch.load(tmp_path / "ref" / "checkpoints" / "final.ckpt", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoints" / "final.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert (torch.equal(v, b["state_dict"][k]) if torch.is_tensor(v)
                else v == b["state_dict"][k]), k
    geco = b["state_dict"]["loss_terms._extra_state"]
    assert geco == a["state_dict"]["loss_terms._extra_state"] and geco["step"] == 12
    for (i, sa), sb in zip(a["optimizer_states"][0]["state"].items(),
                           b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"Adam state of parameter {i}"

    runs = search_runs(uri)
    assert [r.info.run_id for r in runs] == [run_id], "a second run appeared"
    run, ref_run = runs[0], search_runs(ref_uri)[0]
    assert run.info.status == "FINISHED" and run.data.tags["vaesweep.resumes"] == "1"
    assert "vaesweep.error" not in run.data.tags
    tests = {k: v for k, v in ref_run.data.metrics.items() if k.startswith("test/")}
    assert tests and {k: run.data.metrics[k] for k in tests} == tests
    steps = {m.step for m in MlflowClient(uri).get_metric_history(run_id, "train/beta_eff")}
    assert set(range(at, 12)) <= steps  # the resumed steps carry on the same series


def test_resume_needs_a_stable_output_folder(workdir):
    """``ckpt_path=last`` looks in this run's own folder; without hydra.run.dir it is a new,
    empty one, and the error says so (instead of Lightning silently starting afresh)."""
    from conftest import compose
    from vaesweep.errors import ConfigError
    from vaesweep.job.resume import resolve_ckpt
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        resolve_ckpt("last", workdir / "outputs" / "new")
    assert compose(["ckpt_path=last"]).ckpt_path == "last"


# -- a full disk ------------------------------------------------------------------------------
SMALL = ["trainer=smoke", "data.subset=64", "data.batch_size=16", "metrics.enabled=false",
         "threads=1"]


def test_tracking_store_on_a_full_disk_is_one_clear_error_and_no_study(workdir, full_disk):
    uri = f"sqlite:///{full_disk}/mlflow.db"
    code, err = vaesweep([*SMALL, f"tracking.uri={uri}"])
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"vaesweep: error: tracking.uri='{uri}' is invalid: allowed is a "
                           "reachable, writable MLflow tracking store"), err[-3000:]
    assert "database or disk is full" in last and "Traceback" not in err

    code, err = vaesweep(["-m", "+sweep=quick", *FAST, f"tracking.uri={uri}"])
    assert code == 2, err[-3000:]
    assert f"tracking.uri='{uri}'" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    db = workdir / "optuna.db"  # the study was never created: nothing half-written
    assert not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")


@pytest.mark.slow
def test_disk_full_during_a_run_is_one_error_and_a_failed_run(workdir, full_disk):
    """The tracking store fits; the first checkpoint (~6 MB) does not."""
    code, err = vaesweep([*SMALL, f"hydra.run.dir={full_disk}/outputs"])
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("vaesweep: error: the run stopped on a fault of the machine: "
                           "OSError: [Errno 28] No space left on device"), err[-3000:]
    runs = search_runs(f"sqlite:///{workdir}/mlflow.db")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "No space left on device" in runs[0].data.tags["vaesweep.error"]


@pytest.mark.slow
def test_disk_full_during_a_sweep_stops_it_with_one_error(workdir, full_disk):
    """Both stores fit; the first checkpoint does not. The sweep stops at the first trial with
    one line, not failing trial after trial; its run is FAILED with the reason."""
    code, err = vaesweep(["-m", "+sweep=quick", *FAST, f"hydra.sweep.dir={full_disk}/multirun"])
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("vaesweep: error: trial 0 failed on a fault of the machine"), last
    assert "No space left on device" in last
    study = load(f"sqlite:///{workdir}/optuna.db")
    assert [t.state for t in study.trials] == [S.FAIL]
    runs = [r for r in search_runs(f"sqlite:///{workdir}/mlflow.db")
            if r.data.tags.get("vaesweep.trial") == "0"]
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "No space left on device" in runs[0].data.tags["vaesweep.error"]


def test_a_machine_fault_stops_the_sweep_even_when_the_trial_s_fail_cannot_be_written():
    """The job failed on a full disk, and Optuna's write of the trial's FAIL fails on it too
    (a StorageInternalError "... exceeding max length" from "database or disk is full"): the
    sweep stops with the one-line machine fault. Before, the store's error came out first."""
    import errno
    import sqlite3
    from types import SimpleNamespace

    from hydra.core.utils import JobReturn, JobStatus
    from optuna.exceptions import StorageInternalError

    from vaesweep.errors import VaesweepError
    from vaesweep.sweep.sweepers import VaesweepOptunaImpl

    def full(*args, **kwargs):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise StorageInternalError("An exception is raised during the commit. This "
                                       "typically happens due to invalid data in the commit, "
                                       "e.g. exceeding max length.") from e

    ret = JobReturn()
    ret.status = JobStatus.FAILED
    ret._return_value = OSError(errno.ENOSPC, "No space left on device")
    trial = SimpleNamespace(number=3, set_user_attr=full)
    study = SimpleNamespace(study_name="quick", tell=full)
    with pytest.raises(VaesweepError, match=r"^trial 3 failed on a fault of the machine, the "
                                            r"sweep stops: OSError: \[Errno 28\] No space"):
        VaesweepOptunaImpl._tell(None, study, trial, ret, ["minimize"])
    ret._return_value = ValueError("a job's own error")  # the store's fault stops it too
    with pytest.raises(VaesweepError, match="^trial 3 could not be recorded on a fault of the "
                                            "machine, the sweep stops: StorageInternalError"):
        VaesweepOptunaImpl._tell(None, study, trial, ret, ["minimize"])


@pytest.mark.slow
def test_disk_full_under_a_sweep_s_stores_stops_it_with_one_error_and_ends_what_it_began(workdir):
    """The stores and the sweep's folder on one disk (4 MiB) that the first checkpoint (~5 MB)
    fills. Before, Optuna's write of the trial's FAIL (the disk still full) raised first: some
    1,400 lines of tracebacks ending in a misleading ``StorageInternalError: ... exceeding max
    length``, exit code 1, the trial and both runs left RUNNING. Now: the one-line stop, the
    truncated checkpoint removed, the trial FAIL and both runs FAILED with the reason."""
    from faults import tmpfs

    disk = workdir / "disk"
    with tmpfs(disk, "size=4m") as mounted:
        if not mounted:
            pytest.skip("a full disk is simulated with a small tmpfs, which needs root to mount")
        uri, storage = f"sqlite:///{disk}/mlflow.db", f"sqlite:///{disk}/optuna.db"
        code, err = vaesweep(["-m", "+sweep=quick", *FAST, "hydra.sweeper.n_trials=2",
                              f"tracking.uri={uri}", f"study.storage={storage}",
                              f"hydra.sweep.dir={disk}/multirun"])
        assert code == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("vaesweep: error: trial 0 failed on a fault of the machine, the "
                               "sweep stops: "), err[-3000:]
        assert "No space left on device" in last, last
        assert "Traceback" not in err and "StorageInternalError" not in err, err[-3000:]
        assert not list(disk.rglob("*.ckpt")), "a truncated checkpoint was left on the disk"
        (trial,) = load(storage).trials
        assert trial.state == S.FAIL and "No space left on device" in trial.user_attrs["fail_reason"]
        runs = search_runs(uri)
        assert sorted(r.data.tags.get("vaesweep.role", "trial") for r in runs) == ["parent", "trial"]
        assert {r.info.status for r in runs} == {"FAILED"}, [r.info.status for r in runs]
        assert all("No space left on device" in r.data.tags["vaesweep.error"] for r in runs)


# -- four workers on one SQLite study ---------------------------------------------------------
@pytest.mark.slow
def test_four_workers_share_one_sqlite_study_every_trial_once(tmp_path):
    # one sweep folder for all four (as for workers started in the same second)
    run_workers(["-m", "+sweep=quick", *FAST, "hydra.sweeper.n_trials=4",
                 f"hydra.sweep.dir={tmp_path}/multirun"], tmp_path, workers=4)
    study = load(f"sqlite:///{tmp_path}/optuna.db")
    # each trial has its own job folder, named by its number: none overwrote another's
    for t in study.trials:
        overrides = (tmp_path / "multirun" / str(t.number) / ".hydra" / "overrides.yaml")
        assert f"study.trial={t.number}" in overrides.read_text(), t.number
    assert_every_trial_once(study, f"sqlite:///{tmp_path}/mlflow.db", n_trials=4, workers=4)
    # on SQLite the workers count and ask under one lock: exactly n_trials, the study's first
    # four design points, each once
    assert len(study.trials) == 4, [t.params for t in study.trials]
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(points)) == 4, points


# -- the user stops a job: Ctrl-C (SIGINT) or SIGTERM (issues 13 and 15) ------------------------
#: the issue asks for 10 s; the bound leaves room for a loaded test machine (measured: see notes)
STOP_WITHIN = 30


def _stop(proc: subprocess.Popen, sig: int) -> float:
    t0 = time.time()
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C does
    try:
        proc.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError(f"still running {STOP_WITHIN} s after {signal.Signals(sig).name}")
    return time.time() - t0


def _one_interrupt_line(log: str, sig: int) -> str:
    assert "Traceback" not in log and "SystemExit" not in log, log[-3000:]
    lines = [l for l in log.splitlines() if l.startswith("vaesweep:")]
    assert len(lines) == 1, log[-3000:]
    assert lines[0].startswith(f"vaesweep: interrupted by {signal.Signals(sig).name}: MLflow run"), lines
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_a_run_during_evaluation_is_prompt_killed_and_one_line(tmp_path, sig):
    # disentanglement_lib-sized evaluation: minutes of metrics after a few steps of training
    args = ["trainer=smoke", "data.subset=2000", "data.batch_size=32", "metrics=default",
            "threads=1", "tracking.log_checkpoint=false"]
    proc = start(args, tmp_path)
    wait_for(lambda: "metrics: " in (tmp_path / "log.txt").read_text(), proc=proc, every=0.2)
    took = _stop(proc, sig)
    print(f"{signal.Signals(sig).name}: stopped {took:.1f} s after the signal")
    assert proc.returncode == 128 + sig
    line = _one_interrupt_line((tmp_path / "log.txt").read_text(), sig)
    (run,) = search_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "KILLED"
    assert f"{run.info.run_id} is marked KILLED" in line
    assert signal.Signals(sig).name in run.data.tags["vaesweep.error"]


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_kills_its_runs_and_fails_the_trial(tmp_path):
    args = ["-m", "+sweep=quick", *with_steps(FAST, 400), "hydra.sweeper.n_trials=2"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = start(args, tmp_path)
    wait_for(lambda: [r for r in search_runs(uri) if r.data.tags.get("vaesweep.trial")
                      and r.info.status == "RUNNING"], proc=proc, every=0.2)
    _stop(proc, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT
    line = _one_interrupt_line((tmp_path / "log.txt").read_text(), signal.SIGINT)
    runs = search_runs(uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}  # trial and parent
    assert all(r.info.run_id in line for r in runs), line
    (trial,) = load(f"sqlite:///{tmp_path}/optuna.db").trials
    assert trial.state == S.FAIL and trial.user_attrs["fail_reason"] == "interrupted by SIGINT"


@pytest.mark.slow
@pytest.mark.parametrize("to", ["group", "sweep"], ids=["ctrl-c-SIGINT", "SIGTERM-sweep-only"])
def test_stopping_a_joblib_sweep_leaves_no_run_running(tmp_path, to):
    """Two trials at once in joblib's (loky) worker processes, stopped mid-training: Ctrl-C
    (SIGINT to the whole process group, workers included), or SIGTERM to the sweep process
    alone. The pool's workers are killed when the sweep stops, often before they end their own
    runs: the sweep ends the runs of the trials it launched. Before, 1-2 trial runs (all of
    them with SIGTERM) stayed RUNNING until the next start marked them stale."""
    sig = signal.SIGINT if to == "group" else signal.SIGTERM
    args = ["-m", "+sweep=quick", *with_steps(FAST, 600), "hydra.sweeper.n_trials=4",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = start(args, tmp_path)

    def training():  # both trials' runs are open and have logged metrics
        runs = [r for r in search_runs(uri) if r.data.tags.get("vaesweep.trial")
                and r.info.status == "RUNNING"]
        return len(runs) == 2 and all(r.data.metrics for r in runs)

    wait_for(training, proc=proc, every=0.3, timeout=600)
    t0 = time.time()
    (os.killpg if to == "group" else os.kill)(proc.pid, sig)
    try:
        proc.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError(f"still running {STOP_WITHIN} s after {signal.Signals(sig).name}")
    print(f"stopped {time.time() - t0:.1f} s after the signal")
    log = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 128 + sig, log[-3000:]
    runs = search_runs(uri)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"], log[-3000:]
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}  # 2 trials, parent
    for r in runs:
        assert signal.Signals(sig).name in r.data.tags["vaesweep.error"], r.data.tags
    line = [l for l in log.splitlines() if l.startswith("vaesweep:")][-1]
    assert line.startswith(f"vaesweep: interrupted by {signal.Signals(sig).name}"), line
    assert all(r.info.run_id in line for r in runs), line
    trials = load(f"sqlite:///{tmp_path}/optuna.db").trials
    assert [t.state for t in trials] == [S.FAIL, S.FAIL]
    assert {t.user_attrs["fail_reason"] for t in trials} == {
        f"interrupted by {signal.Signals(sig).name}"}


@pytest.mark.parametrize("db,statement", [("mlflow.db", "CREATE TABLE _alembic_tmp_"),
                                          ("optuna.db", "INSERT INTO studies")],
                         ids=["mlflow-tables", "study-created"])
def test_ctrl_c_at_a_sweep_s_first_start_leaves_stores_the_next_start_uses(workdir, db, statement):
    """Ctrl-C on a folder's first sweep, ``mlflow-tables``: while MLflow creates its tables (a
    second or so); ``study-created``: as the Optuna study is created, before the study names
    its parent run. The job stops with its one line and exit code 130, and the next start
    goes on at once. Before, the first left a half-built mlflow.db that every later start
    refused ("table ... already exists"), the second a study without its parent run, for
    which the next start waited 60 s (a new user's helper: 10 of 15 and 9 of 12 tries)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from vaesweep.sweep.parent import ATTR_PARENT_RUN_ID
    fired = []

    def stop_there(conn, cursor, sql, *args):
        # mlflow-tables: a table that one of MLflow's later migrations rebuilds
        if not fired and sql.lstrip().startswith(statement) and str(conn.engine.url.database).endswith(db):
            fired.append(sql)
            signal.raise_signal(signal.SIGINT)

    args = ["-m", "+sweep=quick", *FAST, "hydra.sweeper.n_trials=1"]
    event.listen(Engine, "after_cursor_execute", stop_there)
    try:
        code, err = vaesweep(args)
    finally:
        event.remove(Engine, "after_cursor_execute", stop_there)
    assert fired, f"no {statement} on {db}"
    assert code == 128 + signal.SIGINT, err[-3000:]  # a stop, whatever it landed in
    assert err.strip().splitlines()[-1].startswith("vaesweep: interrupted by SIGINT"), err[-3000:]
    uri = f"sqlite:///{workdir}/mlflow.db"
    if db == "optuna.db":  # the study was created, and names the parent run it got
        parent = load(f"sqlite:///{workdir}/optuna.db").user_attrs[ATTR_PARENT_RUN_ID]
        assert MlflowClient(uri).get_run(parent).info.status == "KILLED"
    code, err = vaesweep(args)  # the next start: the same stores, whole
    assert code == 0, err[-3000:]
    assert "names no MLflow parent run" not in err
    # the stop may have landed in a first trial (KILLED); the next start's trial finishes
    trials = [r.info.status for r in search_runs(uri) if r.data.tags.get("vaesweep.trial")]
    assert "FINISHED" in trials and set(trials) <= {"FINISHED", "KILLED"}, trials


@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "raised-inside"])
def test_a_stop_inside_a_store_write_waits_for_the_write_and_the_run_is_killed(tmp_path, monkeypatch, defer):
    """Ctrl-C arriving while MLflow's SQLite store is inside a transaction (in CI the sweep's
    stop landed in Lightning's log_metrics): the write completes, then the job stops and its
    run is KILLED. Raised inside the transaction, the stop left the database file locked by a
    connection its traceback kept alive; marking the run KILLED then failed on the 20 s busy
    timeout, and the run stayed RUNNING. ``raised-inside``: a store call that outlasts the
    deferral gets the stop inside it after all; the write is lost, the run is still KILLED."""
    from sqlalchemy import event

    import vaesweep.stops
    if not defer:
        monkeypatch.setattr(vaesweep.stops, "STOP_DEFER_S", 0.0)

    from vaesweep.errors import Interrupted
    from vaesweep.tracking import TrackedRun
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fired = []

    def stop_mid_transaction(conn, cursor, statement, *args):  # inside SQLAlchemy's try
        # the latest-metrics query comes after the metric's INSERT, in the same transaction
        if not fired and statement.lstrip().startswith("SELECT") and "latest_metrics" in statement:
            fired.append(statement)
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        with TrackedRun(uri, "vaesweep") as run:
            run.log_metrics({"loss": 2.0}, step=0)  # a latest value to update: a write lock
            engine = run.client._tracking_client.store.engine
            event.listen(engine, "after_cursor_execute", stop_mid_transaction)
            try:
                run.log_metrics({"loss": 1.0}, step=1)
                time.sleep(30)  # the stop lands here, once the write has returned
            finally:
                event.remove(engine, "after_cursor_execute", stop_mid_transaction)
    assert fired, "the store never ran the latest-metrics query"
    assert stopped.value.killed_runs == [run.run_id]
    got = MlflowClient(uri).get_run(run.run_id)
    assert got.info.status == "KILLED", got.data.tags
    history = MlflowClient(uri).get_metric_history(run.run_id, "loss")
    if defer:  # the write the stop landed in was committed
        assert got.data.metrics == {"loss": 1.0}
        assert sorted((m.step, m.value) for m in history) == [(0, 2.0), (1, 1.0)]
    else:  # rolled back whole
        assert got.data.metrics == {"loss": 2.0}
        assert [(m.step, m.value) for m in history] == [(0, 2.0)]
