"""Controllers: weightings that set the KL weight from feedback on the training batches.

Both read the training terms in :meth:`observe` (possibly several batches per optimiser step,
under gradient accumulation) and update once per optimiser step in :meth:`advance`, from the
mean of what they saw since the last step. Validation and test call neither, so the weight is
frozen there. Their variables live in the module's extra state (checkpoints).

ControlVAE's weight is written in the units of ``kl.reduction`` like ``beta`` (``sum``:
beta_eff is the weight itself; ``mean``: weight·N/M); GECO's follows from its constraint
(beta_eff = N/λ under either reduction). A schedule multiplies either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from vaesweep.errors import number
from vaesweep.kl.loss import LossTerms, beta_eff_from
from vaesweep.kl.weighting import WEIGHTINGS, KLWeighting, WeightingConfig
from vaesweep.schema import num, positive, whole


class Controller(KLWeighting):
    """Base of the controllers: averages one observed quantity over the batches of a step."""

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__(cfg, n_elements, n_latents, max_steps)
        self._sum, self._count = 0.0, 0

    def measure(self, terms: LossTerms) -> float:
        """The quantity fed back from one training batch."""
        raise NotImplementedError

    def update(self, value: float, step: int) -> None:
        """One controller update with the step's mean measurement; ``step`` is the step that
        produced it."""
        raise NotImplementedError

    def weight(self) -> float:
        """The controller's KL weight, in the units of ``kl.reduction``."""
        raise NotImplementedError

    def base_beta_eff(self) -> float:
        return beta_eff_from(self.weight(), self.reduction, self.n_elements, self.n_latents, False)

    def observe(self, terms: LossTerms) -> None:
        self._sum += self.measure(terms)
        self._count += 1

    def advance(self) -> None:
        if self._count:
            self.update(self._sum / self._count, self.step)
        self._sum, self._count = 0.0, 0
        super().advance()

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "pending": [self._sum, self._count]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self._sum, self._count = float(state["pending"][0]), int(state["pending"][1])


@WEIGHTINGS.register("geco")
class GECO(Controller):
    """GECO (Rezende & Viola 2018, "Taming VAEs", Alg. 1): minimise R subject to a distortion
    constraint C = D/N − κ ≤ 0 per element, with Lagrange multiplier λ on C:

        C_ma ← α·C_ma + (1 − α)·C_t   (C_ma = C_1 at the first step)
        λ ← clamp(λ·exp(ν·C_ma), λ_min, λ_max)

    Their Lagrangian R + λ·C = R + (λ/N)·D − λκ is (λ/N)·(D + (N/λ)·R) plus a constant, so
    the weight on R that its gradients see, relative to D, is beta_eff = N/λ whatever
    ``kl.reduction``. Within the loss contract GECO trains on ``scale·mean[D + (N/λ)·R]`` (the
    reduction only sets ``scale``: 1 or 1/N); this drops the paper's overall factor λ/N,
    which changes the gradient's size, not its direction (Adam mostly ignores it). The
    logged beta_eff is N/λ: the ELBO is λ = N.

    λ rises by up to exp(ν·C_ma) a step while the distortion is above target, but falls by at
    most exp(ν·κ) a step (C ≥ −κ when D ≥ 0): with ν·κ = 0.001, λ needs at least 4,600 steps
    to fall by a factor 100 (beta_eff to rise by 100). ``beta_eff_init`` (when set) starts at
    λ = N/beta_eff_init instead of ``lambda_init``.
    """

    @dataclass
    class Config(WeightingConfig):
        kappa: float = num(0.01)
        alpha: float = num(0.99, 0.0, 1.0, hi_open=True)
        nu: float = positive(0.1)
        lambda_init: float = num(1.0)
        # its range, [N/lambda_max, N/lambda_min], needs N: checked when the weighting is built
        beta_eff_init: float | None = num(None, optional=True)
        lambda_min: float = positive(1e-3)
        lambda_max: float = num(1e5)

        def check(self, prefix: str) -> None:
            number(f"{prefix}.lambda_max", self.lambda_max, self.lambda_min)
            if self.beta_eff_init is None:
                number(f"{prefix}.lambda_init", self.lambda_init, self.lambda_min, self.lambda_max)

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__(cfg, n_elements, n_latents, max_steps)
        c = self.config
        self.kappa, self.alpha, self.nu = c.kappa, c.alpha, c.nu
        self.lambda_min, self.lambda_max = c.lambda_min, c.lambda_max
        if c.beta_eff_init is not None:
            n = self.n_elements
            b0 = number("kl.beta_eff_init", c.beta_eff_init, n / self.lambda_max,
                        n / self.lambda_min)
            self.lam = n / b0
        else:
            self.lam = c.lambda_init
        self.c_ma: float | None = None

    def measure(self, terms: LossTerms) -> float:
        """The constraint per element, D/N − κ, on the batch mean."""
        return float(terms.distortion.detach().mean()) / self.n_elements - self.kappa

    def update(self, value: float, step: int) -> None:
        self.c_ma = value if self.c_ma is None else self.alpha * self.c_ma + (1 - self.alpha) * value
        # in log space, so a large constraint cannot overflow exp
        log_lam = math.log(self.lam) + self.nu * self.c_ma
        self.lam = math.exp(min(max(log_lam, math.log(self.lambda_min)), math.log(self.lambda_max)))

    def weight(self) -> float:
        """N/λ: beta_eff itself, not in the units of ``kl.reduction`` (see the class)."""
        return self.n_elements / self.lam

    def base_beta_eff(self) -> float:
        return self.weight()

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "lambda": self.lam, "c_ma": self.c_ma}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.lam, self.c_ma = float(state["lambda"]), state["c_ma"]


