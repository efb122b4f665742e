"""A sweep's runs as one pandas DataFrame: read from MLflow (and Optuna, where the sweep is
an Optuna study), one row per child run of the sweep's parent run.

Columns: every param under its dotted name (``kl.beta_norm``, numbers parsed), every final
metric under its name (docs/pages/metrics.md) (``test/distortion``), and derived columns the report and
the notebook use:

==================  =========================================================================
``run_id``          the MLflow run; ``run_name``, ``trial`` (Optuna / job number), ``overrides``
``state``           COMPLETE, PRUNED, FAILED, KILLED or RUNNING
``head``            ``likelihood.name`` (with a fixed σ or a learned σ's scope: :func:`head_label`)
``reduction``       ``kl.reduction`` (sum / mean)
``weighting``       ``kl.name`` (beta, beta_norm, capacity, geco, controlvae)
``method``          ``+method=`` of the schedules study, else weighting[/schedule][+free bits]
``seed``            ``seed``
``beta_norm``       ``kl.beta_norm`` for beta_norm runs, else NaN
``beta_eff``        the config's beta_eff (the loss contract, from the typed weight, the reduction, N
                    and M) for fixed weightings; the final logged one (test, else val, else
                    train) for controllers and capacity; ``beta_eff_logged`` the logged one
``n_elements``      N = C·H·W, from the run's ``vaesweep.data_shape`` tag; ``data``: data.name
``elbo_beta_norm``  M/N: the beta_norm at which beta_eff = 1 (the ELBO), from the config
``schedule_unfinished``  why the run's schedule did not finish: the ``vaesweep.schedule_unfinished``
                    tag, else a final logged beta_eff below the config's (None: finished or none)
``distortion``      ``test/distortion`` (else ``val/distortion``), nats per example
``rate``            ``test/rate`` (else ``val/rate``), nats per example
``active_units``    ``test/active_units`` (else ``val/active_units``)
``latent_dim``      ``model.latent_dim``; ``collapsed_dims``: latents with final KL < 0.01 nats
``pareto``          on the rate–distortion Pareto front of its head within seed noise, and
                    ``pareto_point``: which point of it (see ``analysis.mark_pareto``)
==================  =========================================================================

``optuna_state`` and ``optuna_values`` are added when the Optuna study is found.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

from vaesweep.contract import (ATTR_RUN_ID, COLLAPSE_THRESHOLD, DEFAULT_STORAGE,
                               DEFAULT_TRACKING_URI, TAG_DATA_SHAPE, TAG_ERROR, TAG_OVERRIDES, TAG_PARENT, TAG_ROLE,
                               TAG_SCHEDULE_UNFINISHED, TAG_STATE, TAG_STUDY, TAG_SWEEP, TAG_TRIAL,
                               sqlite_path)
from vaesweep.errors import ConfigError
from vaesweep.tracking.run import check_tracking_uri  # noqa: F401  (part of this module's API)
from vaesweep.tracking.run import deleted_experiment
from vaesweep.tracking.tags import filter_value
from vaesweep.kl.loss import beta_eff_from
from vaesweep.report.analysis import (FEEDBACK_WEIGHTINGS,  # noqa: F401 (re-exported)
                                      STRUCTURE_METRICS, complete_runs, mark_pareto,
                                      structure_metric, weight_column)

log = logging.getLogger(__name__)

DEFAULT_URI = DEFAULT_TRACKING_URI
DEFAULT_EXPERIMENT = "vaesweep"
_KL_DIM = re.compile(r"^val/kl_dim_(\d+)$")


@dataclass
class StudyInfo:
    """What the report shows of an Optuna study: objectives, directions, trial states."""

    name: str
    storage: str
    objectives: list[str]
    directions: list[str]
    states: dict[str, int]
    best_trials: list[int]
    n_trials: int


@dataclass
class SweepData:
    """A loaded sweep: its runs (one row each), its parent run and its Optuna study."""

    sweep: str
    tracking_uri: str
    experiment: str
    parent_run_id: str | None
    runs: pd.DataFrame
    study: StudyInfo | None = None
    client: MlflowClient | None = field(default=None, repr=False)
    #: child runs of the parent that were soft-deleted (``mlflow runs delete``): left out of
    #: ``runs`` and of the study's best trials, as ``vaesweep best`` leaves them out
    deleted_runs: list[str] = field(default_factory=list)

    @property
    def deleted_note(self) -> str | None:
        """One line saying how many deleted runs are left out and how to restore them."""
        from vaesweep.sweep.best import deleted_line  # start-up time: Optuna only when read
        return deleted_line(self.deleted_runs, self.tracking_uri) if self.deleted_runs else None

    @property
    def complete(self) -> pd.DataFrame:
        """Runs that finished with a finite distortion and rate: what the plots show."""
        return complete_runs(self.runs)

    def histories(self, run_ids: Sequence[str], keys: Sequence[str] | None = None) -> pd.DataFrame:
        """Metric histories (long format: run_id, key, step, value) of ``run_ids``."""
        if self.client is None:
            raise ValueError("this SweepData has no MLflow client to read histories from")
        return load_histories(self.client, run_ids, keys or dynamics_keys(self.runs))

    def artifact(self, run_id: str, name: str, dst: str | Path) -> Path | None:
        """Download one artifact of a run into ``dst``; None when the run has none."""
        if self.client is None:
            return None
        return download_artifact(self.client, run_id, name, dst)


# -- helpers on values -----------------------------------------------------------------------
def parse_value(v: Any) -> Any:
    """An MLflow param string as a number where it is one; ``None``/``null`` as None."""
    if v is None or v in ("None", "null", ""):
        return None
    if isinstance(v, str):
        if v in ("True", "False"):
            return v == "True"
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if re.fullmatch(r"[+-]?\d+", v.strip()) else f
    return v


def known_sweeps(client: MlflowClient, experiment: str) -> list[str]:
    """Sweep names that have a parent run in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = 'parent'",
                              max_results=5000)
    return sorted({r.data.tags.get(TAG_SWEEP, "") for r in runs} - {""})


