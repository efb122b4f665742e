"""The heads beyond the generic checks of test_loss.py: scopes, learned and batch-set σ, the
continuous Bernoulli normaliser and mean, and the config errors of each head."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vaesweep.errors import ConfigError
from vaesweep.likelihood import HEADS, build_head
from vaesweep.likelihood.continuous_bernoulli import cb_log_normaliser, cb_mean
from vaesweep.likelihood.gaussian_learned import softclip

SHAPE = (3, 4, 5)  # three channels, so channel and pixel scopes are told apart


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- gaussian_learned ---------------------------------------------------------------------
@pytest.mark.parametrize("scope,n_params,channels", [("scalar", 1, 3), ("channel", 3, 3), ("pixel", 0, 6)])
def test_learned_sigma_scopes(scope, n_params, channels):
    head = build_head({"name": "gaussian_learned", "scope": scope, "sigma_init": 0.3}, SHAPE)
    assert sum(p.numel() for p in head.parameters()) == n_params
    assert head.decoder_channels() == channels
    out, x = _randn(2, channels, 4, 5), _rand(2, *SHAPE, seed=1)
    if scope == "pixel":
        # the decoder's first C channels are μ, the next C the raw log σ
        mu, sigma = out[:, :3], softclip(out[:, 3:], -6.0).exp()
    else:
        mu, sigma = out, torch.full((), 0.3)
    ref = -torch.distributions.Normal(mu, sigma.expand_as(mu)).log_prob(x)
    torch.testing.assert_close(head.nll(out, x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.mean(out), mu)
    torch.testing.assert_close(head.sigma().mean(), sigma.mean(), rtol=1e-5, atol=1e-6)


def test_learned_sigma_gets_gradients_and_moves_towards_the_error():
    head = build_head({"name": "gaussian_learned", "scope": "channel"}, SHAPE)
    x = torch.zeros(4, *SHAPE)
    out = x.clone()
    out[:, 0] += 0.1  # channel 0 off by 0.1, the others exact
    head.nll(out, x).sum().backward()
    g = head.raw_log_sigma.grad.flatten()
    # σ = 1 is too large for every channel: each gradient asks for a smaller σ
    assert (g > 0).all()
    assert g[0] < g[1]  # the channel with the error wants σ less small


def test_learned_sigma_is_soft_floored():
    head = build_head({"name": "gaussian_learned", "scope": "pixel", "min_log_sigma": -4.0}, (1, 2, 2))
    out = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), -1e4)], 1)
    nll = head.nll(out, torch.zeros(1, 1, 2, 2))
    assert torch.isfinite(nll).all()
    assert float(head.sigma()) == pytest.approx(math.exp(-4.0), rel=1e-6)


def test_learned_sigma_implied_sigma_only_for_one_sigma():
    scalar = build_head({"name": "gaussian_learned", "sigma_init": 0.5}, SHAPE)
    assert scalar.implied_sigma(4.0) == pytest.approx(1.0, rel=1e-6)
    assert build_head({"name": "gaussian_learned", "scope": "channel"}, SHAPE).implied_sigma(4.0) is None


# -- gaussian_optimal (σ-VAE) -------------------------------------------------------------
def test_optimal_sigma_is_the_root_batch_mse():
    head = build_head({"name": "gaussian_optimal", "min_log_sigma": -30.0}, SHAPE)
    out, x = _randn(5, *SHAPE), _rand(5, *SHAPE, seed=1)
    nll = head.nll(out, x)
    rmse = float((x - out).pow(2).mean().sqrt())
    assert float(head.sigma()) == pytest.approx(rmse, rel=1e-6)
    ref = -torch.distributions.Normal(out, rmse).log_prob(x)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert head.implied_sigma(4.0) == pytest.approx(2 * rmse, rel=1e-6)


def test_optimal_sigma_default_softclip_and_perfect_fit():
    head = build_head({"name": "gaussian_optimal"}, SHAPE)
    out, x = _randn(5, *SHAPE), _rand(5, *SHAPE, seed=1)
    head.nll(out, x)
    log_rmse = 0.5 * math.log(float((x - out).pow(2).mean()))
    # Rybkin et al.'s softclip: −6 + softplus(log σ + 6), close to √MSE far above the floor
    expected = -6 + math.log1p(math.exp(log_rmse + 6))
    assert math.log(float(head.sigma())) == pytest.approx(expected, abs=1e-6)
    assert float(head.sigma()) == pytest.approx(math.exp(log_rmse), rel=1e-2)
    out = x.clone().requires_grad_()
    nll = head.nll(out, x)  # mse = 0
    assert torch.isfinite(nll).all() and float(head.sigma()) == pytest.approx(math.exp(-6), rel=1e-3)
    (g,) = torch.autograd.grad(nll.sum(), out)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("detach", [False, True])
def test_optimal_sigma_detach_stops_the_gradient_through_sigma(detach):
    head = build_head({"name": "gaussian_optimal", "detach_sigma": detach, "min_log_sigma": -30.0},
                      (1, 1, 3))
    out = torch.tensor([[[[0.5, -0.2, 0.1]]]], requires_grad=True)
    x = torch.zeros(1, 1, 1, 3)
    (g,) = torch.autograd.grad(head.nll(out, x)[..., 0].sum(), out)
    # element 0's NLL depends on the other elements' outputs only through σ
    assert (g[..., 1:].abs().sum() == 0) == detach
    # σ* is a stationary point of the batch NLL, so the total gradient is the same either way
    # (envelope theorem): (out − x)/MSE
    (g_all,) = torch.autograd.grad(head.nll(out, x).sum(), out)
    torch.testing.assert_close(g_all, (out - x).detach() / (out - x).detach().pow(2).mean())


# -- continuous Bernoulli -----------------------------------------------------------------
def _sigma_vae(seed: int = 0):
    """A small σ-VAE (mlp, 8x8 images) and 40 grey images with a batch(idx) like an ImageSet."""
    from types import SimpleNamespace

    from vaesweep.module import VAEModule

    torch.manual_seed(seed)
    m = VAEModule({"model": {"name": "mlp", "latent_dim": 3, "hidden": [16]},
                   "likelihood": {"name": "gaussian_optimal"}, "kl": {"name": "beta"}}, (1, 8, 8))
    images = _rand(40, 1, 8, 8, seed=seed)
    return m.eval(), SimpleNamespace(batch=lambda idx: images[torch.as_tensor(idx)]), images


def test_optimal_sigma_fixed_for_evaluation_makes_examples_independent_of_their_batch():
    """Issue 12.8: with σ from each evaluated batch, an example's NLL depends on the others in
    its batch (and, inside IWAE, on the other samples of its k·B chunk)."""
    from vaesweep.likelihood.gaussian_optimal import fix_sigma_for_evaluation
    from vaesweep.metrics.iwae import iwae_nll

    m, data, x = _sigma_vae()
    with torch.no_grad():
        z = m.encode(x)[0]
        alone = m.log_likelihood(x[:1], z[:1])
        assert not torch.allclose(alone, m.log_likelihood(x, z)[:1])  # the batch σ: it moves
    sigma = fix_sigma_for_evaluation(m, data, np.arange(30), seed=0)
    # σ² is the MSE of the 30 training images at one posterior sample each
    with torch.no_grad():
        mu, logvar = m.encode(x[:30])
        gen = torch.Generator().manual_seed(0)
        # the same images in the same (seeded) order as the function's
        order = np.random.default_rng(0).permutation(np.arange(30))
        mu, logvar = m.encode(x[order])
        out = m.decode(mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp())
        expected = softclip(0.5 * torch.log((x[order] - out).double().pow(2).mean()), -6.0)
    assert math.log(sigma) == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():
        assert torch.allclose(m.log_likelihood(x[:1], z[:1]), m.log_likelihood(x, z)[:1])
    whole = iwae_nll(m.encode, m.log_likelihood, x[30:], k=16, seed=3, max_samples=4096)
    chunked = iwae_nll(m.encode, m.log_likelihood, x[30:], k=16, seed=3, max_samples=10)
    assert torch.allclose(whole, chunked)
    assert float(m.head.sigma()) == pytest.approx(sigma)
    # fixing twice keeps the first σ; fix_sigma(None) returns to the batch σ
    assert fix_sigma_for_evaluation(m, data, np.arange(30, 40)) == pytest.approx(sigma)
    m.head.fix_sigma(None)
    assert not m.head.is_fixed


def test_evaluate_model_fixes_the_sigma_first_from_the_training_images():
    from vaesweep.likelihood.gaussian_optimal import fix_sigma_for_evaluation
    from vaesweep.metrics import evaluate_model

    cfg = {"enabled": ["iwae_nll", "mse"], "iwae_points": 10, "iwae_k": 8}
    m, data, _ = _sigma_vae()
    evaluate_model(m, data, np.arange(30, 40), cfg, seed=0, train_idx=np.arange(30))
    ref, data, _ = _sigma_vae()
    assert m.head.is_fixed
    assert float(m.head.sigma()) == pytest.approx(fix_sigma_for_evaluation(ref, data, np.arange(30)))
    # without training images: the evaluated images as a whole
    m, data, _ = _sigma_vae()
    evaluate_model(m, data, np.arange(30, 40), cfg, seed=0)
    ref, data, _ = _sigma_vae()
    assert float(m.head.sigma()) == pytest.approx(
        fix_sigma_for_evaluation(ref, data, np.arange(30, 40)))


def test_other_heads_are_left_alone_by_the_evaluation_sigma():
    from vaesweep.likelihood.gaussian_optimal import fix_sigma_for_evaluation
    from vaesweep.module import VAEModule

    m = VAEModule({"model": {"name": "mlp", "latent_dim": 3, "hidden": [16]},
                   "likelihood": {"name": "bernoulli"}, "kl": {"name": "beta"}}, (1, 8, 8))
    assert fix_sigma_for_evaluation(m, None, np.arange(3)) is None


def _ref_log_c(lam: np.ndarray) -> np.ndarray:
    """float64 references: the closed form log(2 artanh(1−2λ)/(1−2λ)) away from 1/2, and its
    Taylor series in d = λ − 1/2 near it: C = 2·Σ_k (2d)^(2k)/(2k+1)."""
    d = lam - 0.5
    far = np.abs(d) > 1e-2
    with np.errstate(divide="ignore", invalid="ignore"):
        closed = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    t = (2 * d) ** 2
    series = np.log(2.0) + np.log1p(sum(t ** k / (2 * k + 1) for k in range(1, 10)))
    return np.where(far, closed, series)


def _ref_mean(lam: np.ndarray) -> np.ndarray:
    """float64: λ/(2λ−1) + 1/(2 artanh(1−2λ)) away from 1/2; near it the series in d of the
    same expression, 1/2 + (2d)/6·(1 + ...) via the Langevin function of u = artanh(2d)."""
    d = lam - 0.5
    far = np.abs(d) > 1e-2
    with np.errstate(divide="ignore", invalid="ignore"):
        closed = lam / (2 * lam - 1) + 1 / (2 * np.arctanh(1 - 2 * lam))
    u = np.arctanh(2 * d)
    series = 0.5 + 0.5 * (u / 3 - u ** 3 / 45 + 2 * u ** 5 / 945 - u ** 7 / 4725)
    return np.where(far, closed, series)


LAMBDAS = np.concatenate([
    [1e-6, 1e-5, 1e-3, 0.1, 0.3, 0.45, 0.49, 0.499, 0.4999, 0.49999, 0.5, 0.50001, 0.5001, 0.501,
     0.51, 0.55, 0.7, 0.9, 1 - 1e-3, 1 - 1e-5, 1 - 1e-6],
    np.linspace(1e-6, 1 - 1e-6, 501), 0.5 + np.linspace(-1e-4, 1e-4, 41)])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_cb_log_normaliser_is_finite_and_accurate(dtype, tol):
    lam = LAMBDAS
    logits = torch.tensor(np.log(lam) - np.log1p(-lam), dtype=dtype)
    got = cb_log_normaliser(logits).double().numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _ref_log_c(lam), rtol=tol, atol=tol)
    # and the series and the closed form agree where both are valid
    mid = (np.abs(lam - 0.5) > 2e-3) & (np.abs(lam - 0.5) < 1e-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        closed = np.log(2 * np.arctanh(1 - 2 * lam[mid]) / (1 - 2 * lam[mid]))
    np.testing.assert_allclose(_ref_log_c(lam[mid]), closed, rtol=1e-10)


def test_cb_normaliser_at_one_half_and_its_gradient():
    logits = torch.tensor([0.0, 1e-30, -1e-30, 1e-8, 80.0, -80.0], requires_grad=True)
    c = cb_log_normaliser(logits)
    (g,) = torch.autograd.grad(c.sum() + cb_mean(logits).sum(), logits)
    assert torch.isfinite(g).all()
    c = c.detach()
    assert float(c[0]) == pytest.approx(math.log(2.0), abs=1e-7)
    assert float(c[4]) == pytest.approx(math.log(80.0), rel=1e-6)  # C(λ) → |η| at the ends


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-7), (torch.float64, 1e-12)])
def test_cb_mean_is_accurate_and_not_lambda(dtype, tol):
    lam = LAMBDAS
    logits = torch.tensor(np.log(lam) - np.log1p(-lam), dtype=dtype)
    got = cb_mean(logits).double().numpy()
    np.testing.assert_allclose(got, _ref_mean(lam), rtol=tol, atol=tol)
    head = build_head({"name": "continuous_bernoulli"}, (1, 1, 1))
    m = float(head.mean(torch.tensor(2.0)))
    assert m != pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-2)  # mean ≠ λ


@settings(max_examples=60, deadline=None)
@given(st.floats(-15, 15, allow_nan=False))
def test_cb_nll_equals_torch_in_float64(eta):
    """The same density as torch's, in float64 (torch's window, where it uses a short series,
    narrowed to |λ − 1/2| < 1e-7; and |η| ≤ 15, beyond which torch's probs lose digits)."""
    head = build_head({"name": "continuous_bernoulli"}, (1, 1, 5))
    out = torch.full((1, 1, 1, 5), eta, dtype=torch.float64)
    x = torch.linspace(0, 1, 5, dtype=torch.float64).view(1, 1, 1, 5)
    ref = -torch.distributions.ContinuousBernoulli(logits=out, lims=(0.4999999, 0.5000001)).log_prob(x)
    torch.testing.assert_close(head.nll(out, x), ref, rtol=1e-7, atol=1e-7)


