"""KL per dimension, active units, posterior collapse, TC and MI, MSE/PSNR and the probes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vaesweep.metrics import (
    active_mask,
    active_units,
    collapsed_mask,
    kl_per_dim,
    knn_acc,
    linear_probe_acc,
    mse,
    mutual_info,
    posterior_collapse,
    psnr,
    rate,
    rate_distortion,
    recon_variance_ratio,
    ReconVariance,
    total_correlation,
)

finite = st.floats(-5.0, 5.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(mu=arrays(np.float64, (7, 3), elements=finite), logvar=arrays(np.float64, (7, 3), elements=finite))
def test_kl_per_dim_equals_torch_kl_divergence(mu, logvar):
    mu_t, logvar_t = torch.from_numpy(mu), torch.from_numpy(logvar)
    q = torch.distributions.Normal(mu_t, torch.exp(0.5 * logvar_t))
    p = torch.distributions.Normal(torch.zeros_like(mu_t), torch.ones_like(mu_t))
    expected = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(kl_per_dim(mu_t, logvar_t), expected)
    np.testing.assert_allclose(kl_per_dim(mu, logvar), expected.numpy(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rate(mu_t, logvar_t), expected.sum(-1))


def test_active_units_exact_on_constructed_posterior():
    # posterior means with known variance over data points in each dimension: +-sqrt(v)
    variances = np.array([0.0, 0.005, 0.0099, 0.0101, 0.02, 1.0, 4.0])
    signs = np.where(np.arange(1000) % 2 == 0, 1.0, -1.0)[:, None]
    mu = signs * np.sqrt(variances)[None, :] + np.array([0.0, 3.0, -1.0, 0.5, 0.0, 2.0, -7.0])
    np.testing.assert_allclose(mu.var(axis=0), variances, atol=1e-15)
    assert active_units(mu) == 4
    assert active_mask(mu).tolist() == [False, False, False, True, True, True, True]
    assert active_units(torch.from_numpy(mu)) == 4  # tensors too
    assert active_units(mu, threshold=0.5) == 2


def test_posterior_collapse_rule():
    # the rule: collapsed when every dimension's mean KL is below the threshold (0.01 nats)
    assert posterior_collapse(np.array([0.001, 0.009, 0.0]))
    assert not posterior_collapse(np.array([0.001, 0.009, 0.5]))
    assert collapsed_mask(np.array([0.001, 0.5])).tolist() == [True, False]
    assert not posterior_collapse(np.array([0.02, 0.02]))
    assert posterior_collapse(np.array([0.02, 0.02]), threshold=0.05)
    mu, logvar = torch.zeros(100, 4), torch.zeros(100, 4)  # q(z|x) = p(z)
    assert posterior_collapse(kl_per_dim(mu, logvar).mean(0))


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_tc_and_mi_zero_when_posterior_is_the_prior(estimator):
    rng = np.random.default_rng(0)
    mu, logvar = np.zeros((300, 3)), np.zeros((300, 3))
    z = rng.standard_normal((300, 3))
    if estimator == "mss":
        assert mutual_info(z, mu, logvar) == pytest.approx(0.0, abs=1e-10)
        assert total_correlation(z, mu, logvar) == pytest.approx(0.0, abs=1e-10)
        assert mutual_info(z, mu, logvar, dataset_size=10_000) == pytest.approx(0.0, abs=1e-10)
    else:
        # Chen et al.'s minibatch weighted sampling weights each posterior 1/(N M): with M = N
        # it is offset by -log N in log q(z) and in each marginal, so MI by +log N and TC by
        # +(D-1) log N -- why "mss" is the default
        n = 300
        assert mutual_info(z, mu, logvar, estimator="mws") == pytest.approx(math.log(n), abs=1e-9)
        assert total_correlation(z, mu, logvar, estimator="mws") == pytest.approx(2 * math.log(n), abs=1e-9)


def test_tc_and_mi_match_a_gaussian_aggregate_posterior():
    # means ~ N(0, [[1, r], [r, 1]]), posterior variance 1: q(z) = N(0, [[2, r], [r, 2]]), so
    # TC = -0.5 log(1 - (r/2)^2) and I(x; z) = 0.5 log det(cov_q) - 0.5 log det(I)
    r, n = 0.8, 2000
    rng = np.random.default_rng(0)
    mu = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=n)
    logvar = np.zeros_like(mu)
    z = mu + rng.standard_normal(mu.shape)
    tc_exact = -0.5 * math.log(1 - (r / 2) ** 2)
    mi_exact = 0.5 * math.log(4 - r**2)
    assert total_correlation(z, mu, logvar) == pytest.approx(tc_exact, abs=0.04)
    assert mutual_info(z, mu, logvar) == pytest.approx(mi_exact, abs=0.04)
    # and independence gives no total correlation
    mu_ind = rng.standard_normal((n, 2))
    z_ind = mu_ind + rng.standard_normal(mu_ind.shape)
    assert abs(total_correlation(z_ind, mu_ind, np.zeros_like(mu_ind))) < 0.03


def test_mi_is_at_most_log_n_for_deterministic_codes():
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((500, 4)) * 5
    logvar = np.full_like(mu, -12.0)
    z = mu + np.exp(-6.0) * rng.standard_normal(mu.shape)
    assert mutual_info(z, mu, logvar) == pytest.approx(math.log(500), abs=1e-3)


def test_aggregate_posterior_memory_chunks_agree():
    from vaesweep.metrics import aggregate_posterior_terms

    rng = np.random.default_rng(1)
    mu, logvar = rng.standard_normal((100, 3)), rng.standard_normal((100, 3)) * 0.3
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)
    a = aggregate_posterior_terms(z, mu, logvar, 1000, chunk_size=7)
    b = aggregate_posterior_terms(z, mu, logvar, 1000, chunk_size=1000)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)


def test_tc_rejects_a_dataset_smaller_than_the_sample():
    with pytest.raises(ValueError, match="dataset_size"):
        total_correlation(np.zeros((10, 2)), np.zeros((10, 2)), np.zeros((10, 2)), dataset_size=5)


# -- reconstruction --------------------------------------------------------------------------
def test_mse_and_psnr():
    x = torch.zeros(2, 1, 4, 4)
    x_hat = x.clone()
    x_hat[0] += 0.1  # mse 0.01 -> 20 dB
    x_hat[1] += 0.01  # mse 1e-4 -> 40 dB
    assert mse(x_hat, x) == pytest.approx((0.01 + 1e-4) / 2)
    torch.testing.assert_close(mse(x_hat, x, reduction="none"), torch.tensor([0.01, 1e-4], dtype=torch.float64))
    assert psnr(x_hat, x) == pytest.approx(30.0)
    assert psnr(x, x) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="shape"):
        mse(x_hat[:, :, :2], x)


def test_rate_distortion_of_a_known_model():
    # encoder N(x, 1) in 2-d, likelihood log N(x; z, 1): D = 0.5 |x - z|^2 + log(2 pi), R closed form
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    enc = lambda x: (x, torch.zeros_like(x))  # noqa: E731
    ll = lambda x, z: torch.distributions.Normal(z, 1.0).log_prob(x).sum(-1)  # noqa: E731
    distortion, r = rate_distortion(enc, ll, x, seed=0)
    torch.testing.assert_close(r, 0.5 * (x**2).sum(-1))
    assert distortion.shape == (2,) and (distortion > math.log(2 * math.pi) - 1e-9).all()


# -- probes ----------------------------------------------------------------------------------
def test_probes_read_labels_from_informative_codes_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=1500)
    good = np.stack([labels + 0.1 * rng.standard_normal(1500), rng.standard_normal(1500)], 1)
    bad = rng.standard_normal((1500, 2))
    for probe in (linear_probe_acc, knn_acc):
        assert probe(good[:1000], labels[:1000], good[1000:], labels[1000:]) > 0.95
        assert probe(bad[:1000], labels[:1000], bad[1000:], labels[1000:]) < 0.35
    # deterministic
    assert linear_probe_acc(good[:1000], labels[:1000], good[1000:], labels[1000:]) == \
        linear_probe_acc(good[:1000], labels[:1000], good[1000:], labels[1000:])


def test_recon_variance_ratio_is_zero_for_one_image_for_all_and_one_for_perfect_recall():
    """"All reconstructions look the same" is 0; reconstructions that vary as the data do
    are 1; a reconstruction halfway to the mean image is 1/4 (variance scales with the square);
    the value does not depend on how the images are split into batches."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 6, 6, generator=g)
    mean_image = x.mean(0, keepdim=True).expand_as(x)
    assert recon_variance_ratio(mean_image, x) == pytest.approx(0.0, abs=1e-12)
    assert recon_variance_ratio(x, x) == pytest.approx(1.0)
    assert recon_variance_ratio((x + mean_image) / 2, x) == pytest.approx(0.25)
    acc = ReconVariance()
    noisy = x + 0.1 * torch.randn(x.shape, generator=g)
    for i in range(0, 64, 10):
        acc.update(noisy[i:i + 10], x[i:i + 10])
    assert acc.value() == pytest.approx(recon_variance_ratio(noisy, x))
    with pytest.raises(ValueError, match="two images"):
        ReconVariance().value()
    with pytest.raises(ValueError, match="do not vary"):
        recon_variance_ratio(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="shape"):
        recon_variance_ratio(x[:, :, :3], x)
