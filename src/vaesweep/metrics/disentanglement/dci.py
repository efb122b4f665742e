"""Disentanglement, Completeness and Informativeness (Eastwood & Williams 2018), as
disentanglement_lib computes them: one gradient-boosted classifier per factor gives an
importance matrix R (latents, factors);

* disentanglement = sum_i rho_i (1 - H_F(P_i.)), P_ij = R_ij / sum_j R_ij, rho_i = sum_j R_ij / sum R
* completeness    = sum_j rho_j (1 - H_L(P_.j)), entropies in base F (factors) and L (latents)
* informativeness = mean over factors of the classifier's test accuracy.

``estimator="binned"`` (default) fits :class:`~vaesweep.metrics.disentanglement.gbt.BinnedGradientBoosting`,
scikit-learn's ``GradientBoostingClassifier`` algorithm on features cut into at most
``max_bins`` bins: about 33 s of CPU instead of six to seven minutes for dSprites' five
factors on 10,000 points. ``estimator="sklearn"`` fits ``GradientBoostingClassifier()`` as
disentanglement_lib does. How far apart they are (``tests/test_metrics_dci.py``): with as many
bins as distinct values, the same trees up to ties (DCI within 0.005); with 255 bins,
disentanglement and completeness within 0.05 and informativeness within 0.02 on 1,000 points
-- on the 10,000-point dSprites-sized input of ``benchmarks/bench_metrics.py`` the gaps were
0.019, 0.013 and 0.003.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.stats

from vaesweep.metrics._arrays import check_codes_factors
from vaesweep.metrics.disentanglement.gbt import BinnedGradientBoosting

ESTIMATORS = ("binned", "sklearn")


def _fit_one(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, estimator: str,
             max_bins: int, seed: int) -> tuple[np.ndarray, float, float]:
    if estimator == "sklearn":
        from sklearn.ensemble import GradientBoostingClassifier

        if len(np.unique(y)) < 2:
            return np.zeros(x.shape[1]), 1.0, float(np.mean(y_test == y[0]))
        model = GradientBoostingClassifier(random_state=seed).fit(x, y)
        train = float(np.mean(model.predict(x) == y))
    else:
        model = BinnedGradientBoosting(max_bins=max_bins).fit(x, y)
        train = model.train_accuracy_
    test = float(np.mean(model.predict(x_test) == y_test))
    return np.abs(model.feature_importances_), train, test


def importance_matrix(codes: Any, factors: Any, codes_test: Any, factors_test: Any, *,
                      estimator: str = "binned", max_bins: int = 255, seed: int = 0,
                      n_jobs: int | None = None) -> tuple[np.ndarray, float, float]:
    """(importance (latents, factors), mean train accuracy, mean test accuracy).

    ``n_jobs`` threads fit the factors' classifiers side by side (default: the CPU count, at
    most 2 -- the sparse products and array arithmetic release the GIL).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    codes, factors = check_codes_factors(codes, factors)
    codes_test, factors_test = check_codes_factors(codes_test, factors_test, "codes_test")
    num_factors = factors.shape[1]
    n_jobs = n_jobs or min(2, os.cpu_count() or 1)
    # biggest first, so two threads finish together
    order = sorted(range(num_factors), key=lambda j: -len(np.unique(factors[:, j])))
    args = [(codes, factors[:, j], codes_test, factors_test[:, j], estimator, max_bins, seed) for j in order]
    if n_jobs > 1 and num_factors > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            results = list(pool.map(lambda a: _fit_one(*a), args))
    else:
        results = [_fit_one(*a) for a in args]
    importance = np.zeros((codes.shape[1], num_factors))
    train, test = np.zeros(num_factors), np.zeros(num_factors)
    for j, (imp, tr, te) in zip(order, results):
        importance[:, j], train[j], test[j] = imp, tr, te
    return importance, float(train.mean()), float(test.mean())


def disentanglement_per_code(importance: np.ndarray) -> np.ndarray:
    # base F entropy of each latent's importance over factors; 1e-11 as disentanglement_lib
    return 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])


def disentanglement_score(importance: np.ndarray) -> float:
    if importance.shape[1] < 2:
        return 1.0  # one factor: every latent is trivially about it
    per_code = disentanglement_per_code(importance)
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    code_importance = importance.sum(axis=1) / importance.sum()
    return float(np.sum(per_code * code_importance))


def completeness_per_factor(importance: np.ndarray) -> np.ndarray:
    return 1.0 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])


def completeness_score(importance: np.ndarray) -> float:
    if importance.shape[0] < 2:
        return 1.0
    per_factor = completeness_per_factor(importance)
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    factor_importance = importance.sum(axis=0) / importance.sum()
    return float(np.sum(per_factor * factor_importance))


def dci(codes: Any, factors: Any, codes_test: Any, factors_test: Any, *, estimator: str = "binned",
        max_bins: int = 255, seed: int = 0, n_jobs: int | None = None) -> dict[str, float]:
    """DCI scores: ``{"disentanglement", "completeness", "informativeness"}``, each in [0, 1];
    informativeness is the mean test accuracy (disentanglement_lib's ``informativeness_test``)."""
    importance, _, test_acc = importance_matrix(codes, factors, codes_test, factors_test, estimator=estimator,
                                                max_bins=max_bins, seed=seed, n_jobs=n_jobs)
    return {
        "disentanglement": disentanglement_score(importance),
        "completeness": completeness_score(importance),
        "informativeness": test_acc,
    }
