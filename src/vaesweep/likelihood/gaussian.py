"""Gaussian head with a fixed σ: D = Σ (x − μ)² / (2σ²) + N·log(σ√(2π))."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from vaesweep.likelihood.base import HEADS, LikelihoodHead
from vaesweep.schema import PartConfig, positive

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@HEADS.register("gaussian")
class Gaussian(LikelihoodHead):
    @dataclass
    class Config(PartConfig):
        sigma: float = positive(1.0)

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__(shape, **params)
        self.fixed_sigma = self.config.sigma

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.fixed_sigma
        return (x - out) ** 2 / (2 * s * s) + (math.log(s) + HALF_LOG_2PI)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Normal(out, self.fixed_sigma)

    def sigma(self) -> torch.Tensor:
        return torch.tensor(self.fixed_sigma)

    def implied_sigma(self, beta_eff: float) -> float | None:
        # D/beta_eff + R has squared-error weight 1/(2σ²·beta_eff): a beta_eff=1 run with σ√beta_eff
        return self.fixed_sigma * math.sqrt(beta_eff) if beta_eff > 0 else None
