"""End-of-training evaluation: every ``test/*`` metric (docs/pages/metrics.md) for a model.

``evaluate_model(module, imageset, test_idx, cfg_metrics, seed)`` needs from ``module``:
``encode(x) -> (mu, logvar)``, ``log_likelihood(x, z) -> (B,)``, ``represent(x) -> mu`` and
``reconstruct(x) -> mean image``; from ``imageset``: ``batch(idx)``, ``factors``, ``labels``
and, for the FactorVAE and beta-VAE scores, ``factor_sizes``, ``sample_factors`` and
``render``. Everything runs under ``torch.no_grad()`` in eval mode, batched, and is seeded by
``seed``: each metric draws from its own stream, so turning one off changes no other.

Settings: the ``metrics:`` config group. Their defaults and what each means are in one place,
``conf/metrics/default.yaml`` (:data:`DEFAULTS` is read from it); :func:`resolve_settings`
checks them.
"""
from __future__ import annotations

import importlib.resources
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from vaesweep.errors import ConfigError, choice, flag, known_keys, number
from vaesweep.integers import as_integers
from vaesweep.likelihood.gaussian_optimal import fix_sigma_for_evaluation
from vaesweep.metrics._arrays import CodeCache, codes_for_classes, to_numpy
from vaesweep.metrics.disentanglement import betavae_score, dci, factorvae_score, mig, sap
from vaesweep.metrics.iwae import CPU_PASS_PAIRS, iwae_nll
from vaesweep.metrics.latent import active_units, aggregate_posterior_terms
from vaesweep.metrics.probes import knn_acc, linear_probe_acc
from vaesweep.metrics.rate_distortion import ReconVariance, mse, psnr

log = logging.getLogger(__name__)

#: metric names accepted by ``metrics.enabled`` (``dci`` gives the three dci_* keys)
METRICS = ("iwae_nll", "mse", "psnr", "recon_variance_ratio", "active_units", "total_correlation", "mutual_info", "mig", "sap",
           "dci", "factorvae_score", "betavae_score", "linear_probe_acc", "knn_acc")
FACTOR_METRICS = ("mig", "sap", "dci", "factorvae_score", "betavae_score")
LABEL_METRICS = ("linear_probe_acc", "knn_acc")

#: the metric settings' defaults: read from the package's ``conf/metrics/default.yaml``, their
#: one copy (the ``metrics=default`` preset the composed config starts from)
DEFAULTS: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(
    (importlib.resources.files("vaesweep") / "conf" / "metrics" / "default.yaml").read_text()))
_CHOICES = {"tc_estimator": ("mss", "mws"), "structure_source": ("sample", "test"),
            "dci_estimator": ("binned", "sklearn")}
_BOOLS = ("sap_standardize", "betavae_standardize")
_FLOATS = {"active_threshold": (0.0, float("inf")), "factorvae_prune_threshold": (0.0, float("inf"))}
_MINIMUM = {"factorvae_batch_size": 2, "betavae_batch_size": 1, "mig_bins": 2, "dci_max_bins": 2, "tc_points": 2,
            "num_points": 2, "num_test_points": 1, "code_cache": 0}
# stream of each metric's random draws: default_rng([seed, stream]). Written out, not
# numbered from METRICS' order: a metric added to that list must not move the others' draws
# (inserting recon_variance_ratio at 4 moved every later stream once, between the committed
# quick study at 00852b4 and the studies run since; probe and kNN subsamples changed with it)
_STREAM = {"iwae_nll": 1, "mse": 2, "psnr": 3, "recon_variance_ratio": 4, "active_units": 5,
           "total_correlation": 6, "mutual_info": 7, "mig": 8, "sap": 9, "dci": 10,
           "factorvae_score": 11, "betavae_score": 12, "linear_probe_acc": 13, "knn_acc": 14}
assert set(_STREAM) == set(METRICS), "every metric needs its own stream"