# -- laplace ------------------------------------------------------------------------------
@pytest.mark.parametrize("learn", [False, True])
def test_laplace_scale_fixed_or_learned(learn):
    head = build_head({"name": "laplace", "scale": 0.3, "learn_scale": learn}, SHAPE)
    assert sum(p.numel() for p in head.parameters()) == (1 if learn else 0)
    out, x = _randn(2, *SHAPE), _rand(2, *SHAPE, seed=1)
    ref = -torch.distributions.Laplace(out, 0.3).log_prob(x)
    torch.testing.assert_close(head.nll(out, x), ref, rtol=1e-5, atol=1e-5)
    assert float(head.sigma()) == pytest.approx(0.3, rel=1e-5)
    assert head.implied_sigma(1.0) is None
    if learn:
        head.nll(out, x).sum().backward()
        assert head.raw_log_scale.grad is not None and float(head.raw_log_scale.grad) != 0


# -- every head -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_gives_finite_nll_on_images_in_0_1(name):
    head = build_head({"name": name}, SHAPE)
    out = _randn(4, head.decoder_channels(), 4, 5) * 5
    x = (_rand(4, *SHAPE, seed=2) > 0.5).float()  # binary images: the hardest case
    nll = head.nll(out, x)
    assert nll.shape == x.shape and torch.isfinite(nll).all()
    assert head.mean(out).shape == x.shape


