"""Gaussian head with a learned σ: one scalar, one per channel, or one per pixel predicted by
the decoder (``scope: pixel``, the decoder then gives 2 channels per image channel: μ, log σ).

log σ is soft-clipped from below (Rybkin et al. 2021, their ``softclip``) so that σ cannot
collapse on data that a decoder can fit exactly (binary images).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaesweep.errors import ConfigError
from vaesweep.likelihood.base import HEADS, LikelihoodHead
from vaesweep.schema import PartConfig, num, one_of, positive

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
SCOPES = ("scalar", "channel", "pixel")


def softclip(log_sigma: torch.Tensor, floor: float) -> torch.Tensor:
    """``floor + softplus(log_sigma − floor)``: a smooth lower bound (Rybkin et al. 2021)."""
    return floor + F.softplus(log_sigma - floor)


def softclip_inverse(log_sigma: float, floor: float) -> float:
    """The raw value that :func:`softclip` maps to ``log_sigma`` (> floor)."""
    return floor + math.log(math.expm1(log_sigma - floor))


def gaussian_nll(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Per-element −log N(x; μ, σ²), written with log σ so that it stays finite for small σ."""
    return 0.5 * ((x - mu) * torch.exp(-log_sigma)) ** 2 + log_sigma + HALF_LOG_2PI


@HEADS.register("gaussian_learned")
class GaussianLearned(LikelihoodHead):
    """σ learned by gradient descent with the rest of the model; ``sigma_init`` starts the
    scalar and channel scopes; ``min_log_sigma`` is the soft floor of log σ."""

    @dataclass
    class Config(PartConfig):
        scope: str = one_of("scalar", SCOPES)
        sigma_init: float = positive(1.0)
        min_log_sigma: float = num(-6.0, -30.0, 30.0)

        def check(self, prefix: str) -> None:
            if math.log(self.sigma_init) <= self.min_log_sigma:
                raise ConfigError(f"{prefix}.sigma_init", self.sigma_init, "a number above "
                                  f"exp({prefix}.min_log_sigma) = {math.exp(self.min_log_sigma):g}")

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__(shape, **params)
        self.scope, self.floor = self.config.scope, self.config.min_log_sigma
        init = math.log(self.config.sigma_init)
        raw = softclip_inverse(init, self.floor)
        if self.scope == "pixel":
            self.channels_per_image_channel = 2
            self.raw_log_sigma = None
        else:
            size = (self.shape[0], 1, 1) if self.scope == "channel" else ()
            self.raw_log_sigma = nn.Parameter(torch.full(size, raw))
        # σ of the last batch, for the pixel scope's val/sigma
        self.register_buffer("last_sigma", torch.tensor(math.exp(init)), persistent=False)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ) from the decoder output."""
        if self.raw_log_sigma is None:
            mu, raw = out.chunk(2, dim=1)
            return mu, softclip(raw, self.floor)
        return out, softclip(self.raw_log_sigma, self.floor)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self.split(out)
        if self.raw_log_sigma is None:
            self.last_sigma = log_sigma.detach().exp().mean()
        return gaussian_nll(x, mu, log_sigma)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.split(out)[0]

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        mu, log_sigma = self.split(out)
        return torch.distributions.Normal(mu, log_sigma.exp().expand_as(mu))

    def sigma(self) -> torch.Tensor:
        if self.raw_log_sigma is None:
            return self.last_sigma
        return softclip(self.raw_log_sigma, self.floor).detach().exp()

    def implied_sigma(self, beta_eff: float) -> float | None:
        # one σ for the whole image only in the scalar scope (the loss contract: σ·√beta_eff)
        if self.scope != "scalar" or beta_eff <= 0:
            return None
        return float(self.sigma()) * math.sqrt(beta_eff)
