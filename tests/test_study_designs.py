"""The named studies can answer their questions (issue 12.4-12.7, 12.1): the reference
setup where they claim one, head-independent objectives across heads, grey data for the
heads whose likelihood is unbounded on binary images, weights where runs are not collapsed,
and GECO at the same starting weight as the methods it is compared with."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose
import vaesweep.resolvers  # noqa: F401
from vaesweep.kl.loss import beta_eff_from
from vaesweep.module import VAEModule

#: heads whose likelihood is unbounded above on binary images (σ → 0, or CB density → ∞)
UNBOUNDED_ON_BINARY = {"continuous_bernoulli", "gaussian_learned", "gaussian_optimal"}
GREY = {"fashion_mnist", "mnist", "cifar10"}


def study(name: str, *overrides: str) -> dict:
    return OmegaConf.to_container(compose([f"+sweep={name}", *overrides]), resolve=True)


def params(name: str) -> dict:
    """The sweeper's search space as the sweep file writes it."""
    return dict(OmegaConf.load(ROOT / "sweeps" / f"{name}.yaml")["hydra"]["sweeper"]["params"])


def grid(name: str, key: str) -> list[str]:
    return [v.strip() for v in str(params(name)[key]).split(",")]


def test_locatello_betavae_is_disentanglement_libs_setup():
    c = study("locatello_betavae")
    assert c["model"]["name"] == "dislib" and c["model"]["latent_dim"] == 10
    assert c["likelihood"]["name"] == "bernoulli" and c["kl"]["reduction"] == "sum"
    m = c["metrics"]
    assert m["sap_standardize"] is False and m["betavae_standardize"] is False
    assert m["dci_estimator"] == "sklearn"
    module = VAEModule(c, (1, 64, 64))
    assert sum(p.numel() for p in module.parameters()) == 690_517
    assert c["optim"]["lr"] == 1e-4 and c["data"]["batch_size"] == 64


def test_pareto_ranks_heads_on_a_head_independent_objective():
    c = study("pareto")
    space = params("pareto")
    assert "likelihood" in space  # it searches over heads ...
    # ... so no objective may be a head's NLL (distortion, ELBO, loss, IWAE)
    assert all(o.split("/")[1] in {"mse", "psnr", "mig", "sap", "dci_disentanglement",
                                   "active_units", "rate"} for o in c["objective"]), c["objective"]
    assert "test/mse" in c["objective"] or "test/psnr" in c["objective"]
    # beta_norm fixes beta_eff; the reduction would only scale the gradient (Adam removes it)
    assert "kl.reduction" not in space


@pytest.mark.parametrize("name", ["likelihoods", "beta_norm_grid"])
def test_unbounded_heads_run_on_grey_data(name):
    c = study(name)
    heads = set(grid(name, "likelihood"))
    assert heads & UNBOUNDED_ON_BINARY
    assert c["data"]["name"] in GREY and c["model"]["name"] == "conv28"


def test_reduction_equivalence_pairs_sit_at_beta_eff_between_a_tenth_and_one():
    base = study("reduction_equivalence")
    n, m = 64 * 64, base["model"]["latent_dim"]
    for value in grid("reduction_equivalence", "beta_eff"):
        pair = []
        for reduction in grid("reduction_equivalence", "kl.reduction"):
            c = study("reduction_equivalence", f"beta_eff={value}", f"kl.reduction={reduction}")
            pair.append(beta_eff_from(c["kl"]["beta"], reduction, n, m, False))
        assert pair[0] == pytest.approx(pair[1])
        assert 0.1 <= pair[0] <= 1.0, pair


def test_geco_in_the_schedules_study_starts_at_the_common_weight():
    c = study("schedules", "+method=geco")
    constant = study("schedules", "+method=constant")
    geco = VAEModule(c, (1, 64, 64)).loss_terms
    assert geco.beta_eff() == pytest.approx(VAEModule(constant, (1, 64, 64)).loss_terms.beta_eff())
    # and every method's ramp ends within the study's steps
    for method in grid("schedules", "+method"):
        kl = VAEModule(study("schedules", f"+method={method}"), (1, 64, 64)).loss_terms
        assert kl.unfinished(c["trainer"]["max_steps"]) is None, method
