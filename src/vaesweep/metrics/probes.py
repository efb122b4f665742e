"""Structure against labels: how much of a label a representation makes easy to read off.

Both take posterior means (points, latents) and integer labels; both are deterministic.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaesweep.integers import as_integers
from vaesweep.metrics._arrays import to_numpy


def _check(codes: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    codes = to_numpy(codes)
    labels = as_integers(labels, f"{what} labels", "integer class labels").reshape(-1)
    if codes.ndim == 1:
        codes = codes[:, None]
    if len(codes) != len(labels):
        raise ValueError(f"{what}: {len(codes)} codes but {len(labels)} labels")
    return codes, labels


def linear_probe_acc(codes: Any, labels: Any, codes_test: Any, labels_test: Any, *,
                     C: float = 1.0, max_iter: int = 1000, seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic regression (L2, ``C``) on standardised codes."""
    codes, labels = _check(codes, labels, "train")
    codes_test, labels_test = _check(codes_test, labels_test, "test")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(codes, labels)
    return float(model.score(codes_test, labels_test))


def knn_acc(codes: Any, labels: Any, codes_test: Any, labels_test: Any, *, k: int = 5) -> float:
    """Test accuracy of a k-nearest-neighbour classifier (Euclidean, uniform weights) on the codes."""
    codes, labels = _check(codes, labels, "train")
    codes_test, labels_test = _check(codes_test, labels_test, "test")
    model = KNeighborsClassifier(n_neighbors=min(k, len(codes))).fit(codes, labels)
    return float(model.score(codes_test, labels_test))
