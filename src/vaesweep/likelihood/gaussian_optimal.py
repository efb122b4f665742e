"""σ-VAE head (Rybkin et al. 2021, "Simple and Effective VAE Training with Calibrated
Decoders"): a Gaussian whose σ is set analytically to its maximum-likelihood value for the
batch, σ² = the batch MSE, with log σ soft-clipped from below (their
``softclip``, floor −6).

σ depends on the whole batch, so :meth:`nll` stores it; :meth:`distribution` and
:meth:`sigma` use the σ of the last batch seen.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from vaesweep.errors import ConfigError, number
from vaesweep.likelihood.base import HEADS, LikelihoodHead
from vaesweep.likelihood.gaussian_learned import gaussian_nll, softclip


def flag(key: str, value: Any) -> bool:
    """A YAML boolean, or a ConfigError naming ``key``."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


@HEADS.register("gaussian_optimal")
class GaussianOptimal(LikelihoodHead):
    """``detach_sigma: true`` stops the gradient through σ (the decoder then sees the
    fixed-σ gradient of this batch); Rybkin et al. keep it (false)."""

    keys = {"min_log_sigma": -6.0, "detach_sigma": False}

    def __init__(self, shape: tuple[int, int, int], **params: Any) -> None:
        super().__init__(shape, **params)
        self.floor = number("likelihood.min_log_sigma", self.params["min_log_sigma"], -30.0, 30.0)
        self.detach_sigma = flag("likelihood.detach_sigma", self.params["detach_sigma"])
        # log σ of the last batch (σ = 1 before any)
        self.register_buffer("last_log_sigma", torch.zeros(()), persistent=False)

    def log_sigma(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Rybkin et al. 2021: σ* = √MSE over the batch, soft-clipped from below."""
        mse = (x - out).pow(2).mean()
        if self.detach_sigma:
            mse = mse.detach()
        # a perfect fit (mse = 0) stays finite, gradient included
        return softclip(0.5 * torch.log(mse.clamp_min(torch.finfo(mse.dtype).tiny)), self.floor)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma = self.log_sigma(out, x)
        self.last_log_sigma = log_sigma.detach()
        return gaussian_nll(x, out, log_sigma)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Normal(out, self.last_log_sigma.exp().expand_as(out))

    def sigma(self) -> torch.Tensor:
        return self.last_log_sigma.exp()

    def implied_sigma(self, beta_eff: float) -> float | None:
        return float(self.sigma()) * math.sqrt(beta_eff) if beta_eff > 0 else None
