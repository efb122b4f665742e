"""Mutual Information Gap (Chen et al. 2018), as disentanglement_lib computes it.

Each latent is discretised into ``num_bins`` equal-width bins over its range (the
``histogram_discretizer`` with 20 bins of Locatello et al. 2019); the discrete mutual
information of every (latent, factor) pair is scikit-learn's ``mutual_info_score`` (nats);
MIG is the mean over factors of the gap between the two most informative latents, divided by
the factor's entropy. Factors with zero entropy (a constant column) are left out.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import mutual_info_score

from vaesweep.metrics._arrays import check_codes_factors


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """(points, latents) int bin indices 1..num_bins, one equal-width histogram per latent."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], num_bins)[1][:-1]
        out[:, i] = np.digitize(codes[:, i], edges)
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(latents, factors) mutual information in nats between discretised codes and factors."""
    m = np.zeros((discrete_codes.shape[1], factors.shape[1]))
    for i in range(discrete_codes.shape[1]):
        for j in range(factors.shape[1]):
            m[i, j] = mutual_info_score(factors[:, j], discrete_codes[:, i])
    return m


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """(factors,) entropy in nats of each factor column."""
    return np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])


def mig(codes: Any, factors: Any, num_bins: int = 20) -> float:
    """Mutual Information Gap of ``codes`` (points, latents) against factor classes
    (points, factors); 0 (nothing captured) to 1 (each factor in exactly one latent)."""
    codes, factors = check_codes_factors(codes, factors)
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    entropy = discrete_entropy(factors)
    keep = entropy > 0
    if not keep.any():
        raise ValueError("every factor is constant: MIG is undefined")
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(m.shape[1])
    return float(np.mean((top[0] - second)[keep] / entropy[keep]))
