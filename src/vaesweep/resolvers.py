"""OmegaConf resolvers the configs use (registered when vaesweep's CLI or configs load)."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from vaesweep.kl.loss import beta_eff_from, loss_beta_eff


def beta_for(reduction: str, beta_eff: float, n_elements: int, n_latents: int) -> float:
    """The ``beta`` under ``reduction`` whose beta_eff is ``beta_eff`` (docs/pages/loss-contract.md): beta_eff
    for ``sum``, beta_eff·M/N for ``mean``."""
    return float(beta_eff) / beta_eff_from(1.0, reduction, int(n_elements), int(n_latents), False)


def typed_loss_beta_eff(n_elements: Any, n_latents: Any, rec: Any, kl: Any,
                        rec_weight: Any, kl_weight: Any) -> float:
    """beta_eff of a loss written ``rec_weight·rec_red(D) + kl_weight·kl_red(R)`` (reductions
    ``sum`` or ``mean`` over the N elements / M latents), as ``vaesweep convert`` prints it:
    :func:`vaesweep.kl.loss.loss_beta_eff`. Raises ValueError for an unknown reduction."""
    return loss_beta_eff(int(n_elements), int(n_latents), str(rec), str(kl),
                         float(rec_weight), float(kl_weight))


def steps_at(total: int, fraction: float) -> int:
    """``fraction`` of a run of ``total`` optimiser steps, as a whole number of steps."""
    return int(round(int(total) * float(fraction)))


def div(a: float, b: float) -> float:
    return float(a) / float(b)


RESOLVERS = {"div": div, "beta_for": beta_for, "steps_at": steps_at,
             "loss_beta_eff": typed_loss_beta_eff}


def register() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, fn)


register()

# every part's defaults, which the YAML presets start from (vaesweep.parts); here because every
# entry point that composes a config imports this module first
from vaesweep.parts import register_schemas  # noqa: E402

register_schemas()
