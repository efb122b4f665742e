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


def register() -> None:
    if not OmegaConf.has_resolver("beta_equivalent"):
        OmegaConf.register_resolver("beta_equivalent", beta_equivalent)


register()