def _find_parent(client: MlflowClient, exp_id: str, sweep: str) -> str | None:
    runs = client.search_runs([exp_id], f"tags.`{TAG_ROLE}` = 'parent' and "
                              f"tags.`{TAG_SWEEP}` = {filter_value(sweep, 'sweep')}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _search_all(client: MlflowClient, exp_id: str, flt: str, deleted: bool = False) -> list[Any]:
    """Every run of ``exp_id`` matching ``flt``: the active ones, or the deleted ones."""
    from mlflow.entities import ViewType

    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], flt, run_view_type=view, max_results=1000,
                                  page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _method(params: Mapping[str, Any], overrides: str) -> str:
    """The name a schedules study gives the run (``+method=X``), else one built from the
    weighting, its schedule and free bits."""
    try:
        words = shlex.split(overrides or "")
    except ValueError:
        words = (overrides or "").split()
    for w in words:
        if w.startswith(("+method=", "method=")):
            return w.split("=", 1)[1]
    name = str(params.get("kl.name") or "?")
    schedule = params.get("kl.schedule.name")
    if schedule and schedule != "constant":
        name += f"/{schedule}"
    fb = params.get("kl.free_bits")
    if isinstance(fb, (int, float)) and fb > 0:
        name += f"+free_bits {fb:g}"
    return name


def _state(status: str, tags: Mapping[str, str]) -> str:
    if tags.get(TAG_STATE) == "PRUNED":
        return "PRUNED"
    return {"FINISHED": "COMPLETE"}.get(status, status)


def _first(row: Mapping[str, Any], keys: Iterable[str]) -> float:
    for k in keys:
        v = row.get(k)
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return float("nan")


def _n_elements(shape: str | None) -> int | None:
    """N = C·H·W from the ``vaesweep.data_shape`` tag ("C,H,W"); None when absent."""
    try:
        dims = [int(x) for x in str(shape).split(",")] if shape else []
    except ValueError:
        return None
    return math.prod(dims) if len(dims) == 3 and min(dims) > 0 else None


