"""The contract between vaesweep's parts and its readers (docs/pages/metrics.md): metric names, MLflow tag
names, the thresholds the metrics and reports share, the default optimiser and stores, SQLite URI parsing
the KL per latent dimension every part computes the same way, and where the Hydra config
folder is. Imports nothing of vaesweep and nothing heavy, so every module may import it."""
from __future__ import annotations

import importlib.resources
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

STAGES = ("train", "val", "test")
TERMS = ("loss", "distortion", "rate", "elbo", "beta_eff")
TEST_METRICS = (
    "iwae_nll", "mse", "psnr", "recon_variance_ratio", "mig", "sap", "dci_disentanglement", "dci_completeness",
    "dci_informativeness", "factorvae_score", "betavae_score", "linear_probe_acc", "knn_acc",
    "total_correlation", "mutual_info", "active_units",
)
VAL_METRICS = ("active_units", "sigma", "implied_sigma")
#: metrics a sweep may optimise: the terms of every stage, the val extras, the test metrics
METRIC_NAMES = tuple(
    [f"{s}/{t}" for s in STAGES for t in TERMS]
    + [f"val/{m}" for m in VAL_METRICS] + [f"test/{m}" for m in TEST_METRICS]
    + ["system/images_per_second", "system/page_faults_per_step", "system/sys_seconds_per_step"])
_KL_DIM = re.compile(r"^val/kl_dim_\d+$")


def is_metric_name(name: str) -> bool:
    return name in METRIC_NAMES or bool(_KL_DIM.match(name))


# -- MLflow tags ----------------------------------------------------------------------------
#: a job's sweep (study) name, its trial number, and the parent run of its sweep (MLflow's own)
TAG_SWEEP, TAG_TRIAL, TAG_PARENT = "vaesweep.sweep", "vaesweep.trial", "mlflow.parentRunId"
#: the git commit the job ran at; the Hydra overrides of the job
TAG_COMMIT, TAG_OVERRIDES = "vaesweep.git_commit", "vaesweep.overrides"
#: the shape (C,H,W) of the run's images: N = C·H·W places the ELBO's weight, beta_norm = M/N
TAG_DATA_SHAPE = "vaesweep.data_shape"
#: a sweep's parent run: the study it records and its role ("parent")
TAG_STUDY, TAG_ROLE = "vaesweep.study", "vaesweep.role"
#: the process that owns a RUNNING run (a run whose owner died is closed as stale)
TAG_HOST, TAG_PID, TAG_PID_START = "vaesweep.host", "vaesweep.pid", "vaesweep.pid_start"
#: why a run failed; what it failed with before it was resumed; how often it was resumed
TAG_ERROR, TAG_PREVIOUS_ERROR, TAG_RESUMES = "vaesweep.error", "vaesweep.previous_error", "vaesweep.resumes"
#: PRUNED for a trial the pruner stopped (MLflow has no such status)
TAG_STATE = "vaesweep.state"
#: params a resumed run found changed
TAG_CHANGED_PARAMS = "vaesweep.changed_params"
#: the run a ``vaesweep reproduce`` run reproduces
TAG_REPRODUCES = "vaesweep.reproduces"
#: tag of a run that ended before its KL schedule did (its value says where the schedule stood)
TAG_SCHEDULE_UNFINISHED = "vaesweep.schedule_unfinished"
#: MLflow 3's experiment kind: a model-training experiment opens on the runs table (without the
#: tag the UI guesses, and files runs with no traces under GenAI "Evaluations")
TAG_EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"

#: Optuna trial user attributes: the trial's MLflow run, why it failed, why it was pruned
ATTR_RUN_ID, ATTR_FAIL_REASON, ATTR_PRUNED_REASON = "mlflow_run_id", "fail_reason", "pruned_reason"
#: Optuna study user attribute: the study's MLflow parent run (its workers all continue it)
ATTR_PARENT_RUN_ID = "mlflow_parent_run_id"

# -- thresholds -----------------------------------------------------------------------------
#: Burda et al. 2016, section 5.2: a unit is active when Cov_x(E_q[z_u|x]) > 0.01
ACTIVE_THRESHOLD = 0.01
#: nats of mean KL below which a latent dimension counts as collapsed to the prior (it carries
#: no information; Burda et al. 2016 use the same 0.01 on the variance of its posterior mean)
COLLAPSE_THRESHOLD = 0.01

