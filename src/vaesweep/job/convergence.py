"""Stop a run when it has converged, by the rule the study report judges every run with
(docs/pages/studies.md): its validation ELBO changes by less than ``rtol`` (1 %) over its last
``window`` (20 %) of steps. ``trainer.max_steps`` stays the cap: a run that reaches it without
converging is tagged so, never hidden.

Config (``convergence.*``, checked with the job's keys before any run is created):
``stop`` (false: train to ``trainer.max_steps``, the committed studies' setting), ``rtol``,
``window`` and ``min_steps`` (no stop before this step)."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from lightning.pytorch.callbacks import Callback

from vaesweep.contract import CONVERGED_RTOL, CONVERGED_WINDOW, elbo_change
from vaesweep.errors import ConfigError, flag, known_keys, number
from vaesweep.tracking.tags import set_tags

log = logging.getLogger(__name__)

#: the run's MLflow tags: why training stopped (``converged`` or ``cap``) and at which step
TAG_STOP, TAG_STOP_STEP = "vaesweep.stop", "vaesweep.stop_step"
#: the validation metric the rule reads
MONITOR = "val/elbo"
DEFAULTS: dict[str, Any] = {"stop": False, "rtol": CONVERGED_RTOL, "window": CONVERGED_WINDOW,
                            "min_steps": 0}


def settings(c: Mapping[str, Any]) -> dict[str, Any]:
    """``convergence.*`` of the resolved config ``c`` with the defaults filled in; raises
    ConfigError naming the first bad key, or a combination that cannot stop: ``stop=true``
    without validation data (``data.val_fraction=0``) or with fewer than two validations
    within ``trainer.max_steps``."""
    given = dict(c.get("convergence") or {})
    known_keys("convergence", given, DEFAULTS, "convergence")
    s = {**DEFAULTS, **given}
    s["stop"] = flag("convergence.stop", s["stop"])
    s["rtol"] = number("convergence.rtol", s["rtol"], 0.0, 1.0, lo_open=True)
    s["window"] = number("convergence.window", s["window"], 0.0, 1.0, lo_open=True, hi_open=True)
    s["min_steps"] = int(number("convergence.min_steps", s["min_steps"], 0, integer=True))
    if s["stop"]:
        data, trainer = c.get("data") or {}, c.get("trainer") or {}
        if float(data.get("val_fraction", 0.05) or 0) == 0:
            raise ConfigError("convergence.stop", True, "false when data.val_fraction=0 "
                              "(the rule reads the validation ELBO)")
        every, cap = trainer.get("val_check_interval"), trainer.get("max_steps", -1)
        if isinstance(every, int) and not isinstance(every, bool) and isinstance(cap, int) \
                and cap > 0 and 2 * every > cap:
            raise ConfigError("convergence.stop", True, "true only with two validations or more "
                              f"in the run: trainer.val_check_interval={every} is more than half "
                              f"of trainer.max_steps={cap}")
    return s


def callbacks(c: Mapping[str, Any], run: Any) -> list[Callback]:
    """``[ConvergenceStop]`` when ``convergence.stop`` is true in the resolved config ``c``,
    else ``[]``."""
    s = settings(c)
    if not s["stop"]:
        return []
    return [ConvergenceStop(run, s["rtol"], s["window"], s["min_steps"])]


class ConvergenceStop(Callback):
    """Stops training at the first validation where :func:`elbo_change` of the history so far
    is below ``rtol`` (and the step is at least ``min_steps``), and tags the run with why it
    stopped (:data:`TAG_STOP`: ``converged`` or ``cap``) and where (:data:`TAG_STOP_STEP`).
    The history is part of the checkpoint, so a resumed run continues it."""

    def __init__(self, run: Any, rtol: float = CONVERGED_RTOL, window: float = CONVERGED_WINDOW,
                 min_steps: int = 0, monitor: str = MONITOR) -> None:
        self.run, self.rtol, self.window, self.min_steps = run, rtol, window, min_steps
        self.monitor = monitor
        self.steps: list[int] = []
        self.values: list[float] = []
        self.converged_at: int | None = None

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        step = int(trainer.global_step)
        if self.steps and step <= self.steps[-1]:  # a repeated validation of the same step
            return
        self.steps.append(step)
        self.values.append(float(trainer.callback_metrics[self.monitor]))
        ends = elbo_change(self.steps, self.values, self.window)
        if ends is not None and ends[2] < self.rtol and step >= self.min_steps:
            self.converged_at = step
            trainer.should_stop = True
            log.info("converged at step %d: %s moved %.2g %% over the last %.0f %% of steps; "
                     "stopping", step, self.monitor, 100 * ends[2], 100 * self.window)

    def on_train_end(self, trainer, module) -> None:
        step = int(trainer.global_step)
        reason = "converged" if self.converged_at is not None else "cap"
        set_tags(self.run.client, self.run.run_id, {TAG_STOP: reason, TAG_STOP_STEP: step})

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "values": list(self.values),
                "converged_at": self.converged_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state.get("steps", [])]
        self.values = [float(v) for v in state.get("values", [])]
        self.converged_at = state.get("converged_at")
