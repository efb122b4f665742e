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


def _keyable(sizes: list[int]) -> bool:
    """Whether every factor vector of the grid has a flat int64 index (C order)."""
    return float(np.sum(np.log2(np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)))) < 62


def _represent_chunks(represent: Represent, data: FactorData, classes: np.ndarray,
                      chunk_size: int) -> np.ndarray:
    """Codes (n, latents) of ``data.render(classes)`` in ``represent``'s own dtype, rendered and
    represented ``chunk_size`` images at a time so memory stays bounded."""
    out = []
    for start in range(0, len(classes), chunk_size):
        codes = represent(data.render(classes[start:start + chunk_size]))
        codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        out.append(codes.reshape(len(codes), -1))
    return np.concatenate(out, axis=0)


@torch.no_grad()
def codes_for_classes(represent: Represent, data: FactorData, classes: np.ndarray, *,
                      chunk_size: int = 4096, dedupe: bool = True,
                      cache: CodeCache | None = None) -> np.ndarray:
    """float64 codes (n, latents) of the images ``data.render(classes)``, rendered and
    represented in chunks of ``chunk_size`` images so memory stays bounded.

    With ``dedupe`` each distinct factor vector is rendered and represented once: exact when
    ``represent`` is a deterministic function of the image (the mean representation), and
    2-4x fewer images for the FactorVAE and beta-VAE scores on dSprites, whose samples repeat.
    With a ``cache`` (a :class:`CodeCache` of the same ``represent`` and ``data``) the codes
    are looked up there, so images already represented by an earlier call are not again.
    """
    classes = as_factor_classes(classes, "classes")
    if cache is not None:
        return cache(classes)
    n = len(classes)
    if n == 0:
        raise ValueError("no factor classes to represent")
    inverse = None
    if dedupe and _keyable(data.factor_sizes):
        keys = np.ravel_multi_index(tuple(classes.T), tuple(data.factor_sizes))
        keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        classes = classes[first]
    codes = to_numpy(_represent_chunks(represent, data, classes, chunk_size))
    return codes if inverse is None else codes[inverse.reshape(-1)]


#: the most codes a :class:`CodeCache` holds (docs/pages/performance.md): dSprites' whole grid
#: (737,280 images) fits, as a dense table of 29 MB for 10 float32 latents
MAX_CACHED_CODES = 1 << 20


class CodeCache:
    """Codes of factor vectors, filled on demand: each image of the grid ``data.factor_sizes``
    is rendered and represented at most once, however often the sampling scores draw it.

    Keyed by the factor vector's flat index on the grid (C order). A grid of at most
    ``max_codes`` cells is held as a dense table; on a larger grid the first ``max_codes``
    distinct codes are kept and the rest represented on every call (memory stays bounded).
    A grid too large for int64 keys is not cached at all. Exact when ``represent`` is a
    deterministic function of one image (the posterior mean in eval mode): the codes equal
    :func:`codes_for_classes`' bit for bit. Calls return float64 (n, latents) arrays;
    ``represented`` counts the images represented so far.
    """

    def __init__(self, represent: Represent, data: FactorData, *, chunk_size: int = 4096,
                 max_codes: int = MAX_CACHED_CODES) -> None:
        self.represent, self.data, self.chunk_size = represent, data, int(chunk_size)
        self.sizes = tuple(int(s) for s in data.factor_sizes)
        self.max_codes = int(max_codes)
        self.keyed = _keyable(list(self.sizes)) and self.max_codes > 0
        self.dense = self.keyed and int(np.prod(self.sizes, dtype=object)) <= self.max_codes
        self._table: np.ndarray | None = None  # dense: (cells, latents); else (held, latents)
        self._filled = np.zeros(int(np.prod(self.sizes)), dtype=bool) if self.dense else None
        self._keys = np.empty(0, dtype=np.int64)  # not dense: the held keys, sorted
        self.represented = 0

    @torch.no_grad()
    def __call__(self, classes: np.ndarray) -> np.ndarray:
        classes = np.asarray(classes, dtype=np.int64)
        if len(classes) == 0:
            raise ValueError("no factor classes to represent")
        if not self.keyed:
            self.represented += len(classes)
            return codes_for_classes(self.represent, self.data, classes, chunk_size=self.chunk_size, dedupe=False)
        keys, first, inverse = np.unique(np.ravel_multi_index(tuple(classes.T), self.sizes),
                                         return_index=True, return_inverse=True)
        if self.dense:
            held = self._filled[keys]
            pos = keys
        else:
            pos = np.minimum(np.searchsorted(self._keys, keys), max(len(self._keys) - 1, 0))
            held = (self._keys[pos] == keys) if len(self._keys) else np.zeros(len(keys), dtype=bool)
        todo = np.flatnonzero(~held)
        new = _represent_chunks(self.represent, self.data, classes[first[todo]], self.chunk_size) \
            if len(todo) else None
        self.represented += len(todo)
        if self._table is None:  # the first call: nothing held, so ``new`` has every code
            assert new is not None
            rows = len(self._filled) if self._filled is not None else 0
            self._table = np.empty((rows, new.shape[1]), dtype=new.dtype)
        codes = np.empty((len(keys), self._table.shape[1]), dtype=self._table.dtype)
        if new is not None:
            codes[todo] = new
        codes[held] = self._table[pos[held]]
        if new is not None:
            self._store(keys[todo], codes[todo])
        return codes.astype(np.float64)[inverse.reshape(-1)]

    def _store(self, keys: np.ndarray, codes: np.ndarray) -> None:
        assert self._table is not None
        if self.dense:
            self._table[keys] = codes
            self._filled[keys] = True  # type: ignore[index]
            return
        room = self.max_codes - len(self._keys)
        if room <= 0:
            return
        keys, codes = keys[:room], codes[:room]
        all_keys = np.concatenate([self._keys, keys])
        order = np.argsort(all_keys, kind="stable")
        self._keys = all_keys[order]
        self._table = np.concatenate([self._table, codes.astype(self._table.dtype)])[order]
