"""The loss contract (docs/pages/loss-contract.md): heads, reductions, beta_eff."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from vaesweep.errors import ConfigError
from vaesweep.kl import assemble, beta_eff_from, build_weighting, kl_per_dim
from vaesweep.likelihood import HEADS, build_head

SHAPE = (1, 4, 5)


def _inputs(name: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = build_head({"name": name}, SHAPE)
    out = torch.randn(3, head.decoder_channels(), *SHAPE[1:], generator=g)
    x = torch.rand(3, *SHAPE, generator=g)
    if name == "bernoulli":
        x = (x > 0.5).float()
    return head, out, x


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_nll_equals_torch_distributions(name):
    head, out, x = _inputs(name)
    nll = head.nll(out, x)
    assert nll.shape == x.shape
    ref = -head.distribution(out).log_prob(x)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_mean_is_the_distribution_mean(name):
    head, out, _ = _inputs(name)
    torch.testing.assert_close(head.mean(out), head.distribution(out).mean, rtol=1e-5, atol=1e-5)


def test_kl_per_dim_equals_torch():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0, 1))
    torch.testing.assert_close(kl_per_dim(mu, logvar), ref)


@pytest.mark.parametrize("n,m,beta_norm,expected", [
    (64 * 64, 10, 0.1, 40.96),     # dSprites, 10 latents
    (28 * 28, 2, 1.0, 392.0),      # the Keras tutorial's MNIST VAE
    (3 * 32 * 32, 32, 0.5, 48.0),  # CIFAR-10, 32 latents
    (64, 8, 2.0, 16.0),            # digits
])
def test_beta_norm_to_beta_eff(n, m, beta_norm, expected):
    for reduction in ("sum", "mean"):
        w = build_weighting({"name": "beta_norm", "beta_norm": beta_norm, "reduction": reduction}, n, m)
        assert w.beta_eff() == pytest.approx(expected)
    assert beta_eff_from(beta_norm, "sum", n, m, normalised=True) == pytest.approx(expected)


def test_mean_reduction_beta_is_beta_norm():
    w = build_weighting({"name": "beta", "beta": 0.3, "reduction": "mean"}, 100, 5)
    assert w.beta_eff() == pytest.approx(0.3 * 100 / 5) and w.scale == pytest.approx(1 / 100)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), m=st.integers(1, 40),
       b=st.floats(1e-3, 1e2, allow_nan=False, allow_infinity=False), seed=st.integers(0, 10**6))
def test_sum_and_mean_differ_only_by_the_gradient_scale(n, m, b, seed):
    """`mean` with beta=b and `sum` with beta=b·N/M: losses differ by exactly 1/N, and the
    gradients are proportional with that factor (docs/pages/loss-contract.md)."""
    g = torch.Generator().manual_seed(seed)
    nll_p = torch.randn(4, n, generator=g, dtype=torch.float64).requires_grad_()
    mu = torch.randn(4, m, generator=g, dtype=torch.float64).requires_grad_()
    logvar = torch.randn(4, m, generator=g, dtype=torch.float64).requires_grad_()
    w_sum = build_weighting({"name": "beta", "beta": b * n / m, "reduction": "sum"}, n, m)
    w_mean = build_weighting({"name": "beta", "beta": b, "reduction": "mean"}, n, m)
    assert w_sum.beta_eff() == pytest.approx(w_mean.beta_eff())
    grads = []
    losses = []
    for w in (w_sum, w_mean):
        t = w(nll_p.exp(), kl_per_dim(mu, logvar))
        losses.append(t.loss)
        grads.append(torch.autograd.grad(t.loss, (nll_p, mu, logvar)))
    assert float(losses[1]) * n == pytest.approx(float(losses[0]), rel=1e-9)
    for gs, gm in zip(*grads):
        torch.testing.assert_close(gm * n, gs, rtol=1e-9, atol=1e-12)


def test_assemble_is_distortion_plus_weighted_rate():
    nll, kl = torch.rand(5, 2, 3), torch.rand(5, 4)
    t = assemble(nll, kl, 2.5, 0.5)
    d, r = nll.flatten(1).sum(1), kl.sum(1)
    torch.testing.assert_close(t.loss, 0.5 * (d + 2.5 * r).mean())
    torch.testing.assert_close(t.elbo, -(d + r))


def test_free_bits_floor_applies_per_dimension_to_the_batch_mean():
    kl = torch.tensor([[0.0, 2.0], [0.2, 4.0]])
    w = build_weighting({"name": "beta", "beta": 1.0, "free_bits": 0.5}, 10, 2)
    t = w(torch.zeros(2, 10), kl)
    # dim 0 batch-mean 0.1 -> floored to 0.5; dim 1 mean 3.0 stays
    assert float(t.loss) == pytest.approx(3.5)
    assert t.rate.tolist() == pytest.approx([2.0, 4.2])  # the logged rate is the true KL


def test_gaussian_implied_sigma():
    head = build_head({"name": "gaussian", "sigma": 1 / math.sqrt(2)}, SHAPE)
    # MSE-sum weighted by 1 (σ² = 1/2) and KL by beta == σ² = beta/2 with beta_eff = 1
    assert head.implied_sigma(0.02) ** 2 == pytest.approx(0.01)


@pytest.mark.parametrize("cfg,key", [
    ({"name": "beta", "beta": -1.0}, "kl.beta"),
    ({"name": "beta", "beta": float("nan")}, "kl.beta"),
    ({"name": "beta", "beta": "abc"}, "kl.beta"),
    ({"name": "beta_norm", "beta_norm": -0.1}, "kl.beta_norm"),
    ({"name": "beta", "reduction": "avg"}, "kl.reduction"),
    ({"name": "beta", "free_bits": -1}, "kl.free_bits"),
    ({"name": "nope"}, "kl.name"),
    ({"name": "beta", "betta": 1.0}, "kl.betta"),
])
def test_bad_weighting_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build_weighting(cfg, 10, 2)
    assert e.value.key == key and key in str(e.value)