def _config_beta_eff(params: Mapping[str, Any], weighting: Any, n: int | None,
                     m: int | None) -> float | None:
    """The beta_eff the config asks for (the beta_eff table of docs/pages/loss-contract.md): for the fixed weightings, from
    the typed weight, the reduction, N and M; None for controllers and capacity (their weight
    is set in training) or when N or M is unknown."""
    if weighting not in ("beta", "beta_norm") or not n or not m:
        return None
    weight = params.get(f"kl.{weighting}")
    reduction = params.get("kl.reduction") or "sum"
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        return None
    # 12 significant digits: beta M/N under mean and beta_eff under sum are one weight, not
    # 0.1 and 0.09999999999999999 (two points on every axis)
    value = beta_eff_from(float(weight), str(reduction), n, m, weighting == "beta_norm")
    return float(f"{value:.12g}")


def _unfinished(tags: Mapping[str, str], params: Mapping[str, Any], beta_eff: float | None,
                logged: float) -> str | None:
    """Why a run's schedule did not finish: the ``vaesweep.schedule_unfinished`` tag, else
    (runs made before that tag existed) a final logged weight below the configured one by
    more than 0.1 %; None when it finished or has no schedule."""
    if tags.get(TAG_SCHEDULE_UNFINISHED):
        return str(tags[TAG_SCHEDULE_UNFINISHED])
    schedule = params.get("kl.schedule.name")
    if (schedule in (None, "constant") or beta_eff is None or not beta_eff > 0
            or not math.isfinite(logged) or logged >= beta_eff * (1 - 1e-3)):
        return None
    return (f"its {schedule} schedule ended at beta_eff {logged:.4g}, {100 * logged / beta_eff:.2g} % "
            f"of the configured {beta_eff:.4g}")


def head_label(params: Mapping[str, Any]) -> Any:
    """The likelihood head as the report names it: ``likelihood.name``, with the fixed σ of a
    Gaussian (``gaussian σ=0.1``) and the scope of a learned σ (``gaussian_learned (pixel)``)
    when the run records them, since those are different likelihoods whose distortions must
    not share a Pareto front."""
    name = params.get("likelihood.name")
    sigma, scope = params.get("likelihood.sigma"), params.get("likelihood.scope")
    if name == "gaussian" and isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        return f"gaussian σ={sigma:g}"
    if name == "gaussian_learned" and isinstance(scope, str):
        return f"gaussian_learned ({scope})"
    return name


def run_row(run: Any) -> dict[str, Any]:
    """One MLflow run as a flat dict: params, final metrics, tags we rely on, derived values."""
    params = {k: parse_value(v) for k, v in run.data.params.items()}
    metrics = dict(run.data.metrics)
    tags = run.data.tags
    trial = tags.get(TAG_TRIAL)
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "state": _state(run.info.status, tags),
        "trial": int(trial) if trial not in (None, "") and str(trial).isdigit() else None,
        "parent_run_id": tags.get(TAG_PARENT),
        "overrides": tags.get(TAG_OVERRIDES, ""),
        "error": tags.get(TAG_ERROR),
        "start_time": pd.to_datetime(run.info.start_time, unit="ms") if run.info.start_time else None,
    }
    row.update(params)
    row.update(metrics)
    weighting = params.get("kl.name")
    beta_norm = params.get("kl.beta_norm") if weighting == "beta_norm" else None
    kl_dims = {int(m.group(1)): v for k, v in metrics.items() if (m := _KL_DIM.match(k))}
    latent_dim = params.get("model.latent_dim")
    n_elements = _n_elements(tags.get(TAG_DATA_SHAPE))
    m = int(latent_dim) if isinstance(latent_dim, (int, float)) and latent_dim > 0 else None
    logged_beta_eff = _first(metrics, ("test/beta_eff", "val/beta_eff", "train/beta_eff"))
    beta_eff = _config_beta_eff(params, weighting, n_elements, m)
    row.update({
        "head": head_label(params),
        "reduction": params.get("kl.reduction"),
        "weighting": weighting,
        "method": _method(params, row["overrides"]),
        "seed": params.get("seed"),
        "beta_norm": float(beta_norm) if isinstance(beta_norm, (int, float)) else float("nan"),
        "beta": float(params["kl.beta"]) if isinstance(params.get("kl.beta"), (int, float))
        and weighting == "beta" else float("nan"),
        "beta_eff": beta_eff if beta_eff is not None else logged_beta_eff,
        "beta_eff_logged": logged_beta_eff,
        "n_elements": n_elements,
        "elbo_beta_norm": m / n_elements if m and n_elements else float("nan"),
        "data": params.get("data.name"),
        "schedule_unfinished": _unfinished(tags, params, beta_eff, logged_beta_eff),
        "distortion": _first(metrics, ("test/distortion", "val/distortion")),
        "rate": _first(metrics, ("test/rate", "val/rate")),
        "active_units": _first(metrics, ("test/active_units", "val/active_units")),
        "latent_dim": int(latent_dim) if isinstance(latent_dim, (int, float)) else None,
        "collapsed_dims": (sum(1 for v in kl_dims.values() if v < COLLAPSE_THRESHOLD)
                           if kl_dims else None),
    })
    return row


