"""End to end: one training job through the real CLI, read back through MLflow."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import SMOKE, compose, run_cli, search_runs

NAMED_METRICS = [f"{s}/{t}" for s in ("train", "val", "test")
                 for t in ("loss", "distortion", "rate", "elbo")] + [
    "val/beta_eff", "test/beta_eff", "train/beta_eff", "val/active_units", "val/kl_dim_0",
    "val/kl_dim_9", "test/mse", "test/psnr", "test/iwae_nll", "test/mig", "test/sap",
    "test/dci_disentanglement", "test/factorvae_score", "test/betavae_score", "test/total_correlation",
    "test/active_units", "system/images_per_second"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    res = run_cli([*SMOKE, "model=conv64", "likelihood=bernoulli", "kl=beta_norm",
                   "kl.beta_norm=0.1", "kl.reduction=mean"], cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    uri = f"sqlite:///{cwd}/mlflow.db"
    runs = search_runs(uri)
    assert len(runs) == 1
    return cwd, uri, runs[0]


def test_smoke_run_logs_named_metrics_params_and_artifacts(smoke_run):
    cwd, uri, run = smoke_run
    assert run.info.status == "FINISHED"
    missing = [m for m in NAMED_METRICS if m not in run.data.metrics]
    assert not missing, missing
    p = run.data.params
    assert p["kl.beta_norm"] == "0.1" and p["kl.reduction"] == "mean"
    assert p["likelihood.name"] == "bernoulli" and p["model.latent_dim"] == "10"
    # trainer=smoke evaluates every metric on a few points, and the run says which settings
    assert p["metrics.preset"] == "smoke" and p["metrics.iwae_k"] == "8"
    assert run.data.metrics["val/beta_eff"] == pytest.approx(0.1 * 4096 / 10)
    assert "vaesweep.git_commit" in run.data.tags
    client = MlflowClient(tracking_uri=uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "reconstructions.png", "traversals.png", "kl_per_dim.png",
            "checkpoints"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/final.ckpt"]


def test_beta_eff_is_logged_at_every_optimiser_step(smoke_run):
    cwd, uri, run = smoke_run
    hist = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "train/beta_eff")
    assert sorted(m.step for m in hist) == list(range(6))


def test_checkpoint_loads_with_weights_only(smoke_run, tmp_path):
    cwd, uri, run = smoke_run
    path = MlflowClient(tracking_uri=uri).download_artifacts(
        run.info.run_id, "checkpoints/final.ckpt", str(tmp_path))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["kl"]["beta_norm"] == 0.1
    from vaesweep.module import VAEModule
    m = VAEModule.load_from_checkpoint(path, weights_only=True)
    assert m.loss_terms.step == 6


def test_a_job_that_dies_marks_its_run_failed(workdir, monkeypatch):
    from vaesweep.module import VAEModule
    from vaesweep.train import run_job

    def boom(self, x, i):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(VAEModule, "training_step", boom)
    with pytest.raises(RuntimeError, match="injected"):
        run_job(compose([*SMOKE, "metrics.enabled=false", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]))
    runs = search_runs(f"sqlite:///{workdir}/mlflow.db")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "injected failure" in runs[0].data.tags["vaesweep.error"]


BAD_INPUTS = [
    (["kl=beta", "kl.beta=-1"], "kl.beta=-1"),
    (["likelihood=nope"], "likelihood"),
    (["kl.reduction=avg"], "kl.reduction='avg'"),
    (["model.latent_dim=0"], "model.latent_dim=0"),
    (["data=digits", "model=conv64"], "model.name='conv64'"),
    (["data=mnist", "data.root=/nonexistent/mnist"], "data.root"),
]


@pytest.mark.parametrize("overrides,needle", BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_is_one_clear_error_and_no_run(tmp_path, overrides, needle):
    res = run_cli([*SMOKE, *overrides], tmp_path, timeout=120)
    assert res.returncode != 0
    assert needle in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    db = tmp_path / "mlflow.db"
    if db.exists():
        runs = search_runs(f"sqlite:///{db}")
        assert runs == []


def test_a_job_leaves_the_process_settings_as_they_were(tmp_path, monkeypatch):
    """Lightning's MLFlowLogger sets the process's tracking URI and $MLFLOW_TRACKING_URI,
    which the config's default store reads: a second job composed in the same process, in
    another folder, logged into the first job's store (CI: after the first folder was
    deleted, the second job failed on a read-only database). ``threads`` stayed set too."""
    import os

    from vaesweep.train import run_job
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        run_job(compose([*SMOKE, "metrics.enabled=false", "trainer.enable_progress_bar=false",
                         f"threads={threads + 1}"]))
        assert "MLFLOW_TRACKING_URI" not in os.environ
        assert torch.get_num_threads() == threads
    for name in ("a", "b"):
        assert len(search_runs(f"sqlite:///{tmp_path / name}/mlflow.db")) == 1, name


def test_process_tracking_uri_kept_puts_back_a_user_s_setting(monkeypatch):
    import os

    import mlflow

    from vaesweep.tracking import process_tracking_uri_kept
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mine.db")
    with process_tracking_uri_kept():
        mlflow.set_tracking_uri("sqlite:///the-job-s.db")
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///the-job-s.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///mine.db"
    assert mlflow.get_tracking_uri() == "sqlite:///mine.db"
