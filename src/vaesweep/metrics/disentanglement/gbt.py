"""Gradient boosting as scikit-learn's ``GradientBoostingClassifier`` does it, on binned features.

disentanglement_lib's DCI fits one ``GradientBoostingClassifier()`` per factor (100 stages,
learning rate 0.1, depth-3 regression trees on the negative gradient of the log loss, squared
error splits, Newton-step leaf values, impurity-decrease importances). On dSprites (factors
with 3, 6, 40, 32 and 32 classes, one tree per class and stage) that is 11,300 trees and six
to seven minutes of CPU (10,000 points). :class:`BinnedGradientBoosting` runs the same algorithm with all
the trees of a stage grown together, level by level:

* each feature is cut into at most ``max_bins`` bins (:func:`bin_thresholds`); with at least
  as many bins as distinct values the candidate splits are exactly scikit-learn's (between
  consecutive distinct values, placed midway between the node's nearest values, on float32
  features) and so are the fitted trees, up to ties between equally good splits, which
  scikit-learn breaks by a random feature order (``tests/test_metrics_dci.py`` checks both);
* the histograms of residual sums and counts of every (node, tree, feature, bin) come from one
  sparse product (one-hot bins x residuals); a right child's cumulative histogram is its
  parent's minus its left sibling's.

Feature importances are scikit-learn's: a tree's importance of feature f is the total
squared-error decrease of its splits on f divided by the number of samples; trees that never
split are left out; the mean over trees is normalised to sum to 1.

Nodes are numbered level by level with the left children first: a node j of level d has the
children j (left) and j + 2^d (right); histogram columns are node * T + tree.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_EPS = np.finfo(np.float64).eps


def _as_float32_values(X: np.ndarray) -> np.ndarray:
    """X rounded to float32, held as float64: scikit-learn's trees see float32 features."""
    return np.asarray(X, dtype=np.float32).astype(np.float64)


def bin_thresholds(x: np.ndarray, max_bins: int) -> np.ndarray:
    """Split thresholds for one feature, at most ``max_bins - 1`` of scikit-learn's candidates
    (midpoints between consecutive distinct values): all of them when there are few enough;
    else the midpoints of the ``max_bins // 4`` widest gaps (so separated clusters stay
    separable) and midpoints at equally spaced quantiles for the rest."""
    u, counts = np.unique(x, return_counts=True)
    mids = (u[1:] + u[:-1]) / 2.0
    if len(u) <= max_bins:
        return mids
    n_gaps = max_bins // 4
    gaps = np.argpartition(np.diff(u), -n_gaps)[-n_gaps:]
    cut = np.linspace(0, len(x), max_bins - n_gaps + 1)[1:-1]
    quantiles = np.clip(np.searchsorted(np.cumsum(counts), cut), 0, len(mids) - 1)
    return mids[np.unique(np.concatenate([gaps, quantiles]))]


