"""Scaling out on Ray (docs/pages/sweeps.md, "Scale out"): a single-node Ray cluster that listens on
127.0.0.1 only, started with ``ray start --head`` as a user would start one, and a small Optuna
study run through Hydra's Ray launcher against it. Every trial is found once in Optuna and once
in MLflow, linked to the sweep's parent run. The cluster is stopped at teardown, also when the
test fails.

The cluster is small enough for a 2-core CI machine: 2 CPUs, a 100 MB object store, no
dashboard, no usage statistics. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's own switch for
a local-only cluster (what it does on macOS and Windows): without it Ray replaces 127.0.0.1 by
the machine's outward address and listens on every interface.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from conftest import ROOT
from test_reliability import assert_every_trial_once, env

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")
N_TRIALS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict:
    e = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
         "OMP_NUM_THREADS": "1",
         # the workers import this checkout's code, whatever is installed
         "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


@pytest.fixture
def ray_cluster():
    """``ray start --head --block`` on 127.0.0.1 and free ports, in its own process group:
    its address. Teardown sends SIGTERM to the head, which drains the node and stops its raylet,
    GCS and workers (about 2 s; SIGTERM to every process at once takes 30 s), then kills
    whatever of the group is left. ``ray stop`` is not used: it stops every Ray of the user
    on the machine."""
    # a short folder: Ray's Unix sockets live below it, and their paths are limited to 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false",
           "--num-cpus=2", "--object-store-memory=100000000", f"--temp-dir={temp}",
           "--disable-usage-stats"]
    log = temp / "head.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=temp, env=ray_env(), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start failed (rc={proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # workers of the group that outlived the head
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def listening_ports(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets that processes ``pids`` listen on."""
    import psutil
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append((c.laddr.ip, c.laddr.port))
    return out


def test_optuna_study_on_a_local_ray_cluster_every_trial_once(tmp_path, ray_cluster):
    import psutil
    # the cluster listens on the loopback address only
    head = [p for p in psutil.process_iter(["name", "cmdline"])
            if f"--gcs_server_port={ray_cluster.rsplit(':', 1)[1]}" in " ".join(p.info["cmdline"] or [])]
    assert head, "no GCS server for the cluster"
    group = {p.pid for p in psutil.process_iter() if _pgid(p.pid) == _pgid(head[0].pid)}
    addresses = {ip for ip, _ in listening_ports(group)}
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses

    # the default stores, relative to the sweep's folder: the sweeper hands the jobs their
    # absolute paths (a Ray worker runs in the folder the cluster was started from)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", "+sweep=quick", "data=digits", "model=mlp", "data.subset=null",
            "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "metrics.enabled=false", "tracking.log_checkpoint=false", "threads=1",
            f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.n_jobs=2",
            "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}",
            f"hydra.sweep.dir={tmp_path}/multirun"]
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "vaesweep", *args], cwd=tmp_path,
                         env={**env(tmp_path), **ray_env()}, capture_output=True, text=True,
                         timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    print(f"sweep on Ray: {time.time() - t0:.0f} s")
    # the trials ran in Ray's workers, not in the sweep's process
    assert "Connecting to existing Ray cluster at address: " + ray_cluster in out, out[-3000:]
    assert "(_run_job pid=" in out
    # in Ray's workers too, Lightning's lines come once, through Hydra's handler
    assert "INFO: GPU available" not in out and "GPU available: False" in out
    study = optuna.load_study(study_name="quick", storage=storage)
    assert_every_trial_once(study, uri, n_trials=N_TRIALS, workers=1)
    assert len(study.trials) == N_TRIALS
    # each job wrote its folder under the sweep's folder
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()) == \
        [str(i) for i in range(N_TRIALS)]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
