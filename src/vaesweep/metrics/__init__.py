"""Metrics of both sides of the trade-off, as plain functions on arrays or a model, usable in
a notebook without a Trainer (docs/pages/metrics.md).

* reconstruction: :func:`rate_distortion`, :func:`mse`, :func:`psnr`, :func:`iwae_nll`,
  :func:`recon_variance_ratio` (how alike the reconstructions of different inputs are)
* latent: :func:`kl_per_dim`, :func:`rate`, :func:`active_units`, :func:`posterior_collapse`,
  :func:`total_correlation`, :func:`mutual_info`
* structure against factors (disentanglement_lib's definitions): :func:`mig`, :func:`sap`,
  :func:`dci`, :func:`factorvae_score`, :func:`betavae_score` (factor *classes*; discretise
  continuous factors first with :func:`histogram_discretize`); :class:`CodeCache` shares
  codes between them
* structure against labels: :func:`linear_probe_acc`, :func:`knn_acc`
* everything for a trained model: :func:`evaluate_model`
"""
from vaesweep.metrics._arrays import CodeCache
from vaesweep.metrics.disentanglement import betavae_score, dci, factorvae_score, mig, sap
from vaesweep.metrics.disentanglement.mig import histogram_discretize
from vaesweep.metrics.evaluate import DEFAULTS, METRICS, evaluate_model, resolve_settings
from vaesweep.metrics.iwae import iwae_nll, log_importance_weights, negative_elbo
from vaesweep.metrics.latent import (
    active_mask,
    active_units,
    aggregate_posterior_terms,
    collapsed_mask,
    kl_per_dim,
    mutual_info,
    posterior_collapse,
    rate,
    total_correlation,
)
from vaesweep.metrics.probes import knn_acc, linear_probe_acc
from vaesweep.metrics.rate_distortion import ReconVariance, mse, psnr, rate_distortion, recon_variance_ratio

__all__ = [
    "CodeCache", "DEFAULTS", "METRICS", "active_mask", "active_units", "aggregate_posterior_terms",
    "betavae_score", "collapsed_mask", "dci", "evaluate_model", "factorvae_score", "histogram_discretize",
    "iwae_nll", "kl_per_dim", "knn_acc",
    "linear_probe_acc", "log_importance_weights", "mig", "mse", "mutual_info", "negative_elbo",
    "posterior_collapse", "psnr", "rate", "rate_distortion", "recon_variance_ratio", "ReconVariance",
    "resolve_settings", "sap", "total_correlation",
]