class BinnedGradientBoosting:
    """Multiclass gradient-boosted trees, scikit-learn's algorithm on binned features.

    Deterministic: ties between splits of equal gain go to the lowest feature, then the lowest
    threshold. ``feature_importances_``, ``predict`` and ``train_accuracy_`` after ``fit``.
    """

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.1, max_depth: int = 3,
                 max_bins: int = 255) -> None:
        if max_bins < 2:
            raise ValueError(f"max_bins must be >= 2, got {max_bins}")
        self.n_estimators = int(n_estimators)
        self.learning_rate = float(learning_rate)
        self.max_depth = int(max_depth)
        self.max_bins = int(max_bins)

    def _bin(self, X: np.ndarray) -> np.ndarray:
        # x <= threshold[b] goes left of split b, i.e. bin index <= b
        return np.stack([np.searchsorted(t, X[:, f], side="left") for f, t in enumerate(self.thresholds_)],
                        axis=1).astype(np.int64)

    # -- fit ---------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray) -> "BinnedGradientBoosting":
        X = _as_float32_values(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}")
        n, F = X.shape
        self.classes_, yk = np.unique(np.asarray(y), return_inverse=True)
        K = len(self.classes_)
        self.n_features_in_ = F
        self.thresholds_ = [bin_thresholds(X[:, f], self.max_bins) for f in range(F)]
        self.trees_: list[tuple[list[np.ndarray], list[np.ndarray], np.ndarray]] = []
        if K == 1:  # nothing to learn; scikit-learn refuses a single class
            self.init_ = np.zeros(1)
            self.feature_importances_ = np.zeros(F)
            self.train_accuracy_ = 1.0
            return self

        B = max(len(t) for t in self.thresholds_) + 1
        xb = self._bin(X)
        # each bin's smallest and largest training value: a split between bins is placed
        # midway between the node's nearest values on either side, as scikit-learn does
        bin_lo = np.full((F, B), np.inf)
        bin_hi = np.full((F, B), -np.inf)
        for f in range(F):
            np.minimum.at(bin_lo[f], xb[:, f], X[:, f])
            np.maximum.at(bin_hi[f], xb[:, f], X[:, f])
        T = 1 if K == 2 else K  # trees per stage: the binomial deviance needs one
        prior = np.bincount(yk, minlength=K) / n
        if T == 1:
            p1 = np.clip(prior[1], _EPS, 1 - _EPS)
            Y = (yk == 1).astype(np.float64)[:, None]
            self.init_ = np.array([np.log(p1 / (1 - p1))])
        else:
            logp = np.log(np.clip(prior, _EPS, 1 - _EPS))
            Y = np.eye(K)[yk]
            self.init_ = logp - logp.mean()  # symmetric multinomial link, as scikit-learn
        leaf_factor = (K - 1) / K if T > 1 else 1.0  # Friedman's (K-1)/K, kept by scikit-learn

        # one-hot bins, (F*B, n): row f*B + bin; a histogram is a product with it. CSC: the
        # product then reads the dense factor row by row (twice as fast as CSR here)
        onehot = sp.csr_matrix(
            (np.ones(n * F), ((np.arange(F) * B)[None, :] + xb).ravel(), np.arange(0, n * F + 1, F)),
            shape=(n, F * B),
        ).T
        root_CL = np.cumsum(np.asarray(onehot.sum(axis=1)).reshape(F, B), axis=1).reshape(F * B, 1)
        xb_flat = xb.ravel()
        row_base = (np.arange(n) * F)[:, None]
        raw = np.tile(self.init_, (n, 1))
        tix = np.arange(T)
        imp_total = np.zeros(F)
        n_relevant = 0
        p = np.empty((n, T))
        r = np.empty((n, T))
        for _ in range(self.n_estimators):
            if T == 1:
                np.negative(raw, out=p)
                np.exp(p, out=p)
                p += 1.0
                np.reciprocal(p, out=p)
            else:
                np.subtract(raw, raw.max(axis=1, keepdims=True), out=p)
                np.exp(p, out=p)
                p /= p.sum(axis=1, keepdims=True)
            np.subtract(Y, p, out=r)  # negative gradient of the log loss
            node = np.zeros((n, T), dtype=np.int64)
            imp = np.zeros((T, F))
            feats: list[np.ndarray] = []
            thrs: list[np.ndarray] = []
            # cumulative (over bins) residual sums SL and counts CL, (F*B, nodes*T)
            SL = np.cumsum((onehot @ r).reshape(F, B, T), axis=1).reshape(F * B, T)
            CL = np.broadcast_to(root_CL, (F * B, T))
            for d in range(self.max_depth):
                nn = 2**d
                cols = nn * T
                S, C = SL[B - 1], CL[B - 1]  # node totals: feature 0's last bin
                CR = C - CL
                with np.errstate(divide="ignore", invalid="ignore"):
                    gain = SL**2 / CL + (S - SL) ** 2 / CR
                gain[(CL < 0.5) | (CR < 0.5)] = -np.inf
                best = gain.argmax(axis=0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    best_gain = gain[best, np.arange(cols)] - S**2 / C
                ok = np.isfinite(best_gain) & (C >= 2)
                if d == 0:
                    # scikit-learn splits a node only if its impurity exceeds machine epsilon.
                    # Checked at the root (it decides which trees count for the importances);
                    # below, a node that pure has equal residuals, so splitting it changes no
                    # prediction and adds a zero gain.
                    ok &= (r * r).mean(axis=0) - (S / n) ** 2 > _EPS
                bf = np.where(ok, best // B, 0).reshape(nn, T)
                bb = np.where(ok, best % B, B).reshape(nn, T)  # B: everything goes left
                nodes_ok, trees_ok = np.divmod(np.flatnonzero(ok), T)
                np.add.at(imp, (trees_ok, bf[nodes_ok, trees_ok]), best_gain[ok] / n)
                feats.append(bf)
                thrs.append(self._split_values(CL, bf, bb, ok, bin_lo, bin_hi, B))
                if d == 0:  # one node per tree
                    go = xb[:, bf[0]] > bb[0]
                else:
                    col = node * T + tix  # (n, T)
                    go = np.take(xb_flat, row_base + np.take(bf, col)) > np.take(bb, col)
                if d + 1 < self.max_depth:
                    # left children by one product; right = parent - left
                    W = np.empty((n, 2, nn, T))
                    if d == 0:
                        np.logical_not(go, out=W[:, 1, 0])
                    else:
                        W[:, 1] = (np.where(go, -1, node)[:, None, :] == np.arange(nn)[:, None])
                    np.multiply(W[:, 1], r[:, None, :], out=W[:, 0])
                    h = (onehot @ W.reshape(n, 2 * cols)).reshape(F, B, 2 * cols)
                    np.cumsum(h, axis=1, out=h)
                    h = h.reshape(F * B, 2, cols)
                    SL = np.concatenate([h[:, 0], SL - h[:, 0]], axis=1)
                    CL = np.concatenate([h[:, 1], CL - h[:, 1]], axis=1)
                node = node + nn * go
            n_leaves = 2**self.max_depth
            leaf = (node * T + tix).ravel()
            num = np.bincount(leaf, r.ravel(), minlength=n_leaves * T)
            den = np.bincount(leaf, (p * (1 - p)).ravel(), minlength=n_leaves * T)
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.where(np.abs(den) < 1e-150, 0.0, leaf_factor * num / den).reshape(n_leaves, T)
            raw += self.learning_rate * value[node, tix]
            self.trees_.append((feats, thrs, value))
            relevant = np.isfinite(thrs[0][0])  # trees whose root split
            imp_total += imp[relevant].sum(axis=0)
            n_relevant += int(relevant.sum())
        mean_imp = imp_total / max(n_relevant, 1)
        total = mean_imp.sum()
        self.feature_importances_ = mean_imp / total if total > 0 else mean_imp
        self.train_accuracy_ = float(np.mean(self._labels(raw) == self.classes_[yk]))
        return self

    @staticmethod
    def _split_values(CL: np.ndarray, bf: np.ndarray, bb: np.ndarray, ok: np.ndarray, bin_lo: np.ndarray,
                      bin_hi: np.ndarray, B: int) -> np.ndarray:
        """(nodes, T) thresholds on feature values: midway between the largest value left of
        the split and the smallest right of it among the node's samples (+inf: no split)."""
        thr = np.full(bf.shape, np.inf)
        cols = np.flatnonzero(ok)
        if len(cols) == 0:
            return thr
        f, b = bf.ravel()[cols], bb.ravel()[cols]
        cum = CL.reshape(-1, B, CL.shape[1])[f, :, cols]  # (splits, B) cumulative counts
        used = np.diff(cum, axis=1, prepend=0.0) > 0.5  # the node's bins holding samples
        idx = np.arange(B)
        left = np.where(used & (idx <= b[:, None]), idx, -1).max(axis=1)
        right = np.where(used & (idx > b[:, None]), idx, B).min(axis=1)
        lo, hi = bin_hi[f, left], bin_lo[f, right]
        mid = lo / 2.0 + hi / 2.0  # scikit-learn's formula (tree/_splitter.pyx)
        thr.ravel()[cols] = np.where(np.isinf(mid) | (mid == hi), lo, mid)
        return thr

    # -- predict -----------------------------------------------------------------------------
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (n, trees per stage), as ``GradientBoostingClassifier`` (2-D always)."""
        X = _as_float32_values(X)
        n = len(X)
        T = len(self.init_)
        tix = np.arange(T)
        raw = np.tile(self.init_, (n, 1))
        for feats, thrs, value in self.trees_:
            node = np.zeros((n, T), dtype=np.int64)
            for d, (bf, thr) in enumerate(zip(feats, thrs)):
                node = node + 2**d * (np.take_along_axis(X, bf[node, tix], axis=1) > thr[node, tix])
            raw += self.learning_rate * value[node, tix]
        return raw

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        if len(self.classes_) == 1:
            return np.full(len(raw), self.classes_[0])
        if raw.shape[1] == 1:
            return self.classes_[(raw[:, 0] > 0).astype(np.int64)]
        return self.classes_[raw.argmax(axis=1)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._labels(self.decision_function(X))
