"""beta-VAE score (Higgins et al. 2017), as disentanglement_lib's ``beta_vae_sklearn`` computes it.

One training point: pick a factor k uniformly, draw two batches of ``batch_size`` (64) factor
vectors that agree on factor k, represent both batches' images and take the mean absolute
difference of the codes over the batch (a vector, one entry per latent); its label is k. A
``LogisticRegression`` is trained on ``num_train`` (10,000) points and scored on ``num_eval``
(5,000) new ones.

By default (``standardize=False``) this is the reference exactly. With its C=1 the score
depends (slightly) on the scale of each latent; ``standardize=True`` z-scores the features
with their training mean and standard deviation before the regression, which removes that
but is not disentanglement_lib's number (``metrics.betavae_standardize``, logged with the
run's params). Chance level is 1/F.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaesweep.metrics._arrays import (CodeCache, FactorData, Represent, as_factor_classes,
                                     codes_for_classes)

log = logging.getLogger(__name__)


def _pair_batches(data: FactorData, num: int, batch_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_factors = len(data.factor_sizes)
    index = rng.integers(num_factors, size=num)
    first = as_factor_classes(data.sample_factors(num * batch_size, rng),
                              "data.sample_factors()").reshape(num, batch_size, -1)
    second = as_factor_classes(data.sample_factors(num * batch_size, rng),
                               "data.sample_factors()").reshape(num, batch_size, -1)
    rows = np.arange(num)
    second[rows, :, index] = first[rows, :, index]
    return index, first, second


def betavae_score(represent: Represent, data: FactorData, seed: int, *, batch_size: int = 64,
                  num_train: int = 10_000, num_eval: int = 5_000, standardize: bool = False,
                  chunk_size: int = 4096, dedupe: bool = True, cache: CodeCache | None = None,
                  details: bool = False) -> float | dict[str, float]:
    """beta-VAE score (eval accuracy of the logistic regression), in [0, 1]; see the module.
    A ``cache`` (of ``represent`` on ``data``) serves codes already computed."""
    rng = np.random.default_rng(seed)
    num_factors = len(data.factor_sizes)
    train = _pair_batches(data, num_train, batch_size, rng)
    evals = _pair_batches(data, num_eval, batch_size, rng)
    classes = np.concatenate([train[1], train[2], evals[1], evals[2]]).reshape(-1, num_factors)
    codes = codes_for_classes(represent, data, classes, chunk_size=chunk_size, dedupe=dedupe,
                              cache=cache)
    codes = codes.reshape(2 * (num_train + num_eval), batch_size, -1)
    t1, t2 = codes[:num_train], codes[num_train:2 * num_train]
    e1, e2 = codes[2 * num_train:2 * num_train + num_eval], codes[2 * num_train + num_eval:]
    x_train = np.mean(np.abs(t1 - t2), axis=1)
    x_eval = np.mean(np.abs(e1 - e2), axis=1)
    model = LogisticRegression(random_state=seed)
    if standardize:
        model = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, train[0])
    train_acc = float(model.score(x_train, train[0]))
    eval_acc = float(model.score(x_eval, evals[0]))
    log.info("betavae_score: train %.3f eval %.3f", train_acc, eval_acc)
    if details:
        return {"train_accuracy": train_acc, "eval_accuracy": eval_acc}
    return eval_acc
