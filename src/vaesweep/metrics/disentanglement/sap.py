"""SAP score (Kumar et al. 2018, section 3), as disentanglement_lib computes it for discrete
factors: for every (latent, factor) pair a ``LinearSVC(C=0.01, class_weight="balanced")`` is
trained on the single latent and scored by its test accuracy; SAP is the mean over factors of
the gap between the two best latents.

By default (``standardize=False``) this is the reference exactly, on the raw latents. With a
fixed C the reference score depends on the scale of each latent: shrinking the codes makes
the regularised SVMs give up (noisy one-to-one codes of 10 toy factors: 0.571 at scale 1,
0.324 at scale 0.2). ``standardize=True`` z-scores each latent with its training mean and
standard deviation first, which makes SAP invariant to rescaling latents like the other
scores (0.686 at either scale) but is not disentanglement_lib's number
(``metrics.sap_standardize``, logged with the run's params).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from vaesweep.metrics._arrays import check_codes_factors


def sap_score_matrix(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray,
                     factors_test: np.ndarray, *, standardize: bool = False) -> np.ndarray:
    """(latents, factors) test accuracy of a linear SVM predicting each factor from each latent."""
    if standardize:
        mean, std = codes.mean(axis=0), codes.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        codes, codes_test = (codes - mean) / std, (codes_test - mean) / std
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for j in range(factors.shape[1]):
        if len(np.unique(factors[:, j])) < 2:
            scores[:, j] = np.mean(factors_test[:, j] == factors[0, j])
            continue
        for i in range(codes.shape[1]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LinearSVC(C=0.01, class_weight="balanced").fit(codes[:, i:i + 1], factors[:, j])
            scores[i, j] = np.mean(clf.predict(codes_test[:, i:i + 1]) == factors_test[:, j])
    return scores


def sap(codes: Any, factors: Any, codes_test: Any, factors_test: Any, *, standardize: bool = False) -> float:
    """SAP score: mean over factors of (best - second best) single-latent SVM test accuracy."""
    codes, factors = check_codes_factors(codes, factors)
    codes_test, factors_test = check_codes_factors(codes_test, factors_test, "codes_test")
    scores = sap_score_matrix(codes, factors, codes_test, factors_test, standardize=standardize)
    if scores.shape[0] < 2:
        return float(np.mean(scores[0]))
    top = np.sort(scores, axis=0)
    return float(np.mean(top[-1] - top[-2]))
