"""The loss contract (docs/pages/loss-contract.md), in one place.

Heads give a per-element NLL, the posterior gives a per-dimension KL; this module turns them
into distortion D, rate R, and ``loss = scale · mean_batch[D + beta_eff · R]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

REDUCTIONS = ("sum", "mean")


def beta_eff_from(weight: float, reduction: str, n_elements: int, n_latents: int,
                  normalised: bool) -> float:
    """beta_eff for a user weight: the beta_eff table of docs/pages/loss-contract.md.

    ``normalised`` (beta_norm, Higgins et al. 2017 App. A.6: beta·M/N) and reduction ``mean``
    both rescale by N/M; ``beta`` with ``sum`` is beta_eff itself.
    """
    if normalised or reduction == "mean":
        return weight * n_elements / n_latents
    return weight


def loss_beta_eff(n_elements: int, n_latents: int, rec: str, kl: str,
                  rec_weight: float = 1.0, kl_weight: float = 1.0) -> float:
    """beta_eff of a loss written ``A·rec_red + B·kl_red`` (``vaesweep convert``).

    ``rec_red`` is D summed (``rec="sum"``) or averaged (``"mean"``) over the N elements of an
    example, ``kl_red`` is R summed or averaged over the M latents. Then
    ``A·D/rec_div + B·R/kl_div = (A/rec_div)·(D + beta_eff·R)`` with
    ``beta_eff = (B/kl_div) / (A/rec_div)``, rec_div = N for a mean and 1 for a sum, kl_div =
    M for a mean and 1 for a sum. The batch reduction scales both terms alike and drops out.
    Raises ValueError for an unknown reduction or a non-positive ``rec_weight``.
    """
    for name, red in (("rec", rec), ("kl", kl)):
        if red not in REDUCTIONS:
            raise ValueError(f"{name} reduction must be one of {REDUCTIONS}, got {red!r}")
    if not rec_weight > 0:
        raise ValueError(f"rec_weight must be positive, got {rec_weight!r}")
    rec_div = n_elements if rec == "mean" else 1
    kl_div = n_latents if kl == "mean" else 1
    return (kl_weight / kl_div) / (rec_weight / rec_div)


def beta_norm_of(beta_eff: float, n_elements: int, n_latents: int) -> float:
    """beta_norm = beta_eff·M/N (Higgins et al. 2017, App. A.6); beta_eff = 1 is M/N."""
    return beta_eff * n_latents / n_elements


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
