"""Array helpers shared by the metrics: conversion to numpy, and codes for factor classes."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from vaesweep.integers import as_integers

#: what the structure metrics say when given factor values instead of classes
FACTOR_HINT = ("pass factor classes, not factor values (dSprites: latents_classes, not "
               "latents_values), or discretise continuous factors first, e.g. "
               "vaesweep.metrics.histogram_discretize(values, num_bins=20)")


def as_factor_classes(factors: Any, what: str = "factors") -> np.ndarray:
    """``factors`` as int64 factor classes; factor values (non-integers) raise ValueError."""
    return as_integers(factors, what, "integer factor classes (points, factors)", FACTOR_HINT)


class FactorData(Protocol):
    """What the sampling scores need from a dataset with ground-truth factors."""

    factor_sizes: list[int]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def render(self, classes: np.ndarray) -> torch.Tensor: ...


Represent = Callable[[torch.Tensor], Any]


def to_numpy(a: Any, dtype: Any = np.float64) -> np.ndarray:
    """``a`` (numpy array, torch tensor on any device, list) as a numpy array of ``dtype``."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def check_codes_factors(codes: Any, factors: Any, what: str = "codes") -> tuple[np.ndarray, np.ndarray]:
    """(points, latents) float64 codes and (points, factors) int64 factor classes, checked.
    Raises ValueError on mismatched shapes, non-finite codes, and factors that are not whole
    numbers (factor values instead of classes: they would be truncated)."""
    codes = to_numpy(codes)
    factors = as_factor_classes(factors)
    if codes.ndim == 1:
        codes = codes[:, None]
    if factors.ndim == 1:
        factors = factors[:, None]
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(f"{what} must be (points, latents) and factors (points, factors); "
                         f"got {codes.shape} and {factors.shape}")
    if len(codes) != len(factors):
        raise ValueError(f"{what} has {len(codes)} points but factors has {len(factors)}")
    if not np.isfinite(codes).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return codes, factors


@torch.no_grad()
def codes_for_classes(represent: Represent, data: FactorData, classes: np.ndarray, *,
                      chunk_size: int = 4096, dedupe: bool = True) -> np.ndarray:
    """Codes (n, latents) of the images ``data.render(classes)``, rendered and represented in
    chunks of ``chunk_size`` images so memory stays bounded.

    With ``dedupe`` each distinct factor vector is rendered and represented once: exact when
    ``represent`` is a deterministic function of the image (the mean representation), and
    2-4x fewer images for the FactorVAE and beta-VAE scores on dSprites, whose samples repeat.
    """
    classes = as_factor_classes(classes, "classes")
    n = len(classes)
    if n == 0:
        raise ValueError("no factor classes to represent")
    sizes = np.asarray(data.factor_sizes, dtype=np.int64)
    inverse = None
    if dedupe and np.sum(np.log2(np.maximum(sizes, 1))) < 62:
        keys = np.ravel_multi_index(tuple(classes.T), tuple(sizes))
        keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        classes = classes[first]
    out = []
    for start in range(0, len(classes), chunk_size):
        images = data.render(classes[start:start + chunk_size])
        codes = to_numpy(represent(images))
        out.append(codes.reshape(len(codes), -1))
    codes = np.concatenate(out, axis=0)
    return codes if inverse is None else codes[inverse.reshape(-1)]
