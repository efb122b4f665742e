"""KL weighting (``kl=``): beta_eff per the loss contract (docs/pages/loss-contract.md), schedules, free bits and controllers."""
from vaesweep.contract import kl_per_dim  # noqa: F401  (re-exported: the KL of the loss contract)
from vaesweep.kl.loss import LossTerms, assemble, beta_eff_from, gradient_scale
from vaesweep.kl.schedules import SCHEDULES, Schedule, build_schedule
from vaesweep.kl.weighting import WEIGHTINGS, KLWeighting, build_weighting

WEIGHTINGS.discover()  # imports every module of vaesweep.kl: a new weighting or schedule is one file

__all__ = ["LossTerms", "assemble", "beta_eff_from", "gradient_scale", "kl_per_dim",
           "SCHEDULES", "Schedule", "build_schedule", "WEIGHTINGS", "KLWeighting",
           "build_weighting"]
