"""Schedules: a multiplier of the KL weight as a pure function of the optimiser step.

Schedules hold no state of their own; the step counter lives in the weighting module's
buffers, so checkpoints restore it and validation (which never steps) leaves it frozen.

Lengths are fractions of the run by default (``fraction``, ``midpoint_fraction``, ...: of
``trainer.max_steps``, which the module passes as ``max_steps``), so a schedule reaches its
target within any run length; an absolute length in optimiser steps (``steps``,
``midpoint``, ``k``, ``total_steps``) wins when it is set. :meth:`Schedule.end` is the step
from which the multiplier has (within 1%) reached 1: a run that stops before it never
trained at its target weight (the job warns and tags the run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from vaesweep.errors import ConfigError
from vaesweep.registry import Registry
from vaesweep.schema import Configured, PartConfig, num, one_of, positive, whole

SCHEDULES = Registry("schedule", "kl.schedule.name", package="vaesweep.kl")


class Schedule(Configured):
    """Base class: its ``Config`` dataclass declares the accepted config keys with their
    defaults and ranges (:mod:`vaesweep.schema`); ``config`` is the checked one. Raises
    ConfigError naming ``kl.schedule.<key>``."""

    Config = PartConfig

    def __init__(self, max_steps: int | None = None, **params: Any) -> None:
        self.config: Any = self.Config.validate(params, "kl.schedule", "this schedule")
        self.params = {**self.keys, **params}
        #: trainer.max_steps (None when training by epochs), the unit of the fractions
        self.max_steps = int(max_steps) if max_steps is not None and int(max_steps) > 0 else None

    def length(self, steps_key: str, fraction_key: str, lo: int = 0) -> int:
        """A length in optimiser steps: ``steps_key`` when set, else ``fraction_key`` times
        trainer.max_steps (rounded, at least ``lo``). Raises ConfigError when neither can be
        had (a fraction of a run trained by epochs)."""
        steps = getattr(self.config, steps_key)
        if steps is not None:
            return int(steps)
        fraction = getattr(self.config, fraction_key)
        if self.max_steps is None:
            raise ConfigError(f"kl.schedule.{steps_key}", None,
                              "a number of optimiser steps",
                              f"kl.schedule.{fraction_key} is a fraction of trainer.max_steps, "
                              "which is not set (training by epochs)")
        return max(lo, int(round(fraction * self.max_steps)))

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def end(self) -> int:
        """The first step from which the multiplier is within 1% of 1 for good."""
        return 0


@SCHEDULES.register("constant")
class Constant(Schedule):
    def __call__(self, step: int) -> float:
        return 1.0


@SCHEDULES.register("linear")
class Linear(Schedule):
    """Linear warm-up from ``start`` to 1 over ``steps`` optimiser steps (default: half of
    trainer.max_steps, ``fraction`` 0.5), then 1."""

    @dataclass
    class Config(PartConfig):
        start: float = num(0.0, 0.0, 1.0)
        steps: int | None = whole(None, 0, optional=True)
        fraction: float = num(0.5, 0.0)

    def __init__(self, max_steps: int | None = None, **params: Any) -> None:
        super().__init__(max_steps, **params)
        self.start = self.config.start
        self.steps = self.length("steps", "fraction")

    def __call__(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * step / self.steps

    def end(self) -> int:
        return self.steps


#: Ramp shapes p -> multiplier on [0, 1], increasing from 0 to 1; shared by the schedules
#: that rise (a new shape is one entry here, usable by every rising schedule).
RAMPS = {
    "linear": lambda p: p,
    # Fu et al. 2019's cosine cycle: 0.5 − 0.5·cos(πp)
    "cosine": lambda p: 0.5 - 0.5 * math.cos(math.pi * p),
}


def _logistic(z: float) -> float:
    """1 / (1 + e^(−z)) without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@SCHEDULES.register("sigmoid")
