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


def build_schedule(cfg: Mapping[str, Any] | None) -> Schedule:
    cfg = dict(cfg or {"name": "constant"})
    name = cfg.pop("name", "constant")
    return SCHEDULES.build(name, **cfg)
