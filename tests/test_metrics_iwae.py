"""The IWAE bound on a linear-Gaussian model, whose log-likelihood is known in closed form:

    z ~ N(0, I_M),  x = W z + b + e,  e ~ N(0, s^2 I_D)   =>   p(x) = N(b, W W^T + s^2 I).

W has orthogonal columns, so the exact posterior is a diagonal Gaussian (what encoders give):
precision I + W^T W / s^2, mean Sigma W^T (x - b) / s^2.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaesweep.metrics import iwae_nll, log_importance_weights, negative_elbo

D, M, SIGMA = 6, 3, 0.5


class LinearGaussian:
    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        self.W = q[:, :M] * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.post_var = 1.0 / (1.0 + (self.W**2).sum(0) / SIGMA**2)  # (M,)

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, M, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + SIGMA * torch.randn(n, D, generator=g, dtype=torch.float64)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def encode(self, x: torch.Tensor, shift: float = 0.0, log_inflate: float = 0.0):
        """The exact posterior, or a perturbed one (mean shifted, variance inflated)."""
        mu = ((x - self.b) @ self.W / SIGMA**2) * self.post_var + shift
        return mu, (self.post_var.log() + log_inflate).expand_as(mu)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(z @ self.W.T + self.b, SIGMA).log_prob(x).sum(-1)

    def neg_elbo(self, x: torch.Tensor, shift: float, log_inflate: float) -> torch.Tensor:
        """-ELBO in closed form for the (perturbed) posterior: E_q[-log p(x|z)] + KL(q || p)."""
        mu, logvar = self.encode(x, shift, log_inflate)
        var = logvar.exp()
        resid = x - mu @ self.W.T - self.b
        expected_nll = 0.5 * D * math.log(2 * math.pi * SIGMA**2) + (
            resid.pow(2).sum(-1) + (self.W**2 * var[:, None, :]).sum((1, 2))) / (2 * SIGMA**2)
        kl = 0.5 * (mu**2 + var - 1 - logvar).sum(-1)
        return expected_nll + kl


@pytest.fixture(scope="module")
def model():
    return LinearGaussian()


@pytest.mark.parametrize("k", [1, 10])
def test_exact_posterior_gives_exact_log_likelihood(model, k):
    # every importance weight is p(x): the bound is tight for any k (to float64 rounding)
    x = model.sample(50)
    nll = iwae_nll(model.encode, model.log_likelihood, x, k=k)
    torch.testing.assert_close(nll, -model.log_px(x), atol=1e-9, rtol=0)


def test_perturbed_posterior_converges_to_exact_with_large_k(model):
    x = model.sample(200)
    exact = float(-model.log_px(x).mean())
    enc = lambda x: model.encode(x, shift=0.3, log_inflate=0.5)  # noqa: E731
    means = [float(iwae_nll(enc, model.log_likelihood, x, k=k, seed=0).mean()) for k in (1, 10, 100, 2000)]
    # tightens as k grows and reaches the exact value within 0.01 nats at k=2000 (the bound
    # holds in expectation: a finite-sample mean may dip below by Monte-Carlo error)
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert all(m > exact for m in means[:3]), (means, exact)
    assert abs(means[-1] - exact) < 0.01, (means[-1], exact)
    # at k=1 it is the ELBO bound, whose gap here is a sizeable fraction of a nat
    assert means[0] - exact > 0.1


def test_negative_elbo_matches_closed_form(model):
    x = model.sample(100)
    enc = lambda x: model.encode(x, shift=0.3, log_inflate=0.5)  # noqa: E731
    log_w = log_importance_weights(enc, model.log_likelihood, x, k=4000)
    mc = negative_elbo(enc, model.log_likelihood, x, k=4000)
    torch.testing.assert_close(mc, -log_w.mean(0))
    stderr = log_w.std(0) / math.sqrt(4000)
    assert ((mc - model.neg_elbo(x, 0.3, 0.5)).abs() < 4.5 * stderr).all()


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 50), shift=st.floats(-1.0, 1.0), inflate=st.floats(-1.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_iwae_never_above_negative_elbo_with_the_same_samples(k, shift, inflate, seed):
    model = LinearGaussian()
    x = model.sample(8)
    enc = lambda x: model.encode(x, shift, inflate)  # noqa: E731
    iw = iwae_nll(enc, model.log_likelihood, x, k=k, seed=seed)
    elbo = negative_elbo(enc, model.log_likelihood, x, k=k, seed=seed)
    assert (iw <= elbo + 1e-9).all()


def test_bounded_memory_chunks_give_the_same_value(model):
    x = model.sample(16)
    enc = lambda x: model.encode(x, 0.3, 0.5)  # noqa: E731
    calls = []

    def ll(x, z):
        calls.append(len(z))
        return model.log_likelihood(x, z)
    whole = iwae_nll(enc, ll, x, k=50, max_samples=10**6)
    assert calls == [16 * 50]
    calls.clear()
    chunked = iwae_nll(enc, ll, x, k=50, max_samples=40)
    assert max(calls) <= 40 and sum(calls) == 16 * 50
    torch.testing.assert_close(chunked, whole, atol=1e-12, rtol=0)


def test_seeded(model):
    x = model.sample(8)
    enc = lambda x: model.encode(x, 0.3, 0.5)  # noqa: E731
    a = iwae_nll(enc, model.log_likelihood, x, k=20, seed=3)
    b = iwae_nll(enc, model.log_likelihood, x, k=20, seed=3)
    c = iwae_nll(enc, model.log_likelihood, x, k=20, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_images_shaped_inputs():
    # x of any shape (B, C, H, W): the likelihood sees x repeated once per sample
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    enc = lambda x: (torch.zeros(len(x), 2, dtype=x.dtype), torch.zeros(len(x), 2, dtype=x.dtype))  # noqa: E731

    def ll(x, z):
        assert x.shape[1:] == (1, 2, 3) and len(x) == len(z)
        return -(x.flatten(1) ** 2).sum(1)
    out = iwae_nll(enc, ll, x, k=7)
    # z is drawn from the prior, so log p(z) - log q(z|x) = 0 and the bound is -log p(x|z)
    torch.testing.assert_close(out, (x.flatten(1) ** 2).sum(1), atol=1e-12, rtol=0)


def test_bad_k():
    with pytest.raises(ValueError, match="k"):
        iwae_nll(lambda x: (x, x), lambda x, z: x.sum(1), torch.zeros(2, 2), k=0)


def test_float32_model_returns_float64_bound(model):
    # the logsumexp runs in float64 whatever the model's dtype
    x = model.sample(4).float()
    enc = lambda x: tuple(t.float() for t in model.encode(x.double()))  # noqa: E731
    ll = lambda x, z: model.log_likelihood(x.double(), z.double()).float()  # noqa: E731
    out = iwae_nll(enc, ll, x, k=5)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), -model.log_px(x.double()).numpy(), atol=1e-3)