@pytest.mark.parametrize("cfg,key", [
    ({"name": "gaussian_learned", "scope": "row"}, "likelihood.scope"),
    ({"name": "gaussian_learned", "sigma_init": -1.0}, "likelihood.sigma_init"),
    ({"name": "gaussian_learned", "sigma_init": 1e-4}, "likelihood.sigma_init"),  # below the floor
    ({"name": "gaussian_learned", "min_log_sigma": "low"}, "likelihood.min_log_sigma"),
    ({"name": "gaussian_optimal", "detach_sigma": "yes"}, "likelihood.detach_sigma"),
    ({"name": "gaussian_optimal", "min_log_sigma": float("nan")}, "likelihood.min_log_sigma"),
    ({"name": "gaussian_optimal", "sigma": 1.0}, "likelihood.sigma"),
    ({"name": "continuous_bernoulli", "lims": [0.49, 0.51]}, "likelihood.lims"),
    ({"name": "laplace", "scale": 0.0}, "likelihood.scale"),
    ({"name": "laplace", "learn_scale": 1}, "likelihood.learn_scale"),
    ({"name": "laplace", "learn_scale": True, "scale": 1e-4}, "likelihood.scale"),
])
def test_bad_head_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build_head(cfg, SHAPE)
    assert e.value.key == key and key in str(e.value)