class Sigmoid(Schedule):
    """Bowman et al. 2016: a logistic KL annealing 1 / (1 + exp(−k·(step − midpoint))),
    in (0, 1), 1/2 at ``midpoint``.

    By default ``midpoint`` is a quarter of trainer.max_steps (``midpoint_fraction``) and
    ``k`` is ``k_run``/trainer.max_steps (10 per run: 0.08 at step 0, 0.99 at 71% of the
    run); absolute ``midpoint`` (steps) and ``k`` (per step) win when set."""

    @dataclass
    class Config(PartConfig):
        k: float | None = positive(None, optional=True)
        k_run: float = positive(10.0)
        midpoint: float | None = num(None, 0.0, optional=True)
        midpoint_fraction: float = num(0.25, 0.0)

    def __init__(self, max_steps: int | None = None, **params: Any) -> None:
        super().__init__(max_steps, **params)
        if self.config.k is not None:
            self.k = self.config.k
        else:
            k_run = self.config.k_run
            if self.max_steps is None:
                raise ConfigError("kl.schedule.k", None, "a slope per optimiser step",
                                  "kl.schedule.k_run is per run of trainer.max_steps, "
                                  "which is not set (training by epochs)")
            self.k = k_run / self.max_steps
        self.midpoint = (self.config.midpoint if self.config.midpoint is not None
                         else self.length("midpoint", "midpoint_fraction"))

    def __call__(self, step: int) -> float:
        return _logistic(self.k * (step - self.midpoint))

    def end(self) -> int:
        # logistic(z) >= 0.99 from z = ln 99
        return max(0, math.ceil(self.midpoint + math.log(99.0) / self.k))


@SCHEDULES.register("cyclical")
class Cyclical(Schedule):
    """Fu et al. 2019: ``total_steps`` split into ``n_cycles`` cycles; the first
    ``ratio`` of each cycle rises from ``start`` to 1 (``shape`` linear or cosine), the rest
    holds 1. After ``total_steps``: 1. ``total_steps`` defaults to ``fraction`` (1.0) of
    trainer.max_steps: the paper's cycles span the whole training."""

    @dataclass
    class Config(PartConfig):
        n_cycles: int = whole(4, 1)
        ratio: float = num(0.5, 0.0, 1.0, lo_open=True)
        total_steps: int | None = whole(None, 1, optional=True)
        fraction: float = num(1.0, 0.0)
        shape: str = one_of("linear", sorted(RAMPS))
        start: float = num(0.0, 0.0, 1.0)

    def __init__(self, max_steps: int | None = None, **params: Any) -> None:
        super().__init__(max_steps, **params)
        self.n_cycles = self.config.n_cycles
        self.total_steps = self.length("total_steps", "fraction", lo=1)
        self.ratio, self.start = self.config.ratio, self.config.start
        self.ramp = RAMPS[self.config.shape]

    def phase(self, step: int) -> float:
        """Position in the current cycle, in [0, 1): Fu et al.'s τ = mod(t−1, ⌈T/M⌉)/(T/M)
        with a real-valued period T/M, in exact integer arithmetic: (step·M mod T) / T."""
        return (step * self.n_cycles % self.total_steps) / self.total_steps

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return 1.0
        tau = self.phase(step)
        if tau >= self.ratio:
            return 1.0
        return self.start + (1.0 - self.start) * self.ramp(tau / self.ratio)

    def end(self) -> int:
        # the last cycle's rise ends at (n − 1 + ratio)/n of total_steps
        return math.ceil(self.total_steps * (self.n_cycles - 1 + self.ratio) / self.n_cycles)


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Warm-up from ``start`` to 1 over ``steps`` optimiser steps (default: half of
    trainer.max_steps, ``fraction`` 0.5) along a half cosine (flat at both ends), then 1."""

    Config = Linear.Config  # the same keys: start, steps, fraction

    def __init__(self, max_steps: int | None = None, **params: Any) -> None:
        super().__init__(max_steps, **params)
        self.start = self.config.start
        self.steps = self.length("steps", "fraction")

    def end(self) -> int:
        return self.steps

    def __call__(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * RAMPS["cosine"](step / self.steps)


def build_schedule(cfg: Mapping[str, Any] | None, max_steps: int | None = None) -> Schedule:
    """The schedule of ``kl.schedule``; ``max_steps`` (trainer.max_steps, None or ≤ 0 when
    training by epochs) is the unit of its fractions."""
    cfg = dict(cfg or {"name": "constant"})
    name = cfg.pop("name", "constant")
    return SCHEDULES.build(name, max_steps, **cfg)
