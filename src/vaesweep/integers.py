"""Integer arrays from user input, never silently truncated: factor classes, labels, indices.

``np.asarray(x, dtype=np.int64)`` turns 0.5..1.0 into {0, 1} without a word; a metric fed
dSprites' ``latents_values`` instead of ``latents_classes`` then scores the wrong thing.

The rule is the one :func:`vaesweep.errors.number` (``integer=True``) applies to a single
config value (a count, a seed, a size): a float is taken when it is whole (2.0 is 2), and
anything else is refused; arrays of data raise ValueError, config values ConfigError.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def as_integers(a: Any, what: str, expected: str = "integer class indices",
                hint: str = "") -> np.ndarray:
    """``a`` (numpy array, torch tensor, list) as an int64 array of the same shape.

    Integer and boolean input is returned as is (as int64); floats are accepted only where
    every value is a whole number (1.0, 2.0, as read from a CSV). Anything else raises
    ValueError saying what was given and what is expected (``expected``, then ``hint``)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, without importing torch
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    tail = f"; {hint}" if hint else ""
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be {expected}; got an array of dtype {arr.dtype}{tail}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{what} must be {expected}; got NaN or infinite values{tail}")
    whole = arr == np.round(arr)
    if not whole.all():
        cols = ""
        if arr.ndim == 2:
            cols = " in column(s) " + ", ".join(
                str(j) for j in np.flatnonzero(~whole.all(axis=0)))
        example = arr.reshape(-1)[np.flatnonzero(~whole.reshape(-1))[0]]
        raise ValueError(f"{what} must be {expected}; got non-integer values{cols} "
                         f"(e.g. {example:g}, dtype {arr.dtype}), which would be truncated"
                         f"{tail}")
    return arr.astype(np.int64)
