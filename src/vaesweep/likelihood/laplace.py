"""Laplace head: −log p(x | μ, b) = |x − μ| / b + log 2b per element (an L1 reconstruction
loss with a proper normaliser). The scale b is fixed (``scale``) or, with
``learn_scale: true``, one learned scalar starting at ``scale`` whose log is soft-clipped
from below at ``min_log_scale`` (as the σ of :mod:`.gaussian_learned`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vaesweep.errors import ConfigError
from vaesweep.likelihood.base import HEADS, LikelihoodHead
from vaesweep.likelihood.gaussian_learned import softclip, softclip_inverse
from vaesweep.schema import PartConfig, boolean, num, positive

LOG_2 = math.log(2.0)


@HEADS.register("laplace")
class Laplace(LikelihoodHead):
    @dataclass
    class Config(PartConfig):
        scale: float = positive(1.0)
        learn_scale: bool = boolean(False)
        min_log_scale: float = num(-6.0, -30.0, 30.0)

        def check(self, prefix: str) -> None:
            if self.learn_scale and math.log(self.scale) <= self.min_log_scale:
                raise ConfigError(f"{prefix}.scale", self.scale, "a number above "
                                  f"exp({prefix}.min_log_scale) = {math.exp(self.min_log_scale):g}")

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__(shape, **params)
        self.learn_scale, self.floor = self.config.learn_scale, self.config.min_log_scale
        self.raw_log_scale: nn.Parameter | None = None
        self.fixed_log_scale = math.log(self.config.scale)
        if self.learn_scale:
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
