"""Capacity annealing (Burgess et al. 2018, "Understanding disentangling in β-VAE", eq. 8):

    loss = D + γ·|R − C(t)|,   C(t) rising linearly from 0 to C_max over ``c_steps`` steps

R is the batch-mean rate (with free bits: the sum of the floored per-dimension batch means).
The gradient of γ·|R − C| with respect to R is γ·sign(R − C), so that is the effective KL
weight of the step, logged as ``beta_eff`` — negative while R is below the capacity (the
term then pushes the rate *up*). Within the loss contract the loss is ``mean_b[D] + penalty`` with
the penalty γ·|R̄ − C| handed to :func:`~vaesweep.kl.loss.assemble`.

γ is written in the units of ``kl.reduction`` like ``beta`` (``mean``: γ·N/M); C is in nats
of R (summed over latents) whatever the reduction. A schedule multiplies γ. C rises over
``c_steps`` optimiser steps when set, else over ``c_fraction`` (1.0: Burgess et al.'s "over
the course of training") of trainer.max_steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from vaesweep.errors import ConfigError
from vaesweep.kl.loss import LossTerms, assemble, beta_eff_from
from vaesweep.kl.weighting import WEIGHTINGS, KLWeighting, WeightingConfig
from vaesweep.schema import num, whole


@WEIGHTINGS.register("capacity")
class Capacity(KLWeighting):
    """γ·|R − C(t)|; its state is the step and the sign of R − C of the last training batch."""

    @dataclass
    class Config(WeightingConfig):
        gamma: float = num(1000.0, 0.0)
        c_max: float = num(25.0, 0.0)
        c_steps: int | None = whole(None, 0, optional=True)
        c_fraction: float = num(1.0, 0.0)

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__(cfg, n_elements, n_latents, max_steps)
        self.gamma, self.c_max = self.config.gamma, self.config.c_max
        if self.config.c_steps is not None:
            self.c_steps = int(self.config.c_steps)
        else:
            fraction = self.config.c_fraction
            if self.max_steps is None:
                raise ConfigError("kl.c_steps", None, "a number of optimiser steps",
                                  "kl.c_fraction is a fraction of trainer.max_steps, which is "
                                  "not set (training by epochs)")
            self.c_steps = int(round(fraction * self.max_steps))
        self.last_gap: float | None = None  # R̄ − C of the last training batch

    def capacity(self, step: int) -> float:
        """C(t): Burgess et al. 2018, linear from 0 to C_max over ``c_steps`` steps."""
        if self.c_steps == 0 or step >= self.c_steps:
            return self.c_max
        return self.c_max * step / self.c_steps

    def schedule_end(self) -> int:
        return max(super().schedule_end(), self.c_steps)

    def progress(self, step: int) -> str:
        return (f"capacity {self.capacity(step):.3g} of {self.c_max:.3g} nats, "
                f"{super().progress(step)}")

    def gamma_eff(self) -> float:
        """γ in sum units (the beta_eff table of docs/pages/loss-contract.md, as for ``beta``), times the schedule."""
        g = beta_eff_from(self.gamma, self.reduction, self.n_elements, self.n_latents, False)
        return g * self.schedule(self.step)

    def trained_rate(self, kl_dim: torch.Tensor) -> torch.Tensor:
        """The batch-mean rate the capacity is compared with (free bits floor each dim)."""
        if self.free_bits > 0:
            return kl_dim.mean(0).clamp(min=self.free_bits).sum()
        return kl_dim.sum(1).mean()

    def base_beta_eff(self) -> float:
        # between batches: the sign of the last training batch (+ before any)
        gap = 1.0 if self.last_gap is None else self.last_gap
        sign = float((gap > 0) - (gap < 0))
        return beta_eff_from(self.gamma, self.reduction, self.n_elements, self.n_latents, False) * sign

    def forward(self, nll: torch.Tensor, kl_dim: torch.Tensor) -> LossTerms:
        g = self.gamma_eff()
        gap = self.trained_rate(kl_dim) - self.capacity(self.step)
        sign = float(torch.sign(gap.detach()))
        return assemble(nll, kl_dim, g * sign, self.scale, penalty=g * gap.abs())

    def observe(self, terms: LossTerms) -> None:
        gap = self.trained_rate(terms.kl_per_dim.detach()) - self.capacity(self.step)
        self.last_gap = float(gap)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "last_gap": self.last_gap}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.last_gap = state.get("last_gap")
