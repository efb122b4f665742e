"""The likelihood-head interface: a head turns decoder outputs into a per-element NLL.

Heads never reduce: they return −log p(x_i | z) for every element i, shaped like x. The one
place that sums or averages is :func:`vaesweep.kl.loss.assemble`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaesweep.registry import Registry
from vaesweep.schema import Configured, PartConfig

HEADS = Registry("likelihood head", "likelihood.name", package="vaesweep.likelihood")


class LikelihoodHead(Configured, nn.Module):
    """Base class of the heads registered in :data:`HEADS`.

    ``shape`` is the image shape (C, H, W); ``params`` are the head's config keys besides
    ``name``. Subclasses declare the keys they accept, with their defaults, choices and
    ranges, in a ``Config`` dataclass (:mod:`vaesweep.schema`); ``config`` is the checked one.
    Raises ConfigError naming ``likelihood.<key>`` for an unknown key or a bad value.
    """

    Config = PartConfig
    #: decoder output channels per image channel (2 when the decoder also predicts a scale)
    channels_per_image_channel: int = 1
    #: the values the head models, (lo, hi), or None for any real value: a head on [0, 1]
    #: (Bernoulli, continuous Bernoulli) is refused for data outside it (:func:`check_data_range`)
    support: tuple[float, float] | None = None

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__()
        self.config: Any = self.Config.validate(params, "likelihood", "this head")
        self.shape = tuple(shape)
        self.params = {**self.keys, **params}

    def decoder_channels(self) -> int:
        return self.shape[0] * self.channels_per_image_channel

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-element −log p(x|z), shaped like ``x``."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The image to show: the mean of p(x|z)."""
        raise NotImplementedError

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        """The same p(x|z) as a ``torch.distributions`` object (the tests' reference)."""
        raise NotImplementedError

    def sigma(self) -> torch.Tensor | None:
        """The head's current σ or scale where it has one (logged as ``val/sigma``)."""
        return None

    def implied_sigma(self, beta_eff: float) -> float | None:
        """σ of a fixed-Gaussian run with beta_eff = 1 equivalent to this one (docs/pages/loss-contract.md)."""
        return None
