"""How the KL weight is set (``kl=``): fixed weights, and the base class for annealing and
controllers. Every weighting yields beta_eff (docs/pages/loss-contract.md) and keeps its state — the optimiser
step and any controller variables — in the module's extra state, so Lightning checkpoints
restore it and a resumed run continues with exactly the weight it had.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from vaesweep.kl.loss import REDUCTIONS, LossTerms, assemble, beta_eff_from, gradient_scale
from vaesweep.kl.schedules import build_schedule
#: MLflow tag of a run that ended before its KL schedule did (its text: :meth:`KLWeighting.unfinished`)
from vaesweep.contract import TAG_SCHEDULE_UNFINISHED as TAG_UNFINISHED  # noqa: F401 (re-exported)
from vaesweep.registry import Registry
from vaesweep.schema import Configured, PartConfig, num, one_of

WEIGHTINGS = Registry("KL weighting", "kl.name", package="vaesweep.kl")


@dataclass
class WeightingConfig(PartConfig):
    """The keys every weighting has. reduction: sum or mean (docs/pages/loss-contract.md); free_bits: floor in
    nats on each latent's batch-mean KL (Kingma et al. 2016), 0 = off. The ``schedule`` key
    is the kl/schedule group's node, checked as the schedule's."""

    own_first = True  # a weighting's own keys first, as the presets list them

    reduction: str = one_of("sum", REDUCTIONS)
    free_bits: float = num(0.0, 0.0)


class KLWeighting(Configured, nn.Module):
    """Base class: its ``Config`` dataclass (a :class:`WeightingConfig`) declares the
    weighting's keys with their defaults and ranges (:mod:`vaesweep.schema`); ``config`` is
    the checked one. Raises ConfigError naming ``kl.<key>``.

    The training loop calls ``forward`` on every batch, ``observe`` with the training terms,
    and ``advance`` once per optimiser step; validation calls ``forward`` only (frozen).
    """

    Config = WeightingConfig

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The ``kl`` keys of this weighting with their defaults (its own first, as the
        presets list them), without ``schedule`` (the kl/schedule group composes it)."""
        return cls.Config.defaults()

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__()
        self.config: Any = self.Config.validate(cfg, "kl", "this weighting", ignore=("schedule",))
        self.cfg = {**self.keys, "schedule": None, **{k: v for k, v in dict(cfg).items() if k != "name"}}
        self.reduction, self.free_bits = self.config.reduction, self.config.free_bits
        #: trainer.max_steps (None when training by epochs): the unit of schedule fractions
        self.max_steps = int(max_steps) if max_steps is not None and int(max_steps) > 0 else None
        self.schedule = build_schedule(self.cfg["schedule"], self.max_steps)
        self.n_elements, self.n_latents = int(n_elements), int(n_latents)
        self.scale = gradient_scale(self.reduction, self.n_elements)
        self.step = 0

    # -- the weight ---------------------------------------------------------------------
    def base_beta_eff(self) -> float:
        """beta_eff before the schedule's multiplier."""
        raise NotImplementedError

    def beta_eff(self) -> float:
        return self.base_beta_eff() * self.schedule(self.step)

    def schedule_end(self) -> int:
        """The optimiser step from which the weight follows its final rule (the schedule's
        :meth:`~vaesweep.kl.schedules.Schedule.end`; capacity and set-point ramps add theirs)."""
        return self.schedule.end()

    def unfinished(self, steps_done: int) -> str | None:
        """A sentence when training stopped at ``steps_done`` before :meth:`schedule_end`
        (the run never trained at its target weight), else None."""
        end = self.schedule_end()
        if steps_done >= end:
            return None
        return (f"training ended at step {steps_done}, before its KL schedule did (step {end}; "
                f"{self.progress(steps_done)}): give the schedule's lengths as fractions of "
                "trainer.max_steps (the default) or train longer")

    def progress(self, step: int) -> str:
        """Where the weighting's ramps stand at ``step``, in words (for :meth:`unfinished`)."""
        return f"the weight is at {self.schedule(step):.3g} of its target"

    def penalty(self, kl_dim: torch.Tensor, beta_eff: float) -> torch.Tensor | None:
        """The rate term trained on, when it is not beta_eff·R (free bits: Kingma et al. 2016,
        a floor of λ nats on each dimension's batch-mean KL)."""
        if self.free_bits > 0:
            return beta_eff * kl_dim.mean(0).clamp(min=self.free_bits).sum()
        return None

    def forward(self, nll: torch.Tensor, kl_dim: torch.Tensor) -> LossTerms:
        b = self.beta_eff()
        return assemble(nll, kl_dim, b, self.scale, self.penalty(kl_dim, b))

    # -- state over training --------------------------------------------------------------
    def observe(self, terms: LossTerms) -> None:
        """Training terms of one batch (controllers read them)."""

    def advance(self) -> None:
        """One optimiser step has been taken."""
        self.step += 1

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


@WEIGHTINGS.register("beta")
class Beta(KLWeighting):
    """A weight ``beta`` on R under the chosen reduction (``mean`` makes beta_eff = beta·N/M)."""

    @dataclass
    class Config(WeightingConfig):
        beta: float = num(1.0, 0.0)

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__(cfg, n_elements, n_latents, max_steps)
        self.weight = self.config.beta

    def base_beta_eff(self) -> float:
        return beta_eff_from(self.weight, self.reduction, self.n_elements, self.n_latents, False)


@WEIGHTINGS.register("beta_norm")
class BetaNorm(KLWeighting):
    """Higgins et al. 2017, App. A.6: beta_norm = beta·M/N, so beta_eff = beta_norm·N/M."""

    @dataclass
    class Config(WeightingConfig):
        beta_norm: float = num(0.1, 0.0)
        # reduction mean: the gradient scale of Higgins et al.'s normalised weight
        reduction: str = one_of("mean", REDUCTIONS)

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__(cfg, n_elements, n_latents, max_steps)
        self.weight = self.config.beta_norm

    def base_beta_eff(self) -> float:
        return beta_eff_from(self.weight, self.reduction, self.n_elements, self.n_latents, True)


def build_weighting(cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                    max_steps: int | None = None) -> KLWeighting:
    """The weighting of ``kl``: images of ``n_elements`` elements, ``n_latents`` latents;
    ``max_steps`` (trainer.max_steps) is the unit of the schedule's fractions."""
    return WEIGHTINGS.build(cfg["name"], cfg, n_elements, n_latents, max_steps)
