"""The checks that belong to a job: the resolved config, the job's own keys, the Trainer's
numbers, every part's typed config (:func:`vaesweep.parts.check_parts`, before any data are
loaded), the objectives a sweep reads, and :func:`prepare`, everything a job checks before it
trains. Each raises vaesweep's :class:`~vaesweep.errors.ConfigError` naming the key at the
first bad value."""
from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any, Mapping

import lightning as L
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

import vaesweep.resolvers  # noqa: F401  (resolvers the configs use)
from vaesweep.contract import (METRIC_NAMES, OPTIM_DEFAULTS, TEST_METRICS, absolute_sqlite,
                               is_metric_name)
from vaesweep.data import VAEDataModule
from vaesweep.errors import ConfigError, number
from vaesweep.job import convergence
from vaesweep.job.hardware import FAST_PATH, check_fast_path
from vaesweep.job.resume import check_checkpoint, resolve_ckpt
from vaesweep.metrics.evaluate import FACTOR_METRICS, LABEL_METRICS, resolve_settings
from vaesweep.module import OPTIMIZERS, VAEModule
from vaesweep.parts import check_parts, part_key_check
from vaesweep.sweep.progress import check_progress
from vaesweep.tracking.run import check_experiment, check_store
from vaesweep.tracking.tags import check_name
from vaesweep.likelihood.base import HEADS