#: a run has converged when its validation ELBO changes by less than CONVERGED_RTOL (1 %,
#: relative) over its last CONVERGED_WINDOW (20 %) of steps: the rule the report judges every
#: run by, and the one ``convergence.stop`` stops a run by (vaesweep.job.convergence)
CONVERGED_RTOL, CONVERGED_WINDOW = 0.01, 0.2

def elbo_change(steps: Sequence[float], values: Sequence[float],
                window: float = CONVERGED_WINDOW) -> tuple[float, float, float] | None:
    """The convergence rule's numbers for one run's validation history.

    ``steps`` and ``values`` (same length, steps ascending) are the validations. With S the
    last step, the window starts at the last validation at or before step (1 − ``window``)·S.
    Returns (value at the window's start, value at S, relative change |end − start| / |end|;
    inf when end is 0), or None when the history cannot tell: fewer than two validations, or
    none before the window."""
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length: {len(steps)} and {len(values)}")
    if len(steps) < 2:
        return None
    last = float(steps[-1])
    before = [i for i, s in enumerate(steps) if float(s) <= (1 - window) * last]
    if not before or float(steps[before[-1]]) >= last:
        return None
    start, end = float(values[before[-1]]), float(values[-1])
    return start, end, (abs(end - start) / abs(end) if end != 0 else math.inf)



# -- defaults -------------------------------------------------------------------------------
#: the optimiser of a config that gives none, and the default of each ``optim`` key it leaves
#: out: Adam at 5e-4 (Burgess et al. 2018 at batch 64; Locatello et al. 2019 use 1e-4). The
#: preset conf/optim/adam.yaml starts from it (vaesweep.parts.register_schemas).
OPTIM_DEFAULTS: dict[str, Any] = {"name": "adam", "lr": 5e-4}

# -- stores ---------------------------------------------------------------------------------
#: the MLflow tracking store and the Optuna study store when none is given
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_STORAGE = "sqlite:///optuna.db"
SQLITE_PREFIX = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The file of an ``sqlite:///`` URL (relative: ``sqlite:///x.db``, absolute:
    ``sqlite:////abs/x.db``), or None for other stores and in-memory databases."""
    if not uri.startswith("sqlite") or "://" not in uri:
        return None
    path = uri.split("://", 1)[1].split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path
    return None if path in ("", ":memory:") else Path(path).expanduser()


def launch_dir() -> Path:
    """The folder the command was started from, which relative paths of the config (stores,
    data roots, checkpoints) are read against: Hydra's ``hydra.runtime.cwd`` inside a Hydra
    job or sweeper (a job with ``hydra.job.chdir=true`` runs in its output folder), else the
    working folder."""
    from hydra.core.hydra_config import HydraConfig  # start-up time: only when resolving
    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return Path(str(cwd))
    return Path.cwd()


def launch_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, read against :func:`launch_dir` when relative."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else launch_dir() / p


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///rel.db`` as an absolute URI, relative to :func:`launch_dir` (other URIs
    unchanged): MLflow caches stores by URI, so a relative path would stay bound to the first
    working directory of the process; and a job with ``hydra.job.chdir=true`` would write its
    store into its own output folder, where ``best``, ``report`` and the UI do not look."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/") and ":memory:" not in uri:
        path, sep, query = uri[len(SQLITE_PREFIX):].partition("?")
        return SQLITE_PREFIX + str(launch_path(path).resolve()) + sep + query
    return uri


# -- the KL per latent dimension --------------------------------------------------------------
def kl_per_dim(mu: Any, logvar: Any) -> Any:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per example and latent dimension, shaped (B, M), in
    nats; closed form 0.5 (mu^2 + exp(logvar) - 1 - logvar) (Kingma & Welling 2014, App. B).
    Torch in, torch out (differentiable, on the tensors' device); anything else goes through
    numpy in float64."""
    if type(mu).__module__.startswith("torch"):  # a torch.Tensor, without importing torch
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    mu, logvar = np.asarray(mu, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    return 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)


def conf_dir() -> Path:
    """The Hydra config folder: ``$VAESWEEP_CONF_DIR`` when set, else the package's ``conf``.

    In a checkout ``src/vaesweep/conf`` is a link to the top-level ``conf/`` (whose ``sweep``
    links to ``sweeps/``), so an editable install reads the source tree; a wheel or a
    non-editable ``pip install .`` carries both folders' YAML files as package data there."""
    env = os.environ.get("VAESWEEP_CONF_DIR")
    return Path(env) if env else Path(str(importlib.resources.files("vaesweep") / "conf"))