def runs_frame(runs: Sequence[Any]) -> pd.DataFrame:
    """The DataFrame of ``runs`` (MLflow Run objects), sorted by trial then start time."""
    rows = [run_row(r) for r in runs]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values(["trial", "start_time"], na_position="last", kind="stable")
    return mark_pareto(df.reset_index(drop=True))


def dynamics_keys(df: pd.DataFrame) -> list[str]:
    """The metric histories the schedules/controllers section reads."""
    dims = sorted((int(m.group(1)) for c in df.columns if (m := _KL_DIM.match(str(c)))))
    return ["val/rate", "val/distortion", "train/beta_eff", "val/active_units",
            *[f"val/kl_dim_{j}" for j in dims]]


# -- MLflow ----------------------------------------------------------------------------------
def load_histories(client: MlflowClient, run_ids: Sequence[str],
                   keys: Sequence[str]) -> pd.DataFrame:
    rows = []
    for rid in run_ids:
        for key in keys:
            try:
                hist = client.get_metric_history(rid, key)
            except Exception as e:  # noqa: BLE001 - a missing metric is not an error here
                log.debug("no history of %s for %s: %s", key, rid, e)
                continue
            rows.extend({"run_id": rid, "key": key, "step": m.step, "value": m.value}
                        for m in hist)
    out = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    return out.sort_values(["run_id", "key", "step"]).reset_index(drop=True)


def download_artifact(client: MlflowClient, run_id: str, name: str, dst: str | Path) -> Path | None:
    Path(dst).mkdir(parents=True, exist_ok=True)
    # MLflow draws a progress bar per file; a report fetches a few small pictures
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        return Path(client.download_artifacts(run_id, name, str(dst)))
    except Exception as e:  # noqa: BLE001 - a run without pictures (failed early) is shown without
        log.warning("run %s has no artifact %s (%s)", run_id, name, e)
        return None
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def study_info(name: str, storage: str, df: pd.DataFrame, client: MlflowClient | None = None
               ) -> tuple[StudyInfo | None, pd.DataFrame]:
    """The Optuna study ``name`` in ``storage`` (None when there is none) and ``df`` with the
    trials' states and values joined on the MLflow run id. The best trials leave out those
    whose MLflow run ``client``'s store has deleted, as ``vaesweep best`` does
    (:func:`vaesweep.sweep.best.deleted_trial_runs`)."""
    p = sqlite_path(storage)
    if p is not None and not p.is_file():
        log.info("no Optuna storage at %s: reporting from MLflow only", storage)
        return None, df
    import optuna

    from vaesweep.sweep.best import STORAGE_READ, best_trials, deleted_trial_runs  # start-up time: Optuna when read
    from vaesweep.tracking.run import check_sqlite_file, store_error
    check_sqlite_file(storage, STORAGE_READ)  # a damaged file is an error, not "no study"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if name not in optuna.get_all_study_names(storage):
            log.info("no Optuna study %r in %s: reporting from MLflow only", name, storage)
            return None, df
        study = optuna.load_study(study_name=name, storage=storage)
    except Exception as e:  # noqa: BLE001 - the report still has MLflow's numbers
        log.warning("could not read the Optuna study %r from %s: %s", name, storage,
                    store_error(storage, e, STORAGE_READ))
        return None, df
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    objectives = list(study.user_attrs.get("objectives")
                      or [f"objective_{i}" for i in range(len(study.directions))])
    info = StudyInfo(name=name, storage=storage, objectives=objectives,
                     directions=[d.name.lower() for d in study.directions], states=states,
                     best_trials=sorted(t.number for t in best_trials(
                         study, deleted_trial_runs(client, study))),
                     n_trials=len(trials))
    by_run = {t.user_attrs.get(ATTR_RUN_ID): t for t in trials}
    if not df.empty:
        df = df.copy()
        df["optuna_state"] = [by_run[r].state.name if r in by_run else None for r in df["run_id"]]
        df["optuna_values"] = [list(by_run[r].values) if r in by_run and by_run[r].values else None
                               for r in df["run_id"]]
        df["optuna_best"] = [r in by_run and by_run[r].number in info.best_trials
                             for r in df["run_id"]]
    return info, df


