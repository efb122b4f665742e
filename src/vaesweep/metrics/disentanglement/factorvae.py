"""FactorVAE score (Kim & Mnih 2018), as disentanglement_lib computes it.

1. Each latent's variance is estimated on ``num_variance_estimate`` random images; latents
   whose standard deviation is below ``prune_threshold`` (0.05) are pruned. (disentanglement_lib
   compares the *standard deviation* with 0.05, ``_prune_dims``: ``sqrt(var) >= threshold``.)
2. A vote: pick a factor k uniformly, draw ``batch_size`` (64) factor vectors sharing the value
   of factor k, represent their images, divide each kept latent's variance over the batch by
   its global variance; the latent with the smallest normalised variance votes for k.
3. The majority-vote classifier maps each latent to the factor it got most training votes for
   (``num_train`` = 10,000 votes); the score is its accuracy on ``num_eval`` = 5,000 new votes.

A perfect representation scores 1; one that ignores the factors scores about chance, 1/F.
"""
from __future__ import annotations

import logging

import numpy as np

from vaesweep.metrics._arrays import (CodeCache, FactorData, Represent, as_factor_classes,
                                     codes_for_classes)

log = logging.getLogger(__name__)


def _fixed_factor_batches(data: FactorData, num: int, batch_size: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(num,) chosen factor indices and (num, batch_size, F) classes sharing that factor."""
    num_factors = len(data.factor_sizes)
    index = rng.integers(num_factors, size=num)
    classes = as_factor_classes(data.sample_factors(num * batch_size, rng), "data.sample_factors()")
    classes = classes.reshape(num, batch_size, num_factors).copy()
    rows = np.arange(num)
    classes[rows, :, index] = classes[rows, 0, index][:, None]
    return index, classes


def factorvae_votes(codes: np.ndarray, index: np.ndarray, global_var: np.ndarray, active: np.ndarray,
                    num_factors: int) -> np.ndarray:
    """(factors, latents) vote counts from codes shaped (votes, batch, latents)."""
    local_var = np.var(codes, axis=1, ddof=1)  # (votes, latents)
    active_idx = np.flatnonzero(active)
    ratio = local_var[:, active_idx] / global_var[active_idx]
    argmin = active_idx[np.argmin(ratio, axis=1)]
    votes = np.zeros((num_factors, codes.shape[2]), dtype=np.int64)
    np.add.at(votes, (index, argmin), 1)
    return votes


def factorvae_score(represent: Represent, data: FactorData, seed: int, *, batch_size: int = 64,
                    num_train: int = 10_000, num_eval: int = 5_000, num_variance_estimate: int = 10_000,
                    prune_threshold: float = 0.05, chunk_size: int = 4096, dedupe: bool = True,
                    cache: CodeCache | None = None,
                    details: bool = False) -> float | dict[str, float]:
    """FactorVAE score (eval accuracy of the majority-vote classifier), in [0, 1].

    ``represent`` maps an image batch (n, C, H, W) to codes (n, latents), numpy or torch;
    ``data`` has ``factor_sizes``, ``sample_factors(n, rng)`` and ``render(classes)``. Seeded
    by ``seed`` alone. A ``cache`` (a :class:`CodeCache` of ``represent`` on ``data``) serves
    codes already computed, e.g. by another score. ``details=True`` returns a dict with
    train/eval accuracy and the number of kept latents.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (a variance), got {batch_size}")
    rng = np.random.default_rng(seed)
    num_factors = len(data.factor_sizes)
    var_classes = as_factor_classes(data.sample_factors(num_variance_estimate, rng), "data.sample_factors()")
    train_index, train_classes = _fixed_factor_batches(data, num_train, batch_size, rng)
    eval_index, eval_classes = _fixed_factor_batches(data, num_eval, batch_size, rng)
    all_classes = np.concatenate([var_classes, train_classes.reshape(-1, num_factors),
                                  eval_classes.reshape(-1, num_factors)])
    codes = codes_for_classes(represent, data, all_classes, chunk_size=chunk_size, dedupe=dedupe,
                              cache=cache)
    num_latents = codes.shape[1]
    var_codes = codes[:num_variance_estimate]
    train_codes = codes[num_variance_estimate:num_variance_estimate + num_train * batch_size]
    eval_codes = codes[num_variance_estimate + num_train * batch_size:]
    global_var = np.var(var_codes, axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        log.info("factorvae_score: every latent pruned (std < %g); score 0", prune_threshold)
        out = {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
        return out if details else 0.0
    train_votes = factorvae_votes(train_codes.reshape(num_train, batch_size, num_latents), train_index,
                                  global_var, active, num_factors)
    eval_votes = factorvae_votes(eval_codes.reshape(num_eval, batch_size, num_latents), eval_index,
                                 global_var, active, num_factors)
    classifier = np.argmax(train_votes, axis=0)  # factor of each latent
    cols = np.arange(num_latents)
    train_acc = float(train_votes[classifier, cols].sum() / train_votes.sum())
    eval_acc = float(eval_votes[classifier, cols].sum() / eval_votes.sum())
    log.info("factorvae_score: train %.3f eval %.3f (%d active latents)", train_acc, eval_acc, active.sum())
    if details:
        return {"train_accuracy": train_acc, "eval_accuracy": eval_acc, "num_active_dims": float(active.sum())}
    return eval_acc
