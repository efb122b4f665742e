"""The loss contract of DESIGN §1, in one place.

Heads give a per-element NLL, the posterior gives a per-dimension KL; this module turns them
into distortion D, rate R, and ``loss = scale · mean_batch[D + beta_eff · R]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

REDUCTIONS = ("sum", "mean")


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, 1)) per example and latent dimension, shaped (B, M)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def beta_eff_from(weight: float, reduction: str, n_elements: int, n_latents: int,
                  normalised: bool) -> float:
    """beta_eff for a user weight: DESIGN §1's table.

    ``normalised`` (beta_norm, Higgins et al. 2017 App. A.6: beta·M/N) and reduction ``mean``
    both rescale by N/M; ``beta`` with ``sum`` is beta_eff itself.
    """
    if normalised or reduction == "mean":
        return weight * n_elements / n_latents
    return weight


def gradient_scale(reduction: str, n_elements: int) -> float:
    """The constant factor in front of the loss: 1 for ``sum``, 1/N for ``mean``."""
    return 1.0 / n_elements if reduction == "mean" else 1.0


@dataclass
class LossTerms:
    """One batch's terms. ``distortion`` and ``rate`` are per example (nats), unweighted."""

    loss: torch.Tensor
    distortion: torch.Tensor
    rate: torch.Tensor
    kl_per_dim: torch.Tensor
    beta_eff: float

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.distortion + self.rate)


def assemble(nll: torch.Tensor, kl_dim: torch.Tensor, beta_eff: float | torch.Tensor,
             scale: float, penalty: torch.Tensor | None = None) -> LossTerms:
    """``loss = scale · mean_b[D + beta_eff·R]``; ``penalty`` replaces beta_eff·R when the
    weighting trains on another rate term (free bits, capacity) — the logged rate stays R."""
    distortion = nll.flatten(1).sum(1)
    rate = kl_dim.sum(1)
    if penalty is None:
        penalty = (beta_eff * rate).mean()
    loss = scale * (distortion.mean() + penalty)
    return LossTerms(loss, distortion, rate, kl_dim, float(beta_eff))
