"""The latent side of the trade-off: KL per dimension, active units, posterior collapse, and
the total correlation and mutual information of the aggregate posterior.

Posteriors are diagonal Gaussians q(z|x) = N(mu, diag(exp(logvar))); the prior is N(0, I).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

# kl_per_dim is part of this module's API (vaesweep.metrics re-exports it); defined in the contract
from vaesweep.contract import ACTIVE_THRESHOLD, COLLAPSE_THRESHOLD, kl_per_dim  # noqa: F401
from vaesweep.metrics._arrays import to_numpy

_LOG_2PI = math.log(2.0 * math.pi)


def rate(mu: Any, logvar: Any) -> Any:
    """R(x) = KL(q(z|x) || p(z)) summed over the latent dimensions, (B,), nats per example."""
    return kl_per_dim(mu, logvar).sum(-1)


def active_mask(mu: Any, threshold: float = ACTIVE_THRESHOLD) -> np.ndarray:
    """(M,) bool: dimension u is active when the variance over data points of the posterior
    mean, Cov_x(E_q[z_u|x]), exceeds ``threshold`` (Burda et al. 2016). ``mu`` is
    (points, M); the variance is the population one (ddof=0)."""
    mu = to_numpy(mu)
    if mu.ndim != 2 or len(mu) < 2:
        raise ValueError(f"mu must be (points >= 2, latents), got shape {mu.shape}")
    return np.var(mu, axis=0) > threshold


def active_units(mu: Any, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Number of active latent dimensions (Burda et al. 2016); see :func:`active_mask`."""
    return int(active_mask(mu, threshold).sum())


def collapsed_mask(kl_per_dim_mean: Any, threshold: float = COLLAPSE_THRESHOLD) -> np.ndarray:
    """(M,) bool: dimensions whose KL, averaged over data points, is below ``threshold`` nats."""
    return to_numpy(kl_per_dim_mean).reshape(-1) < threshold


def posterior_collapse(kl_per_dim_mean: Any, threshold: float = COLLAPSE_THRESHOLD) -> bool:
    """Posterior collapse flag. The rule: True when *every* latent dimension's KL averaged over
    the data is below ``threshold`` nats (default 0.01) -- q(z|x) is the prior for all x and
    the decoder ignores z. Partial collapse is :func:`collapsed_mask`."""
    return bool(collapsed_mask(kl_per_dim_mean, threshold).all())


# -- aggregate posterior ---------------------------------------------------------------------
def _log_weights(m: int, n: int, estimator: str) -> tuple[float, float]:
    """(log weight of a point's own posterior, log weight of each other point's)."""
    if estimator == "mws":  # Chen et al. 2018, minibatch weighted sampling: 1/(N M) for all
        w = -math.log(n * m)
        return w, w
    if estimator == "mss":
        if m == 1:
            return -math.log(n), float("-inf")
        return -math.log(n), math.log(n - 1) - math.log(n * (m - 1))
    raise ValueError(f"estimator must be 'mss' or 'mws', got {estimator!r}")


def aggregate_posterior_terms(z: Any, mu: Any, logvar: Any, dataset_size: int | None = None,
                              estimator: str = "mss", chunk_size: int = 64) -> dict[str, np.ndarray]:
    """Per-point estimates, (P,) float64 each: ``log_qz_x`` = log q(z_i|x_i), ``log_qz`` =
    log q(z_i) and ``log_prod_qzd`` = sum_d log q(z_id), where q(z) = (1/N) sum_n q(z|x_n) is
    the aggregate posterior over a dataset of N = ``dataset_size`` points (default P: the
    points given are the dataset) and z_i ~ q(z|x_i).

    ``estimator="mss"`` (default): stratified -- a point's own posterior has weight 1/N and each
    of the other P-1 stands for (N-1)/(P-1) dataset points, weight (N-1)/(N(P-1)); exact when
    P = N. ``"mws"``: Chen et al. 2018's minibatch weighted sampling, weight 1/(N P) for all,
    which overstates MI by log N and TC by (M-1) log N when P = N.
    Memory is bounded by ``chunk_size`` rows of (M, P) log-densities at a time.
    """
    z, mu, logvar = (to_numpy(a) for a in (z, mu, logvar))
    if not (z.shape == mu.shape == logvar.shape) or z.ndim != 2:
        raise ValueError(f"z, mu and logvar must share one (points, latents) shape, got "
                         f"{z.shape}, {mu.shape}, {logvar.shape}")
    p = len(z)
    n = p if dataset_size is None else int(dataset_size)
    if n < p:
        raise ValueError(f"dataset_size ({n}) must be at least the number of points ({p})")
    w_self, w_other = _log_weights(p, n, estimator)
    inv_var = np.exp(-logvar)  # (P, M)
    log_qz_x = -0.5 * ((z - mu) ** 2 * inv_var + logvar + _LOG_2PI).sum(1)
    log_qz = np.empty(p)
    log_prod = np.empty(p)
    mu_t, inv_var_t, const_t = mu.T.copy(), inv_var.T.copy(), (logvar + _LOG_2PI).T.copy()  # (M, P)
    for start in range(0, p, chunk_size):
        stop = min(start + chunk_size, p)
        logd = -0.5 * ((z[start:stop, :, None] - mu_t) ** 2 * inv_var_t + const_t)  # (c, M, P)
        weights = np.full((stop - start, p), w_other)
        rows = np.arange(stop - start)
        weights[rows, rows + start] = w_self
        log_qz[start:stop] = logsumexp(logd.sum(1) + weights, axis=1)
        log_prod[start:stop] = logsumexp(logd + weights[:, None, :], axis=2).sum(1)
    return {"log_qz_x": log_qz_x, "log_qz": log_qz, "log_prod_qzd": log_prod}


def total_correlation(z: Any, mu: Any, logvar: Any, dataset_size: int | None = None,
                      estimator: str = "mss") -> float:
    """TC = KL(q(z) || prod_d q(z_d)) = E_q(z)[log q(z) - sum_d log q(z_d)], nats (Chen et al.
    2018, eq. 2), estimated on samples ``z`` (P, M) from the posteriors (``mu``, ``logvar``) of
    P data points; see :func:`aggregate_posterior_terms` for the estimator."""
    t = aggregate_posterior_terms(z, mu, logvar, dataset_size, estimator)
    return float((t["log_qz"] - t["log_prod_qzd"]).mean())


def mutual_info(z: Any, mu: Any, logvar: Any, dataset_size: int | None = None,
                estimator: str = "mss") -> float:
    """Index-code mutual information I(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], nats
    (Chen et al. 2018, eq. 2; Hoffman & Johnson 2016); at most log N for N data points."""
    t = aggregate_posterior_terms(z, mu, logvar, dataset_size, estimator)
    return float((t["log_qz_x"] - t["log_qz"]).mean())
