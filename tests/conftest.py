"""Shared fixtures: composing the real Hydra config, and a clean working directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# tests never reach the network, and never write into the user's cache
os.environ.setdefault("MLFLOW_TRACKING_URI", "")
os.environ.pop("MLFLOW_TRACKING_URI")
os.environ["HYDRA_FULL_ERROR"] = "0"


def with_steps(args: Sequence[str], steps: int) -> list[str]:
    """``args`` with ``trainer.max_steps=steps`` in place of theirs: a key given twice is a
    warning line (``vaesweep: warning: ... is given twice``), which tests counting lines see."""
    return [f"trainer.max_steps={steps}" if a.startswith("trainer.max_steps=") else a for a in args]


def compose(overrides: Sequence[str] = ()):
    """The config the CLI would build for ``overrides`` (Hydra's compose API)."""
    from hydra import compose as hcompose, initialize_config_dir

    import vaesweep.resolvers  # noqa: F401  (the resolvers and the parts' defaults the presets use)

    with initialize_config_dir(config_dir=str(CONF), job_name="test"):
        return hcompose(config_name="config", overrides=list(overrides))


def ensure_debian_package(package: str, path: Path) -> Path:
    """``path``, installing Debian's ``package`` with apt-get first when it is missing (as
    root); pytest.skip, saying why, when that is not possible. Nothing else is downloaded."""
    if path.exists():
        return path
    if shutil.which("apt-get") is None:
        pytest.skip(f"{path} is missing and there is no apt-get to install it "
                    f"(Debian's `{package}` package)")
    if os.geteuid() != 0:
        pytest.skip(f"{path} is missing; installing it with apt-get needs root "
                    f"(run: apt-get install -y {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        res = subprocess.run(f"apt-get update && apt-get install -y {package}", shell=True,
                             env=env, capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{package} could not be installed: apt-get install -y {package} timed out")
    if res.returncode != 0 or not path.exists():
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        pytest.skip(f"{package} could not be installed with apt-get install -y {package}: "
                    + " | ".join(tail))
    return path


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and several threads on a busy machine can be
    a hundred times slower (spinning intra-op workers). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory (mlflow.db, outputs/ land here) with a private data cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "data"))
    return tmp_path


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real ``vaesweep`` entry point in a subprocess."""
    e = {**os.environ, "VAESWEEP_DATA": str(cwd / "data"), **(env or {})}
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "vaesweep", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


# small, fast settings every end-to-end test shares
SMOKE = ["trainer=smoke", "data=dsprites", "data.subset=512", "data.batch_size=32"]


def search_runs(uri: str, experiment: str = "vaesweep"):
    """All runs of ``experiment`` in the tracking store ``uri`` (list of mlflow Run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=10000)


# -- one tiny Optuna study and one tiny grid, shared by the report, notebook and browser
# tests (tests/test_report.py, test_notebook.py, test_browser.py) ------------------------------
# trainer keys, not `trainer=smoke`: a sweep file's own trainer values override a group choice;
# two metrics on few points keep evaluation at about a second per run
TINY_SWEEP_ARGS = ["trainer.max_steps=6", "trainer.val_check_interval=3",
                   "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                   "trainer.log_every_n_steps=1", "data.subset=384", "data.batch_size=32",
                   "metrics=fast", "metrics.enabled=[mig,active_units]",
                   "++metrics.num_points=400", "++metrics.num_test_points=200",
                   "++metrics.recon_points=200", "threads=1",
                   "tracking.log_checkpoint=false"]
# 2 beta_norm x 2 heads x sum/mean, one seed, with a linear warm-up so that the weight moves;
# on dSprites (the study itself runs on Fashion-MNIST): factors for the structure metrics
TINY_GRID_ARGS = ["data=dsprites", "model=conv64", "model.hidden=256", "optim.lr=5e-4",
                  "kl.beta_norm=0.01,1.0", "likelihood=bernoulli,gaussian_optimal",
                  "kl.reduction=sum,mean", "seed=0", "kl/schedule=linear",
                  "kl.schedule.steps=4"]


@pytest.fixture(scope="session")
def tiny_sweeps(tmp_path_factory):
    """A working directory with a tiny ``quick`` Optuna study (4 trials) and a tiny
    ``beta_norm_grid`` (8 runs) in one ``mlflow.db`` (``optuna.db`` for the study): the two
    sweeps run at once, one torch thread each. Returns ``dir``, ``uri``, ``storage``."""
    import time
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("tiny_sweeps")
    uri = f"sqlite:///{d}/mlflow.db"
    # create the store and the experiment first: two processes creating them at once race
    MlflowClient(tracking_uri=uri).create_experiment("vaesweep",
                                                     artifact_location=str(d / "mlruns"))
    env = {**os.environ, "VAESWEEP_DATA": str(d / "data"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    commands = {
        # the report's machinery on quick's former setting (dSprites, conv64, Sobol over
        # beta_norm alone): after 6 steps on MNIST the front is one run, too few figures
        "quick": ["+sweep=quick", *TINY_SWEEP_ARGS, "hydra.sweeper.n_trials=4",
                  "data=dsprites", "model=conv64", "~model.hidden",
                  "hydra.sweeper.enqueue=null", "kl/schedule=constant", "kl.reduction=mean",
                  "seed=0",
                  "hydra.sweep.dir=multirun/quick"],
        "beta_norm_grid": ["+sweep=beta_norm_grid", *TINY_SWEEP_ARGS, *TINY_GRID_ARGS,
                           "hydra.sweep.dir=multirun/grid"],
    }
    t0 = time.time()
    procs = {}
    for name, args in commands.items():
        with open(d / f"{name}.log", "w") as logf:  # a file: a full pipe would stall a sweep
            procs[name] = subprocess.Popen([sys.executable, "-m", "vaesweep", "-m", *args],
                                           cwd=d, env=env, stdout=logf, stderr=subprocess.STDOUT)
    try:
        for name, p in procs.items():
            p.wait(timeout=900)
            log = (d / f"{name}.log").read_text()[-3000:]
            assert p.returncode == 0, f"tiny sweep {name} failed:\n{log}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    print(f"tiny sweeps made in {time.time() - t0:.0f} s")
    return SimpleNamespace(dir=d, uri=uri, storage=f"sqlite:///{d}/optuna.db",
                           sweeps=tuple(commands))
