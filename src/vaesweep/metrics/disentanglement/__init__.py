"""Disentanglement scores against ground-truth factors, with disentanglement_lib's definitions
and defaults (Locatello et al. 2019): MIG, SAP, DCI, FactorVAE and beta-VAE scores."""
from vaesweep.metrics.disentanglement.betavae import betavae_score
from vaesweep.metrics.disentanglement.dci import dci, importance_matrix
from vaesweep.metrics.disentanglement.factorvae import factorvae_score
from vaesweep.metrics.disentanglement.gbt import BinnedGradientBoosting
from vaesweep.metrics.disentanglement.mig import mig
from vaesweep.metrics.disentanglement.sap import sap

__all__ = ["BinnedGradientBoosting", "betavae_score", "dci", "factorvae_score", "importance_matrix", "mig", "sap"]
