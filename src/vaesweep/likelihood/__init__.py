"""Likelihood heads (``likelihood=``): each returns a per-element NLL; see :mod:`.base`."""
from vaesweep.likelihood.base import HEADS, LikelihoodHead

HEADS.discover()  # imports every head module: a new head is one file, no line here


def build_head(cfg, shape) -> LikelihoodHead:
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    return HEADS.build(cfg["name"], tuple(shape), **params)


__all__ = ["HEADS", "LikelihoodHead", "build_head"]
