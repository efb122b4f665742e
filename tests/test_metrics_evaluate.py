"""evaluate_model: the test/* keys of docs/pages/metrics.md from a model and an ImageSet, seeded,
in eval mode, and its settings checked."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import compose
from test_metrics_toys import ToyData
from vaesweep.data.base import ImageSet
from vaesweep.errors import ConfigError
from vaesweep.metrics import DEFAULTS, METRICS, evaluate_model, resolve_settings
from vaesweep.contract import TEST_METRICS

SMALL = {
    "num_points": 300, "num_test_points": 150, "recon_points": 100, "iwae_points": 40, "iwae_k": 8,
    "tc_points": 80, "factorvae_num_train": 60, "factorvae_num_eval": 40, "factorvae_num_variance": 200,
    "factorvae_batch_size": 16, "betavae_num_train": 60, "betavae_num_eval": 40, "betavae_batch_size": 16,
    "batch_size": 32,
}


class TinyVAE(torch.nn.Module):
    """A linear VAE on (1, 1, F) toy images, with the interface of vaesweep.module.VAEModule."""

    def __init__(self, n: int = 4, latent_dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.latent_dim = latent_dim
        self.enc = torch.nn.Linear(n, latent_dim)
        with torch.no_grad():
            self.enc.weight.copy_(torch.eye(latent_dim, n) * 2.0 + 0.05 * torch.randn(latent_dim, n))
        self.logvar = torch.nn.Parameter(torch.full((latent_dim,), -3.0))
        self.dec = torch.nn.Linear(latent_dim, n)
        self.dropout = torch.nn.Dropout(0.5)  # would make eval non-deterministic in train mode

    def encode(self, x):
        mu = self.enc(self.dropout(x.flatten(1)))
        return mu, self.logvar.expand_as(mu)

    def decode(self, z):
        return torch.sigmoid(self.dec(z))

    def represent(self, x):
        return self.encode(x)[0]

    def reconstruct(self, x):
        return self.decode(self.represent(x)).view_as(x)

    def log_likelihood(self, x, z):
        return torch.distributions.Normal(self.decode(z), 0.1).log_prob(x.flatten(1)).sum(1)


def toy_imageset(factors=True, labels=True) -> ImageSet:
    toy = ToyData()
    classes = np.array(list(itertools.product(*[range(s) for s in toy.factor_sizes])))
    return ImageSet("toy", toy.render(classes), (1, 1, 4), codec="float32",
                    factors=classes if factors else None, factor_sizes=toy.factor_sizes if factors else None,
                    labels=classes[:, 0] if labels else None, renderer=toy.render if factors else None)


@pytest.fixture(scope="module")
def result():
    module = TinyVAE()
    module.train()
    out = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2), SMALL, seed=0)
    return module, out


def test_keys_are_those_of_design_section_4(result):
    _, out = result
    assert set(out) == {f"test/{m}" for m in TEST_METRICS}
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())


def test_values_are_sensible_for_a_near_identity_encoder(result):
    _, out = result
    assert out["test/active_units"] == 4.0
    assert out["test/mig"] > 0.6 and out["test/dci_disentanglement"] > 0.8
    assert out["test/factorvae_score"] > 0.9 and out["test/betavae_score"] > 0.9
    assert out["test/linear_probe_acc"] > 0.9 and out["test/knn_acc"] > 0.7  # 48 training points
    assert 0 <= out["test/mse"] <= 1 and out["test/psnr"] > 0
    assert 0 < out["test/mutual_info"] <= np.log(72) + 1e-9


def test_deterministic_and_restores_train_mode(result):
    module, out = result
    assert module.training  # put back as found
    again = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2), SMALL, seed=0)
    assert again == out
    other = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2), SMALL, seed=1)
    assert other["test/iwae_nll"] != out["test/iwae_nll"]


def test_each_metric_has_its_own_random_stream(result):
    module, out = result
    only = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2),
                          {**SMALL, "enabled": ["iwae_nll", "betavae_score"]}, seed=0)
    assert only == {k: out[k] for k in ("test/iwae_nll", "test/betavae_score")}


def test_code_cache_changes_no_value(result):
    # every sampling score through one cache, or each encoding its own draws: the same values
    module, out = result
    uncached = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2), {**SMALL, "code_cache": 0}, seed=0)
    assert uncached == out
    bounded = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2), {**SMALL, "code_cache": 50}, seed=0)
    assert bounded == out


def test_data_without_factors_or_labels():
    module = TinyVAE()
    out = evaluate_model(module, toy_imageset(factors=False), np.arange(144), SMALL, seed=0)
    assert not any(k.startswith(("test/mig", "test/sap", "test/dci", "test/factorvae", "test/betavae")) for k in out)
    assert "test/linear_probe_acc" in out
    out = evaluate_model(module, toy_imageset(labels=False), np.arange(144),
                         {**SMALL, "enabled": ["knn_acc", "mig"]}, 0)
    assert set(out) == {"test/mig"}


def test_structure_source_test_split(result):
    module, _ = result
    out = evaluate_model(module, toy_imageset(), np.arange(144), {**SMALL, "structure_source": "test",
                                                                  "enabled": ["mig", "sap", "dci"]}, 0)
    assert set(out) == {"test/mig", "test/sap", "test/dci_disentanglement", "test/dci_completeness",
                        "test/dci_informativeness"}


def test_probes_on_a_train_split(result):
    module, _ = result
    out = evaluate_model(module, toy_imageset(), np.arange(0, 144, 2), {**SMALL, "enabled": ["knn_acc"]}, 0,
                         train_idx=np.arange(1, 144, 2))
    assert out["test/knn_acc"] > 0.9


def test_disabled():
    assert evaluate_model(TinyVAE(), toy_imageset(), np.arange(10), {"enabled": False}, 0) == {}


def test_settings_are_checked():
    assert resolve_settings(None)["enabled"] == resolve_settings({"enabled": True})["enabled"]
    assert resolve_settings({})["iwae_k"] == DEFAULTS["iwae_k"] == 100
    with pytest.raises(ConfigError, match="metrics.iwae_kk"):
        resolve_settings({"iwae_kk": 3})
    with pytest.raises(ConfigError, match="metrics.iwae_k"):
        resolve_settings({"iwae_k": 0})
    with pytest.raises(ConfigError, match="metrics.enabled"):
        resolve_settings({"enabled": ["mig", "fid"]})
    with pytest.raises(ConfigError, match="metrics.dci_estimator"):
        resolve_settings({"dci_estimator": "xgboost"})
    with pytest.raises(ConfigError, match="metrics.sap_standardize"):
        resolve_settings({"sap_standardize": "yes"})
    with pytest.raises(ConfigError, match="metrics.code_cache"):
        resolve_settings({"code_cache": -1})
    with pytest.raises(ConfigError, match="metrics.preset"):
        resolve_settings({"preset": 3})
    assert resolve_settings({"preset": "fast"})["preset"] == "fast"


# -- the metrics= settings a job gets -----------------------------------------------------------
def _settings(overrides):
    from omegaconf import OmegaConf
    return resolve_settings(OmegaConf.to_container(compose(overrides), resolve=True)["metrics"])


def test_metric_sizes_follow_the_trainer_unless_metrics_is_given():
    fast, default = _settings(["metrics=fast"]), _settings(["metrics=default"])
    assert (fast["preset"], fast["iwae_k"], default["preset"]) == ("fast", 20, "default")
    assert {k: v for k, v in default.items() if k != "preset"} == {
        k: v for k, v in resolve_settings({}).items() if k != "preset"}  # disentanglement_lib's
    assert _settings([]) == fast  # a CPU run
    assert _settings(["trainer=gpu"]) == default
    # an explicit choice wins: on the command line, or a sweep file's
    assert _settings(["metrics=default"]) == _settings(["trainer=cpu", "metrics=default"]) == default
    assert _settings(["trainer=gpu", "metrics=fast"]) == fast
    assert _settings(["trainer=smoke", "metrics=default"]) == default
    assert _settings(["+sweep=quick", "trainer=gpu"]) == fast


def test_smoke_trainer_runs_every_metric_on_a_few_points():
    s = _settings(["trainer=smoke"])
    assert s["preset"] == "smoke" and s["enabled"] == METRICS
    # images encoded or decoded at most: a few thousand (the CPU default's are ~10x more)
    images = (s["recon_points"] * 2 + s["tc_points"] + s["iwae_points"] * s["iwae_k"]
              + s["num_points"] + s["num_test_points"] + s["factorvae_num_variance"]
              + (s["factorvae_num_train"] + s["factorvae_num_eval"]) * s["factorvae_batch_size"]
              + 2 * (s["betavae_num_train"] + s["betavae_num_eval"]) * s["betavae_batch_size"])
    assert images <= 2_000, images
    assert s["num_points"] >= 2 * s["knn_k"] and s["factorvae_batch_size"] >= 2
    assert s["dci_estimator"] == "binned"
