"""Likelihood heads (``likelihood=``): each returns a per-element NLL; see :mod:`.base`."""
from vaesweep.likelihood.base import HEADS, LikelihoodHead
from vaesweep.likelihood import bernoulli, gaussian  # noqa: F401  (registration)
from vaesweep.likelihood import (  # noqa: F401  (registration)
    continuous_bernoulli, gaussian_learned, gaussian_optimal, laplace)


def build_head(cfg, shape) -> LikelihoodHead:
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    return HEADS.build(cfg["name"], tuple(shape), **params)


__all__ = ["HEADS", "LikelihoodHead", "build_head"]