def load_sweep(sweep: str, tracking_uri: str = DEFAULT_URI, *,
               experiment: str = DEFAULT_EXPERIMENT, storage: str | None = DEFAULT_STORAGE,
               parent_run_id: str | None = None) -> SweepData:
    """The runs of ``sweep`` (children of its latest parent run, or of ``parent_run_id``)
    with its Optuna study where ``storage`` holds one. A sweep name the store does not know
    is a :class:`ConfigError` listing the ones it does."""
    check_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError("--experiment", experiment, "an MLflow experiment in "
                          f"{tracking_uri} (none by that name: run a sweep first)")
    if exp.lifecycle_stage == "deleted":  # its runs are deleted with it: no sweep to find
        raise deleted_experiment("--experiment", experiment, tracking_uri, exp)
    if parent_run_id is None:
        parent_run_id = _find_parent(client, exp.experiment_id, sweep)
    if parent_run_id is None:
        known = known_sweeps(client, experiment)
        tagged = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
            f"tags.`{TAG_SWEEP}` = {filter_value(sweep, 'sweep')}"))
        if tagged:  # a multirun through Hydra's basic sweeper: runs, but no parent to report
            raise ConfigError("sweep", sweep, known or "a sweep run by vaesweep's sweepers",
                              f"runs tagged {TAG_SWEEP}={sweep!r} exist but have no parent run: "
                              "a plain `vaesweep -m key=a,b` runs under Hydra's basic sweeper; "
                              "run it with hydra/sweeper=vaesweep_basic study.name="
                              f"{sweep} to report it")
        raise ConfigError("sweep", sweep, known or "a sweep with runs in this tracking store "
                          "(none yet: run `vaesweep -m +sweep=quick`, or your own grid with "
                          "`vaesweep -m hydra/sweeper=vaesweep_basic study.name=NAME "
                          "kl.beta_norm=0.01,0.1`, first)")
    log.info("sweep %r: parent run %s in %s", sweep, parent_run_id, tracking_uri)
    flt = f"tags.`{TAG_PARENT}` = {filter_value(parent_run_id, '--parent')}"
    runs = _search_all(client, exp.experiment_id, flt)
    log.info("sweep %r: %d run(s)", sweep, len(runs))
    deleted = [r.info.run_id for r in _search_all(client, exp.experiment_id, flt, deleted=True)]
    df = runs_frame(runs)
    study = None
    if storage:
        parent = client.get_run(parent_run_id)
        study_name = parent.data.tags.get(TAG_STUDY)
        if study_name:
            study, df = study_info(study_name, storage, df, client)
    data = SweepData(sweep=sweep, tracking_uri=tracking_uri, experiment=experiment,
                     parent_run_id=parent_run_id, runs=df, study=study, client=client,
                     deleted_runs=deleted)
    if data.deleted_note:
        log.warning("sweep %r: %s", sweep, data.deleted_note)
    return data