def resolve_settings(cfg_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`DEFAULTS` updated by ``cfg_metrics``, every value checked; a bad key or value
    raises a ConfigError naming ``metrics.<key>``. ``enabled`` becomes a tuple of names."""
    cfg = dict(cfg_metrics or {})
    known_keys("metrics", cfg, DEFAULTS, "the metric settings")
    s = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    enabled = s["enabled"]
    if isinstance(enabled, bool):
        s["enabled"] = METRICS if enabled else ()
    elif isinstance(enabled, str) or not hasattr(enabled, "__iter__"):
        raise ConfigError("metrics.enabled", enabled, f"true, false or a list of {', '.join(METRICS)}")
    else:
        names = tuple(str(n) for n in enabled)
        for name in names:
            if name not in METRICS:
                raise ConfigError("metrics.enabled", name, METRICS)
        s["enabled"] = names
    for key, value in s.items():
        if key == "enabled":
            continue
        if key == "preset":
            if not isinstance(value, str) or not value:
                raise ConfigError("metrics.preset", value, "a name (that of the metrics= settings)")
            continue
        if key in _CHOICES:
            choice(f"metrics.{key}", value, _CHOICES[key])
        elif key in _BOOLS:
            flag(f"metrics.{key}", value)
        elif key in _FLOATS:
            s[key] = number(f"metrics.{key}", value, *_FLOATS[key])
        else:
            s[key] = number(f"metrics.{key}", value, _MINIMUM.get(key, 1), integer=True)
    return s


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _device(module: Any) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _choose(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct entries of ``idx`` in random order (all of them when there are fewer)."""
    return rng.permutation(idx)[: min(n, len(idx))]


def _batched(fn: Callable[[torch.Tensor], Any], device: torch.device,
             batch_size: int) -> Callable[[torch.Tensor], np.ndarray]:
    def run(images: torch.Tensor) -> np.ndarray:
        out = [to_numpy(fn(images[i:i + batch_size].to(device))) for i in range(0, len(images), batch_size)]
        return np.concatenate(out, axis=0)
    return run


#: images per encoder or decoder call on a CPU, at most: conv64's first activation is 128 KB
#: an image, and a call of 256 (32 MB) crosses the size above which glibc (as
#: train.tune_allocator sets it) maps fresh pages for each call and faults them in again:
#: encoding ran about twice as fast in calls of 128 (benchmarks/RESULTS.md, issue 13). Codes
#: do not depend on the call size.
_CPU_CALL_IMAGES = 128


def _call_size(batch_size: int, device: torch.device) -> int:
    return batch_size if device.type != "cpu" else min(batch_size, _CPU_CALL_IMAGES)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        log.info("metrics: %s in %.1f s", name, self.seconds[name])


def evaluate_model(module: Any, imageset: Any, test_idx: Any, cfg_metrics: Mapping[str, Any] | None,
                   seed: int, *, train_idx: Any = None) -> dict[str, float]:
    """The ``test/*`` metrics (docs/pages/metrics.md) for ``module`` on ``imageset``.

    Reconstruction and latent metrics use images of ``test_idx``; structure metrics need
    ``imageset.factors``, the probes ``imageset.labels`` (trained on ``train_idx`` images when
    given, else on part of ``test_idx`` and scored on the rest). Keys of disabled or
    inapplicable metrics are absent.
    """
    s = resolve_settings(cfg_metrics)
    enabled = set(s["enabled"])
    out: dict[str, float] = {}
    if not enabled:
        return out
    test_idx = as_integers(test_idx, "test_idx", "integer image indices").reshape(-1)
    if len(test_idx) == 0:
        raise ValueError("evaluate_model: test_idx is empty")
    device = _device(module)
    bs = s["batch_size"]
    calls = _call_size(bs, device)
    rngs = {name: np.random.default_rng([int(seed), stream]) for name, stream in _STREAM.items()}
    timer = _Timer()

    def encode_idx(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mus, logvars = [], []
        for i in range(0, len(idx), calls):
            mu, logvar = module.encode(imageset.batch(idx[i:i + calls]).to(device))
            mus.append(to_numpy(mu))
            logvars.append(to_numpy(logvar))
        return np.concatenate(mus), np.concatenate(logvars)

    with _eval_mode(module):
        # σ-VAE: σ fixed before evaluating, so no example depends on its batch or IWAE chunk
        # (from the training images; from the evaluated ones when train_idx is not given)
        fix_sigma_for_evaluation(module, imageset, test_idx if train_idx is None else train_idx,
                                 batch_size=bs, seed=int(seed))
        if enabled & {"mse", "psnr", "recon_variance_ratio"}:
            with timer("mse/psnr"):
                idx = _choose(test_idx, s["recon_points"], rngs["mse"])
                mses, psnrs, spread = [], [], ReconVariance()
                for i in range(0, len(idx), calls):
                    x = imageset.batch(idx[i:i + calls]).to(device)
                    x_hat = module.reconstruct(x)
                    mses.append(mse(x_hat, x, reduction="none").cpu())
                    psnrs.append(psnr(x_hat, x, reduction="none").cpu())
                    spread.update(x_hat, x)
                if "mse" in enabled:
                    out["test/mse"] = float(torch.cat(mses).mean())
                if "psnr" in enabled:
                    out["test/psnr"] = float(torch.cat(psnrs).mean())
                # the same images: how alike the reconstructions of different inputs are
                if "recon_variance_ratio" in enabled and len(idx) >= 2:
                    try:
                        out["test/recon_variance_ratio"] = spread.value()
                    except ValueError:  # constant inputs: no variance to compare with
                        pass
        if "active_units" in enabled:
            with timer("active_units"):
                mu, _ = encode_idx(_choose(test_idx, s["recon_points"], rngs["active_units"]))
                out["test/active_units"] = float(active_units(mu, s["active_threshold"]))
        if enabled & {"total_correlation", "mutual_info"}:
            with timer("total_correlation/mutual_info"):
                rng = rngs["total_correlation"]
                mu, logvar = encode_idx(_choose(test_idx, s["tc_points"], rng))
                z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)
                terms = aggregate_posterior_terms(z, mu, logvar, len(test_idx), s["tc_estimator"])
                if "total_correlation" in enabled:  # Chen et al. 2018, eq. 2
                    out["test/total_correlation"] = float(np.mean(terms["log_qz"] - terms["log_prod_qzd"]))
                if "mutual_info" in enabled:
                    out["test/mutual_info"] = float(np.mean(terms["log_qz_x"] - terms["log_qz"]))
        if "iwae_nll" in enabled:
            with timer("iwae_nll"):
                idx = _choose(test_idx, s["iwae_points"], rngs["iwae_nll"])
                chunk = max(1, min(bs, s["iwae_max_samples"] // s["iwae_k"]))
                # the chunk's seed fixes its samples; smaller decoder passes are faster on CPU
                passes = s["iwae_max_samples"] if device.type != "cpu" else min(s["iwae_max_samples"], CPU_PASS_PAIRS)
                values = []
                for n_batch, i in enumerate(range(0, len(idx), chunk)):
                    x = imageset.batch(idx[i:i + chunk]).to(device)
                    values.append(iwae_nll(module.encode, module.log_likelihood, x, s["iwae_k"],
                                           seed=int(seed) * 100_003 + n_batch,
                                           max_samples=passes).cpu())
                out["test/iwae_nll"] = float(torch.cat(values).mean())
        if getattr(imageset, "factors", None) is not None and enabled & set(FACTOR_METRICS):
            out.update(_structure(module, imageset, test_idx, s, enabled, rngs, int(seed), device, encode_idx, timer))
        if getattr(imageset, "labels", None) is not None and enabled & set(LABEL_METRICS):
            with timer("probes"):
                rng = rngs["linear_probe_acc"]
                labels = to_numpy(imageset.labels, dtype=np.int64)
                if train_idx is not None:
                    tr = _choose(as_integers(train_idx, "train_idx", "integer image indices").reshape(-1),
                                 s["num_points"], rng)
                    te = _choose(test_idx, s["num_test_points"], rng)
                else:  # train on two thirds of the test images, score on the rest
                    perm = rng.permutation(test_idx)
                    cut = min(s["num_points"], (2 * len(perm)) // 3)
                    tr, te = perm[:cut], perm[cut:cut + s["num_test_points"]]
                if len(tr) < 2 or len(te) < 1:
                    log.warning("metrics: too few labelled images for the probes (%d train, %d test)", len(tr), len(te))
                else:
                    c_tr, c_te = encode_idx(tr)[0], encode_idx(te)[0]
                    if "linear_probe_acc" in enabled:
                        out["test/linear_probe_acc"] = linear_probe_acc(c_tr, labels[tr], c_te, labels[te],
                                                                        seed=int(seed))
                    if "knn_acc" in enabled:
                        out["test/knn_acc"] = knn_acc(c_tr, labels[tr], c_te, labels[te], k=s["knn_k"])
    log.info("metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in out.items()))
    return out


def _structure(module: Any, imageset: Any, test_idx: np.ndarray, s: dict[str, Any], enabled: set[str],
               rngs: dict[str, np.random.Generator], seed: int, device: torch.device,
               encode_idx: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], timer: _Timer) -> dict[str, float]:
    out: dict[str, float] = {}
    represent = _batched(module.represent, device, _call_size(s["batch_size"], device))
    # the sampling scores draw dSprites' images about 2.9 million times for 737,280 distinct
    # ones at disentanglement_lib's sizes: one cache, so each is encoded once across them all
    cache = (CodeCache(represent, imageset, chunk_size=4 * s["batch_size"], max_codes=s["code_cache"])
             if s["code_cache"] > 0 and getattr(imageset, "factor_sizes", None) is not None else None)
    n_train, n_test = s["num_points"], s["num_test_points"]
    if enabled & {"mig", "sap", "dci"}:
        with timer("codes for mig/sap/dci"):
            rng = rngs["mig"]
            if s["structure_source"] == "sample":
                factors = np.asarray(imageset.sample_factors(n_train + n_test, rng), dtype=np.int64)
                codes = codes_for_classes(represent, imageset, factors, chunk_size=4 * s["batch_size"], cache=cache)
            else:
                idx = rng.choice(test_idx, size=n_train + n_test, replace=len(test_idx) < n_train + n_test)
                codes = encode_idx(idx)[0]
                factors = np.asarray(imageset.factors)[idx]
        train = (codes[:n_train], factors[:n_train])
        test = (codes[n_train:], factors[n_train:])
        if "mig" in enabled:
            with timer("mig"):
                out["test/mig"] = mig(*train, num_bins=s["mig_bins"])
        if "sap" in enabled:
            with timer("sap"):
                out["test/sap"] = sap(*train, *test, standardize=s["sap_standardize"])
        if "dci" in enabled:
            with timer("dci"):
                scores = dci(*train, *test, estimator=s["dci_estimator"], max_bins=s["dci_max_bins"], seed=seed)
            out.update({f"test/dci_{k}": v for k, v in scores.items()})
    for name, fn, kwargs in (
        ("factorvae_score", factorvae_score, {
            "batch_size": s["factorvae_batch_size"], "num_train": s["factorvae_num_train"],
            "num_eval": s["factorvae_num_eval"], "num_variance_estimate": s["factorvae_num_variance"],
            "prune_threshold": s["factorvae_prune_threshold"]}),
        ("betavae_score", betavae_score, {
            "batch_size": s["betavae_batch_size"], "num_train": s["betavae_num_train"],
            "num_eval": s["betavae_num_eval"], "standardize": s["betavae_standardize"]}),
    ):
        if name not in enabled:
            continue
        with timer(name):
            try:
                stream_seed = int(rngs[name].integers(2**31))
                out[f"test/{name}"] = float(fn(represent, imageset, stream_seed,
                                               chunk_size=4 * s["batch_size"], cache=cache, **kwargs))
            except NotImplementedError as err:  # a set that cannot render factor classes
                log.warning("metrics: %s skipped: %s", name, err)
    if cache is not None:
        log.info("metrics: %d images encoded for the sampling scores (code cache)", cache.represented)
    return out
