"""Schedules: a multiplier of the KL weight as a pure function of the optimiser step.

Schedules hold no state of their own; the step counter lives in the weighting module's
buffers, so checkpoints restore it and validation (which never steps) leaves it frozen.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from vaesweep.errors import ConfigError, number
from vaesweep.registry import Registry

SCHEDULES = Registry("schedule", "kl.schedule.name")


class Schedule:
    """Base class: ``keys`` are the accepted config keys with defaults."""

    keys: Mapping[str, Any] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.keys))
        if unknown:
            raise ConfigError(f"kl.schedule.{unknown[0]}", params[unknown[0]],
                              f"a key of this schedule: {sorted(self.keys) or 'none'}")
        self.params = {**self.keys, **params}

    def number(self, key: str, lo: float = 0.0, hi: float = math.inf, **kw: Any) -> float:
        return number(f"kl.schedule.{key}", self.params[key], lo, hi, **kw)

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@SCHEDULES.register("constant")
class Constant(Schedule):
    def __call__(self, step: int) -> float:
        return 1.0


@SCHEDULES.register("linear")
class Linear(Schedule):
    """Linear warm-up from ``start`` to 1 over ``steps`` optimiser steps, then 1."""

    keys = {"start": 0.0, "steps": 10000}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.start = self.number("start", 0.0, 1.0)
        self.steps = self.number("steps", 0, integer=True)

    def __call__(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * step / self.steps


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
    in (0, 1), 1/2 at ``midpoint``."""

    keys = {"k": 0.0025, "midpoint": 2500}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.k = self.number("k", 0.0, lo_open=True)
        self.midpoint = self.number("midpoint", 0.0)

    def __call__(self, step: int) -> float:
        return _logistic(self.k * (step - self.midpoint))


@SCHEDULES.register("cyclical")
class Cyclical(Schedule):
    """Fu et al. 2019: ``total_steps`` split into ``n_cycles`` cycles; the first
    ``ratio`` of each cycle rises from ``start`` to 1 (``shape`` linear or cosine), the rest
    holds 1. After ``total_steps``: 1."""

    keys = {"n_cycles": 4, "ratio": 0.5, "total_steps": 10000, "shape": "linear", "start": 0.0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.n_cycles = self.number("n_cycles", 1, integer=True)
        self.total_steps = self.number("total_steps", 1, integer=True)
        self.ratio = self.number("ratio", 0.0, 1.0, lo_open=True)
        self.start = self.number("start", 0.0, 1.0)
        if self.params["shape"] not in RAMPS:
            raise ConfigError("kl.schedule.shape", self.params["shape"], sorted(RAMPS))
        self.ramp = RAMPS[self.params["shape"]]

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


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Warm-up from ``start`` to 1 over ``steps`` optimiser steps along a half cosine
    (flat at both ends), then 1."""

    keys = {"start": 0.0, "steps": 10000}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.start = self.number("start", 0.0, 1.0)
        self.steps = self.number("steps", 0, integer=True)

    def __call__(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * RAMPS["cosine"](step / self.steps)


def build_schedule(cfg: Mapping[str, Any] | None) -> Schedule:
    cfg = dict(cfg or {"name": "constant"})
    name = cfg.pop("name", "constant")
    return SCHEDULES.build(name, **cfg)