@WEIGHTINGS.register("controlvae")
class ControlVAE(Controller):
    """ControlVAE (Shao et al. 2020, Alg. 1): a PI controller holding the rate R at a set
    point v (rising linearly from ``target_start`` to ``target`` over ``target_steps``):

        e = v − R,  P = Kp / (1 + exp(e)),  I ← I − Ki·e,  β = clamp(P + I + β_min, β_min, β_max)

    Anti-windup: I is left unchanged while the unclamped β is outside [β_min, β_max] *and* e
    would push it further out (the paper's test on the clamped β(t−1) never triggers, and
    freezing I whenever β is out of range can lock it there). β starts at β_min.
    """

    @dataclass
    class Config(WeightingConfig):
        target: float = num(18.0, 0.0)
        target_start: float = num(0.5, 0.0)
        target_steps: int = whole(0, 0)
        kp: float = num(0.01, 0.0)
        ki: float = num(0.0001, 0.0)
        beta_min: float = num(0.0, 0.0)
        beta_max: float = num(1000.0)

        def check(self, prefix: str) -> None:
            number(f"{prefix}.beta_max", self.beta_max, self.beta_min)

    def __init__(self, cfg: Mapping[str, Any], n_elements: int, n_latents: int,
                 max_steps: int | None = None) -> None:
        super().__init__(cfg, n_elements, n_latents, max_steps)
        c = self.config
        self.target, self.target_start, self.target_steps = c.target, c.target_start, c.target_steps
        self.kp, self.ki, self.beta_min, self.beta_max = c.kp, c.ki, c.beta_min, c.beta_max
        self.integral = 0.0
        self.beta = self.raw_beta = self.beta_min

    def set_point(self, step: int) -> float:
        """The desired rate at ``step``."""
        if self.target_steps == 0 or step >= self.target_steps:
            return self.target
        return self.target_start + (self.target - self.target_start) * step / self.target_steps

    def schedule_end(self) -> int:
        return max(super().schedule_end(), self.target_steps)

    def progress(self, step: int) -> str:
        return (f"set point {self.set_point(step):.3g} of {self.target:.3g} nats, "
                f"{super().progress(step)}")

    def measure(self, terms: LossTerms) -> float:
        return float(terms.rate.detach().mean())

    def update(self, value: float, step: int) -> None:
        e = self.set_point(step) - value
        # Kp / (1 + exp(e)) = Kp·sigmoid(−e), without overflow
        p = self.kp * (math.exp(-e) / (1 + math.exp(-e)) if e > 0 else 1 / (1 + math.exp(e)))
        saturated_up = self.raw_beta > self.beta_max and e < 0
        saturated_down = self.raw_beta < self.beta_min and e > 0
        if not (saturated_up or saturated_down):
            self.integral -= self.ki * e
        self.raw_beta = p + self.integral + self.beta_min
        self.beta = min(max(self.raw_beta, self.beta_min), self.beta_max)

    def weight(self) -> float:
        return self.beta

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "beta": self.beta, "raw_beta": self.raw_beta,
                "integral": self.integral}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.beta, self.raw_beta = float(state["beta"]), float(state["raw_beta"])
        self.integral = float(state["integral"])
