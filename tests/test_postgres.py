"""Scaling out on a real database (docs/pages/sweeps.md): sweep workers share one Optuna study on a
PostgreSQL server, and log their runs over HTTP to an MLflow tracking server whose backend
store is PostgreSQL. Every trial appears exactly once in Optuna and once in MLflow.

One PostgreSQL server (tests/pg.py: Debian's package, 127.0.0.1, a free port) and one MLflow
server serve the whole session; each test has its own databases and experiment. Skipped, with
the reason, only where PostgreSQL cannot be installed.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

import pg
from test_reliability import FAST, assert_every_trial_once, run_workers


@pytest.fixture(scope="session")
def postgres():
    try:
        server = pg.server()
    except pg.Unavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a PostgreSQL backend store: its tracking URI."""
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    port = pg.free_port()
    log = open(artifacts.parent / "mlflow_server.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         postgres.create_db("mlflow"), "--artifacts-destination", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the MLflow server did not start: "
                            + Path(log.name).read_text()[-3000:])
            time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_workers_share_one_study_on_postgres_logging_to_an_mlflow_server(
        tmp_path, postgres, mlflow_server, workers):
    name = f"pg{workers}"
    storage = postgres.create_db(f"optuna_{name}")
    run_workers(["-m", "+sweep=quick", *FAST, "hydra.sweeper.n_trials=4", f"study.name={name}",
                 f"study.storage={storage}", f"tracking.uri={mlflow_server}",
                 f"tracking.experiment={name}"], tmp_path, workers=workers)
    study = optuna.load_study(study_name=name, storage=storage)
    assert_every_trial_once(study, mlflow_server, n_trials=4, workers=workers, experiment=name)
    # the runs went over HTTP, artifacts included, and nothing was written locally
    run_id = next(t.user_attrs["mlflow_run_id"] for t in study.trials if t.values)
    names = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run_id)}
    assert {"config.yaml", "reconstructions.png"} <= names
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def _continue_parent(uri: str, run_id: str, start: float) -> str:
    """One worker joining a study: it continues the study's parent run (TrackedRun with
    run_id), which writes the same new tags as every other worker. Returns "" or the error."""
    from vaesweep.tracking import TrackedRun
    time.sleep(max(0.0, start - time.time()))  # all workers write together
    try:
        TrackedRun(uri, "race", run_id=run_id, tags={"vaesweep.sweep": "race",
                                                     "vaesweep.joined": "yes"})
    except Exception as e:  # noqa: BLE001 - the test reports whatever a worker hit
        return f"{type(e).__name__}: {e}"
    return ""


def test_workers_continuing_one_parent_run_together_all_succeed(postgres):
    """The workers of one study continue its parent run at the same moment and each sets the
    same new tags. ``MlflowClient.set_tag`` is a read-then-insert, so on PostgreSQL all but one
    insert could fail on the tag's primary key (CI hit it with 4 workers); every worker must
    succeed, and the run must carry the tags once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from vaesweep.tracking import TrackedRun
    uri = postgres.create_db("mlflow_race")
    failures = []
    # spawned, not forked: a fork would share this process's database connections
    with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_continue_parent, [uri] * 8, ["warm-up"] * 8, [0] * 8))  # imports done
        for attempt in range(5):  # five fresh runs: five chances for the race
            run_id = TrackedRun(uri, "race", run_name=f"parent{attempt}").run_id
            start = time.time() + 1
            failures += [f for f in pool.map(_continue_parent, [uri] * 8, [run_id] * 8,
                                             [start] * 8) if f]
            assert MlflowClient(uri).get_run(run_id).data.tags["vaesweep.joined"] == "yes"
    assert failures == []
