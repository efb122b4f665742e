"""Shared fixtures: composing the real Hydra config, and a clean working directory."""
from __future__ import annotations

import os
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


def compose(overrides: Sequence[str] = ()):
    """The config the CLI would build for ``overrides`` (Hydra's compose API)."""
    from hydra import compose as hcompose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), job_name="test"):
        return hcompose(config_name="config", overrides=list(overrides))


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