def resolve(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as plain containers; a missing mandatory value is a ConfigError."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore
    except MissingMandatoryValue as e:
        raise ConfigError(str(e.full_key), "???", "a value (this key has no default)") from None
    except InterpolationResolutionError as e:
        key = str(getattr(e, "full_key", "?"))
        raw = _raw(cfg, key)
        raise ConfigError(key, raw, _why(cfg, raw, e)) from None


def _raw(cfg: DictConfig, key: str) -> Any:
    """The value of ``key`` as written (an interpolation such as ``${loss_beta_eff:...}``)."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "interpolation"
        node = node[part]
    return node


def _why(cfg: DictConfig, raw: Any, e: Exception) -> str:
    """One line: why the interpolation ``raw`` failed (its first line, without OmegaConf's
    full_key/object_type lines) and the values of the keys it reads, which is where the bad
    value was given (e.g. a sweep variable such as ``keras_kl``)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = first.replace("ValueError raised while resolving interpolation: ", "")
    refs = dict.fromkeys(re.findall(r"\$\{([A-Za-z_][\w.]*)\}", raw if isinstance(raw, str) else ""))
    shown = []
    for ref in refs:
        value = OmegaConf.select(cfg, ref, throw_on_resolution_failure=False, default="?")
        shown.append(f"{ref}={value!r}")
    return ("an interpolation that resolves: " + first
            + (f" (it reads {', '.join(shown)})" if shown else ""))



def check_job(c: Mapping[str, Any]) -> None:
    """The job's own keys of the resolved config ``c``: seed, objective, trainer arguments and
    fast path, tracking, progress, optimiser, batch size, tracking URI, ``study.prune_on`` and
    ``metrics``, then every part's node (data, model, likelihood, kl, kl.schedule) against
    its typed config; all without loading data. Raises ConfigError naming the first bad key,
    its value and what is allowed."""
    JOB_KEYS["seed"]("seed", c.get("seed", 0))
    objective = c.get("objective") or []
    if isinstance(objective, str):
        objective = [objective]
    for name in objective:
        if not is_metric_name(name):
            raise ConfigError("objective", name, "metric names (docs/pages/metrics.md): " + ", ".join(METRIC_NAMES))
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in c.get("trainer", {}):
        if key not in accepted and key not in FAST_PATH:
            raise ConfigError(f"trainer.{key}", c["trainer"][key], "a lightning.Trainer argument")
    check_fast_path(c.get("trainer", {}))
    check_trainer_numbers(c.get("trainer", {}))
    JOB_KEYS["tracking.n_images"]("tracking.n_images", (c.get("tracking") or {}).get("n_images", 8))
    check_names(c)
    check_progress(c)
    convergence.settings(c)
    optim = c.get("optim") or {}
    if optim.get("name") not in OPTIMIZERS:
        raise ConfigError("optim.name", optim.get("name"), sorted(OPTIMIZERS))
    JOB_KEYS["optim.lr"]("optim.lr", optim.get("lr", OPTIM_DEFAULTS["lr"]))
    uri = str(c["tracking"]["uri"])
    if "://" not in uri and not uri.startswith("databricks"):
        raise ConfigError("tracking.uri", uri, "an MLflow tracking URI such as sqlite:///mlflow.db, "
                          "postgresql://..., http://host:port")
    prune_on = (c.get("study") or {}).get("prune_on")
    if prune_on is not None and not (str(prune_on).startswith("val/") and is_metric_name(str(prune_on))):
        raise ConfigError("study.prune_on", prune_on, "null or a val/* metric name (reported at "
                          "each validation): " + ", ".join(VAL_NAMES) + ", val/kl_dim_<j>")
    resolve_settings(c.get("metrics"))  # checked now, not after training
    check_parts(c)  # each part's dataclass: a bad value fails before the data are loaded


def check_names(c: Mapping[str, Any]) -> None:
    """The names a user gives, which reach MLflow's tags, run names and search filters,
    Optuna's study names and file names: ``tracking.experiment`` (required), ``study.name``
    and ``tracking.run_name`` (null: vaesweep's default). An empty one would silently be
    replaced by a default (``study.name=''`` wrote into the ``quick`` study). Raises
    ConfigError (:func:`vaesweep.tracking.tags.check_name`)."""
    tracking, study = c.get("tracking") or {}, c.get("study") or {}
    check_name("tracking.experiment", tracking.get("experiment"))
    for key, value in (("study.name", study.get("name")),
                       ("tracking.run_name", tracking.get("run_name"))):
        if value is not None:
            check_name(key, value)


#: the job's own keys whose values are checked one at a time, ``check(key, value) -> value``
#: (by :func:`check_job`, and by a sweep for every value its search space can take)
JOB_KEYS = {
    "seed": lambda key, v: number(key, v, 0, 2**32 - 1, integer=True),
    "optim.lr": lambda key, v: number(key, v, 0.0, lo_open=True),
    "tracking.n_images": lambda key, v: number(key, v, 1, integer=True),
}


def key_check(c: Mapping[str, Any], key: str) -> Any:
    """The check of one dotted key's value on its own, ``check(key, value) -> value`` raising
    ConfigError: a job key (:data:`JOB_KEYS`), a Trainer count or fraction, a metric
    setting, or a part's key from its typed config (:func:`vaesweep.parts.part_key_check`,
    for the part the resolved config ``c`` names). None for a key with no check of its own
    (a rule between keys, or a value only the data can check, is checked with the job)."""
    if key in JOB_KEYS:
        return JOB_KEYS[key]
    group, _, name = key.partition(".")
    if group == "trainer" and (name in TRAINER_COUNTS or name in TRAINER_FRACTIONS):
        return lambda k, v: check_trainer_numbers({name: v}) or v
    if group == "metrics" and name and "." not in name:
        return lambda k, v: resolve_settings({**(c.get("metrics") or {}), name: v})[name]
    return part_key_check(c, key)


#: the metrics a job reports at each validation (what a pruner can read)
VAL_NAMES = tuple(n for n in METRIC_NAMES if n.startswith("val/"))
#: test/* names computed by the evaluation, and the ``metrics.enabled`` entry that computes each
EVALUATED = {f"test/{m}": ("dci" if m.startswith("dci_") else m) for m in TEST_METRICS}


def check_objectives(c: Mapping[str, Any], imageset: Any, module: VAEModule,
                     val_images: int | None = None) -> None:
    """Every objective (and ``study.prune_on``) names a metric this job will produce, given
    its data, model, validation and ``metrics.enabled``: a sweep whose objective is never
    logged would fail every trial with a NaN objective, or prune nothing. A ``val/*`` metric
    needs validation images (``val_images``, the size of the validation split, when known)
    and a validation inside the run (an int ``trainer.val_check_interval``, counted across
    epochs, at most the batches the run trains)."""
    enabled = set(resolve_settings(c.get("metrics"))["enabled"])
    names = c.get("objective") or []
    names = [("objective", str(n)) for n in ([names] if isinstance(names, str) else names)]
    if (c.get("study") or {}).get("prune_on"):
        names.append(("study.prune_on", str(c["study"]["prune_on"])))
    data = (c.get("data") or {}).get("name")
    for key, name in names:
        need = ""
        if name in EVALUATED:
            source = EVALUATED[name]
            if source not in enabled:
                need = (f"metrics.enabled to include {source} (it is "
                        f"{sorted(enabled) if enabled else 'false'})")
            elif source in FACTOR_METRICS and getattr(imageset, "factors", None) is None:
                need = (f"data with ground-truth factors, such as data=dsprites (data {data!r} "
                        "has none)")
            elif source in LABEL_METRICS and getattr(imageset, "labels", None) is None:
                need = f"data with class labels (data {data!r} has none)"
        elif name.startswith("val/"):
            limit = (c.get("trainer") or {}).get("limit_val_batches")
            never = never_validates(c.get("trainer") or {})
            if limit is not None and float(limit) == 0:
                need = f"validation, which trainer.limit_val_batches={limit} turns off"
            elif val_images == 0:
                fraction = (c.get("data") or {}).get("val_fraction")
                need = (f"validation images, of which data.val_fraction={fraction} leaves none "
                        "(raise data.val_fraction)")
            elif never:
                need = f"a validation inside the run ({never})"
            elif name == "val/sigma" and module.head.sigma() is None:
                need = f"a likelihood head with a sigma (likelihood {c['likelihood'].get('name')!r} has none)"
            elif name == "val/implied_sigma" and module.head.implied_sigma(1.0) is None:
                need = (f"a likelihood head that implies a sigma (likelihood "
                        f"{c['likelihood'].get('name')!r} does not)")
            elif name.startswith("val/kl_dim_") and int(name.rsplit("_", 1)[1]) >= module.latent_dim:
                need = f"a latent index below model.latent_dim={module.latent_dim}"
        if need:
            raise ConfigError(key, name, "a metric this job produces", f"{name} needs {need}")


def check_data_range(c: Mapping[str, Any], imageset: Any, module: VAEModule) -> None:
    """A head that models values in a range (Bernoulli, continuous Bernoulli: [0, 1]) gets
    data inside it: binary cross-entropy on standardised features or other values outside
    [0, 1] trains to a meaningless loss. Raises ConfigError (``likelihood.name``) giving the
    range found and the heads that fit it."""

    support = getattr(module.head, "support", None)
    if support is None:
        return
    lo, hi = imageset.value_range()
    if support[0] <= lo and hi <= support[1]:
        return
    fits = sorted(n for n, h in HEADS.items()
                  if h.support is None or (h.support[0] <= lo and hi <= h.support[1]))
    name = c["likelihood"].get("name")
    data = (c.get("data") or {}).get("name")
    raise ConfigError("likelihood.name", name, f"a head for values in [{lo:.4g}, {hi:.4g}]: "
                      + ", ".join(fits),
                      f"{name} models values in [{support[0]:g}, {support[1]:g}], and data "
                      f"{data!r} has values in [{lo:.4g}, {hi:.4g}]")


def never_validates(trainer: Mapping[str, Any]) -> str:
    """Why a run with these Trainer settings never validates (so logs no ``val/*`` metric),
    or "": an int ``val_check_interval`` counted across epochs (``check_val_every_n_epoch``
    null, vaesweep's trainer presets) validates every that many batches, and a run of
    ``max_steps`` steps trains ``max_steps * accumulate_grad_batches`` batches."""
    interval, steps = trainer.get("val_check_interval"), trainer.get("max_steps")
    if (trainer.get("check_val_every_n_epoch") is not None or isinstance(interval, bool)
            or not isinstance(interval, int) or not isinstance(steps, (int, float))
            or isinstance(steps, bool) or steps < 0):
        return ""
    batches = steps * (trainer.get("accumulate_grad_batches") or 1)
    if interval <= batches:
        return ""
    return (f"trainer.val_check_interval={interval} is more than the {batches:g} batches the run "
            f"trains, trainer.max_steps={steps:g}")


#: the longest run, in steps or epochs, that vaesweep starts: more than a day at 10,000 steps
#: a second; past it a typo (1e20) would run until stopped. Lightning's -1 (no limit) stays
MAX_LENGTH = 10**9
#: Trainer arguments that count (steps, epochs, batches), with their least and greatest
#: value; Lightning would take 6.5 steps, and ``int()`` here would make log_every_n_steps=2.5
#: into 2
TRAINER_COUNTS = {"max_steps": (-1, MAX_LENGTH), "min_steps": (0, MAX_LENGTH),
                  "max_epochs": (-1, MAX_LENGTH), "min_epochs": (0, MAX_LENGTH),
                  "log_every_n_steps": (1, math.inf), "check_val_every_n_epoch": (1, math.inf),
                  "accumulate_grad_batches": (1, math.inf), "num_sanity_val_steps": (-1, math.inf)}
#: Trainer arguments that are a count of batches (int) or a fraction of an epoch (float)
TRAINER_FRACTIONS = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                     "limit_predict_batches", "val_check_interval")


