"""The fast DCI estimator against disentanglement_lib's reference (one scikit-learn
``GradientBoostingClassifier()`` per factor), on the same inputs.

Stated tolerances:
* with at least as many bins as distinct values (exact mode), the boosted trees are
  scikit-learn's: decision functions on the training points equal to 1e-9; importances equal
  until splits of equal gain appear (scikit-learn breaks those ties by a random feature order,
  so it disagrees with itself across random_state too), then within 0.02; predictions on new
  points agree on >= 98%; DCI scores within 0.005;
* with the default 255 bins on 1,000 continuous points, DCI disentanglement and completeness
  within 0.05 and informativeness within 0.02 of the reference.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from test_metrics_toys import ToyData, codes_and_factors, mixed, noise, noisy_perfect
from vaesweep.metrics import dci
from vaesweep.metrics.disentanglement.gbt import BinnedGradientBoosting, bin_thresholds

EXACT = 10**6  # more bins than points: every distinct value is a candidate split


def _toy_xy(k: int, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = np.stack([y + 2.0 * rng.standard_normal(n), rng.standard_normal(n),
                  0.5 * y + rng.standard_normal(n), rng.integers(0, 4, n).astype(float)], axis=1)
    return x, y


@pytest.mark.parametrize("k", [2, 3, 5])
def test_exact_mode_reproduces_sklearn_trees(k):
    x, y = _toy_xy(k)
    x_test, _ = _toy_xy(k, seed=1)
    ref = GradientBoostingClassifier(random_state=0).fit(x, y)
    fast = BinnedGradientBoosting(max_bins=EXACT).fit(x, y)
    # on the training points: the same function
    np.testing.assert_allclose(fast.decision_function(x), ref.decision_function(x).reshape(len(x), -1),
                               atol=1e-9, rtol=0)
    np.testing.assert_array_equal(fast.predict(x), ref.predict(x))
    assert fast.train_accuracy_ == np.mean(ref.predict(x) == y)
    # elsewhere they differ only where a tie in a tiny node was broken another way, as much
    # as the reference differs from itself with another random_state (<= 2% of predictions)
    other = GradientBoostingClassifier(random_state=1).fit(x, y)
    assert np.mean(fast.predict(x_test) == ref.predict(x_test)) >= 0.98
    assert np.mean(other.predict(x_test) == ref.predict(x_test)) < 1.0 or k == 2
    # importances: equal up to those ties
    np.testing.assert_allclose(fast.feature_importances_, ref.feature_importances_, atol=0.02)


def test_exact_mode_importances_equal_before_ties_appear():
    # continuous features and nodes too big for ties: the importances are the same numbers
    x, y = _toy_xy(3, n=2000)
    ref = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(x[:, :3], y)
    fast = BinnedGradientBoosting(n_estimators=5, max_bins=EXACT).fit(x[:, :3], y)
    np.testing.assert_allclose(fast.feature_importances_, ref.feature_importances_, atol=1e-12)
    np.testing.assert_allclose(fast.decision_function(x[:, :3]), ref.decision_function(x[:, :3]), atol=1e-9)


def test_a_wrong_algorithm_would_be_caught():
    # the same trees with another learning rate are far from the reference
    x, y = _toy_xy(3)
    ref = GradientBoostingClassifier(random_state=0).fit(x, y)
    other = BinnedGradientBoosting(max_bins=EXACT, learning_rate=0.2).fit(x, y)
    assert np.abs(other.decision_function(x) - ref.decision_function(x)).max() > 0.1


def test_single_class_and_constant_features():
    x = np.zeros((20, 2))
    model = BinnedGradientBoosting().fit(x, np.ones(20, dtype=int))
    assert model.predict(x).tolist() == [1] * 20 and model.feature_importances_.tolist() == [0.0, 0.0]
    y = np.arange(20) % 2
    model = BinnedGradientBoosting().fit(x, y)  # nothing to split on
    assert model.feature_importances_.tolist() == [0.0, 0.0]


def test_bin_thresholds():
    x = np.array([0.0, 0.0, 1.0, 2.0, 2.0, 5.0])
    np.testing.assert_allclose(bin_thresholds(x, 255), [0.5, 1.5, 3.5])  # sklearn's candidates
    # many values: at most max_bins - 1 thresholds, and the widest gaps are kept
    rng = np.random.default_rng(0)
    clusters = np.concatenate([rng.normal(0, 0.01, 500), rng.normal(1, 0.01, 500)])
    t = bin_thresholds(clusters, 16)
    assert len(t) <= 15
    assert ((t > clusters[:500].max()) & (t < clusters[500:].min())).any()


DATA = ToyData((2, 3, 5))
REPRESENTATIONS = {"perfect": noisy_perfect(DATA, 0.05), "mixed": mixed(DATA, 0.05),
                   "mixed_noisy": mixed(DATA, 0.3), "noise": noise(DATA)}


@pytest.fixture(scope="module")
def reference():
    out = {}
    for name, represent in REPRESENTATIONS.items():
        c, f = codes_and_factors(DATA, represent, 1500, 0)
        out[name] = (c, f, dci(c[:1000], f[:1000], c[1000:], f[1000:], estimator="sklearn"))
    return out


@pytest.mark.parametrize("name", list(REPRESENTATIONS))
def test_binned_dci_agrees_with_reference(reference, name):
    c, f, ref = reference[name]
    fast = dci(c[:1000], f[:1000], c[1000:], f[1000:])
    exact = dci(c[:1000], f[:1000], c[1000:], f[1000:], max_bins=EXACT)
    for key, tol in (("disentanglement", 0.05), ("completeness", 0.05), ("informativeness", 0.02)):
        assert fast[key] == pytest.approx(ref[key], abs=tol), (key, fast, ref)
        assert exact[key] == pytest.approx(ref[key], abs=0.005), (key, exact, ref)


def test_dci_threads_do_not_change_the_result():
    c, f = codes_and_factors(DATA, REPRESENTATIONS["mixed"], 600, 1)
    assert dci(c[:400], f[:400], c[400:], f[400:], n_jobs=1) == dci(c[:400], f[:400], c[400:], f[400:], n_jobs=2)
