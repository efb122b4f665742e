"""Bernoulli head on logits (no clipping: the NLL is binary cross-entropy with logits)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vaesweep.likelihood.base import HEADS, LikelihoodHead


@HEADS.register("bernoulli")
class Bernoulli(LikelihoodHead):
    support = (0.0, 1.0)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, x, reduction="none")

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Bernoulli(logits=out)