def check_trainer_numbers(trainer: Mapping[str, Any]) -> None:
    """Counts are whole numbers; batch limits and ``val_check_interval`` are a whole number
    of batches or a fraction in [0, 1] (Lightning's meaning of a float), checked before the
    run starts rather than inside it."""
    for key, (lo, hi) in TRAINER_COUNTS.items():
        if trainer.get(key) is not None:
            number(f"trainer.{key}", trainer[key], lo, hi, integer=True)
    for key in TRAINER_FRACTIONS:
        value = trainer.get(key)
        if value is None or isinstance(value, (str, Mapping)):  # a time, for val_check_interval
            continue
        lo = 1 if key == "val_check_interval" else 0
        allowed = (f"a whole number of batches (>= {lo}) or a fraction of an epoch in "
                   f"{'(0' if lo else '[0'}, 1]")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"trainer.{key}", value, allowed)
        ok = (value >= lo) if isinstance(value, int) else (0 < value <= 1 if lo else 0 <= value <= 1)
        if not ok:
            raise ConfigError(f"trainer.{key}", value, allowed)


def objectives(c: Mapping[str, Any], metrics: Mapping[str, float]) -> float | list[float]:
    """The values named in ``objective`` (one float, or a list for several)."""
    names = c.get("objective") or []
    names = [names] if isinstance(names, str) else list(names)
    values = [float(metrics.get(n, float("nan"))) for n in names]
    return values[0] if len(values) == 1 else values


