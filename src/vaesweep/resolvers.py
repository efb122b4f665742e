"""OmegaConf resolvers the configs use (registered when vaesweep's CLI or configs load)."""
from __future__ import annotations

from omegaconf import OmegaConf

from vaesweep.kl.loss import beta_eff_from


def beta_equivalent(reduction: str, b: float, n_elements: int, n_latents: int) -> float:
    """The ``beta`` under ``reduction`` that gives the same beta_eff as beta = b under
    ``mean``: b·N/M for ``sum``, b for ``mean`` (DESIGN §1)."""
    if reduction == "sum":
        return beta_eff_from(float(b), "mean", int(n_elements), int(n_latents), False)
    return float(b)


def steps_at(total: int, fraction: float) -> int:
    """``fraction`` of a run of ``total`` optimiser steps, as a whole number of steps."""
    return int(round(int(total) * float(fraction)))


def div(a: float, b: float) -> float:
    return float(a) / float(b)


RESOLVERS = {"div": div, "beta_equivalent": beta_equivalent, "steps_at": steps_at}


def register() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, fn)


register()
