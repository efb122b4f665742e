"""Laplace head: −log p(x | μ, b) = |x − μ| / b + log 2b per element (an L1 reconstruction
loss with a proper normaliser). The scale b is fixed (``scale``) or, with
``learn_scale: true``, one learned scalar starting at ``scale`` whose log is soft-clipped
from below at ``min_log_scale`` (as the σ of :mod:`.gaussian_learned`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vaesweep.errors import ConfigError, flag, number
from vaesweep.likelihood.base import HEADS, LikelihoodHead, positive
from vaesweep.likelihood.gaussian_learned import softclip, softclip_inverse

LOG_2 = math.log(2.0)


@HEADS.register("laplace")
class Laplace(LikelihoodHead):
    keys = {"scale": 1.0, "learn_scale": False, "min_log_scale": -6.0}

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__(shape, **params)
        scale = positive("likelihood.scale", self.params["scale"])
        self.learn_scale = flag("likelihood.learn_scale", self.params["learn_scale"])
        self.floor = number("likelihood.min_log_scale", self.params["min_log_scale"], -30.0, 30.0)
        self.raw_log_scale: nn.Parameter | None = None
        self.fixed_log_scale = math.log(scale)
        if self.learn_scale:
            if self.fixed_log_scale <= self.floor:
                raise ConfigError("likelihood.scale", scale, "a number above "
                                  f"exp(likelihood.min_log_scale) = {math.exp(self.floor):g}")
            self.raw_log_scale = nn.Parameter(
                torch.tensor(softclip_inverse(self.fixed_log_scale, self.floor)))

    def log_scale(self) -> torch.Tensor:
        if self.raw_log_scale is None:
            return torch.tensor(self.fixed_log_scale)
        return softclip(self.raw_log_scale, self.floor)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.raw_log_scale is None:  # plain floats: no tensor to build on every batch
            return (x - out).abs() * math.exp(-self.fixed_log_scale) + (self.fixed_log_scale + LOG_2)
        log_b = self.log_scale()
        return (x - out).abs() * torch.exp(-log_b) + (log_b + LOG_2)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Laplace(out, self.log_scale().to(out).exp().expand_as(out))

    def sigma(self) -> torch.Tensor:
        """The scale b (logged as ``val/sigma``; the standard deviation is b·√2)."""
        return self.log_scale().detach().exp()