def prepare(cfg: DictConfig | Mapping[str, Any], out: Path | None, sweep: bool = False
            ) -> tuple[dict[str, Any], Any, VAEModule, Path | None]:
    """Everything a job checks before it trains: the config, the data, the model, the
    checkpoint to resume from (``out``: the run's folder, None when unknown), the tracking
    store, and the objectives of an Optuna trial (``sweep``, or ``study.trial`` set). Raises a VaesweepError naming the key at the first bad value."""
    c = resolve(cfg)
    check_job(c)
    c["tracking"]["uri"] = absolute_sqlite(str(c["tracking"]["uri"]))
    if isinstance((c.get("study") or {}).get("storage"), str):  # a trial re-opens its study
        c["study"]["storage"] = absolute_sqlite(c["study"]["storage"])
    dm = VAEDataModule(c["data"])
    module = VAEModule(c, dm.imageset.shape)
    check_data_range(c, dm.imageset, module)
    ckpt = None
    if out is not None or str(c.get("ckpt_path")) != "last":
        ckpt = resolve_ckpt(c.get("ckpt_path"), out or Path.cwd())
        if ckpt is not None:
            check_checkpoint(ckpt, c.get("ckpt_path"), module)
    if (c.get("study") or {}).get("trial") is not None or sweep:  # an Optuna trial: objectives
        check_objectives(c, dm.imageset, module, val_images=len(dm.val_idx))
    check_store(str(c["tracking"]["uri"]))  # last: it may create the store's tables
    check_experiment(str(c["tracking"]["uri"]), str(c["tracking"]["experiment"]))
    return c, dm, module, ckpt


def validate_job(cfg: DictConfig | Mapping[str, Any], objectives: bool = False) -> None:
    """Checks a job's config as :func:`run_job` would, without training or tracking (the
    sweepers check their first job before they touch a study; ``ckpt_path=last`` is in each
    job's own folder, checked by the job). ``objectives``: also that the job produces the
    metrics named by ``objective`` and ``study.prune_on`` (an Optuna study reads them)."""
    prepare(cfg, None, sweep=objectives)

