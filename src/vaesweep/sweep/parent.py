"""The MLflow side of a sweep: one parent run per sweep, its children linked by tags.

The sweepers wrap their launcher so that every job receives ``study.parent_run_id`` (and,
under Optuna, ``study.trial``) as overrides; the job tags its run from them. A resumed
Optuna study continues the parent run it had.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Mapping, Sequence

from mlflow.tracking import MlflowClient

from vaesweep.contract import (ATTR_PARENT_RUN_ID, ATTR_RUN_ID, DEFAULT_TRACKING_URI, TAG_COMMIT,
                               TAG_HOST, TAG_ROLE, TAG_STUDY, TAG_SWEEP, absolute_sqlite)
from vaesweep.sweep.best import best_trials
from vaesweep.sweep.progress import current
from vaesweep.tracking import TrackedRun, git_commit
from vaesweep.tracking.tags import filter_value

log = logging.getLogger(__name__)


def find_parent(client: MlflowClient, experiment: str, sweep: str, study: str | None) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    flt = (f"tags.`{TAG_ROLE}` = 'parent' and "
           f"tags.`{TAG_SWEEP}` = {filter_value(sweep, 'study.name')}")
    if study:
        flt += f" and tags.`{TAG_STUDY}` = {filter_value(study, 'study.name')}"
    runs = client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


#: how long a worker that joins a study waits for the worker that created it to name its
#: parent run (that worker opens the parent right after creating the study: about a second)
PARENT_WAIT_S = 60.0


def study_parent(study: Any, settings: Mapping[str, Any], wait: float = PARENT_WAIT_S,
                 poll: float = 0.5) -> str | None:
    """The parent run of an Optuna ``study`` that another worker created: its user attribute
    :data:`ATTR_PARENT_RUN_ID`, once the creating worker has set it (polled for up to ``wait``
    seconds), if that run is in this sweep's tracking store (``settings``: :func:`sweep_settings`).

    Only the worker that creates the study opens a new parent run; the others continue it.
    Without this, workers that start together could each find no parent in MLflow and each
    create one, and ``vaesweep report`` (which reads one parent) would miss the other's trials.
    None when the study never had one (made by an older vaesweep) or the run is not in this
    store: the caller then looks the parent up by its tags. Raises nothing of its own."""
    deadline = time.monotonic() + wait
    while True:
        run_id = study.user_attrs.get(ATTR_PARENT_RUN_ID)
        if run_id or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    if not run_id:
        log.warning("The study %r names no MLflow parent run after %.0f s: looking it up by "
                    "its tags", study.study_name, wait)
        return None
    try:
        client = MlflowClient(tracking_uri=settings["uri"])
        exp = client.get_experiment_by_name(settings["experiment"])
        same = exp is not None and client.get_run(run_id).info.experiment_id == exp.experiment_id
    except Exception:  # another store (tracking.uri changed since), or the run was deleted
        same = False
    return str(run_id) if same else None


def open_parent(uri: str, experiment: str, sweep: str, study: str | None,
                resume: bool, run_id: str | None = None) -> TrackedRun:
    """The sweep's parent run: run ``run_id`` when given (the study's own, see
    :func:`study_parent`), else the existing one of a resumed study, else a new one."""
    client = MlflowClient(tracking_uri=uri)
    if run_id is None and resume:
        run_id = find_parent(client, experiment, sweep, study)
    tags = {TAG_ROLE: "parent", TAG_SWEEP: sweep, TAG_COMMIT: git_commit(),
            TAG_HOST: socket.gethostname()}
    if study:
        tags[TAG_STUDY] = study
    run = TrackedRun(uri, experiment, run_name=f"sweep:{sweep}", tags=tags, run_id=run_id)
    log.info("MLflow parent run %s for sweep %r%s", run.run_id, sweep,
             " (resumed)" if run_id else "")
    if uri.startswith(("http://", "https://")):
        # MLflow 3.17's UI opens on its GenAI pages unless asked for the model-training view
        log.info("MLflow UI: %s/#/experiments/%s?workflowType=machine_learning",
                 uri.rstrip("/"), run.experiment_id)
    return run


class InjectingLauncher:
    """Wraps a Hydra launcher, appending per-job overrides (parent run id, trial number)."""

    def __init__(self, launcher: Any, extra: Sequence[str]) -> None:
        self.launcher, self.extra = launcher, list(extra)
        self.per_job: list[Sequence[str]] | None = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        per_job = self.per_job or [[] for _ in job_overrides]
        self.per_job = None
        batch = [list(o) + self.extra + list(p) for o, p in zip(job_overrides, per_job)]
        progress = current()
        if progress is None:
            return self.launcher.launch(batch, initial_job_idx=initial_job_idx)
        labels = [next((f"trial {x.split('=', 1)[1]}" for x in p if x.startswith("study.trial=")),
                       f"job {initial_job_idx + i}") for i, p in enumerate(per_job)]
        if type(self.launcher).__name__ == "BasicLauncher" and len(batch) > 1:
            # Hydra's basic launcher runs a batch one job after another in this process (a
            # grid is one batch): hand it one job at a time, so the display shows the job that
            # runs, not the whole grid, and its ETA learns from each job
            returns = []
            for i, (job, label) in enumerate(zip(batch, labels)):
                progress.started([label])
                returns += list(self.launcher.launch([job], initial_job_idx=initial_job_idx + i))
                progress.finished(1)
            return returns
        progress.started(labels)
        returns = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
        progress.finished(len(returns))
        return returns

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)


def job_overrides(config: Any, parent_run_id: str) -> list[str]:
    """The overrides every job of a sweep gets: its parent run, and the sweep's SQLite stores
    as absolute paths. A launcher may run a job in another folder (a Ray worker runs in the
    folder its cluster was started from), where ``sqlite:///mlflow.db`` would be another file."""
    out = [f"study.parent_run_id={parent_run_id}"]
    study, tracking = config.get("study") or {}, config.get("tracking") or {}
    for key, value in (("study.storage", study.get("storage")), ("tracking.uri", tracking.get("uri"))):
        if isinstance(value, str) and absolute_sqlite(value) != value:
            quoted = absolute_sqlite(value).replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"{key}='{quoted}'")
    return out


def sweep_settings(config: Any) -> Mapping[str, Any]:
    """Sweep name, study name, tracking URI and experiment from the composed config."""
    study = config.get("study") or {}
    choices = config.hydra.runtime.choices
    name = study.get("name") or choices.get("sweep") or "adhoc"
    tracking = config.get("tracking") or {}
    uri = tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    return {"sweep": str(name), "uri": str(uri),
            "experiment": str(tracking.get("experiment") or "vaesweep")}


# -- the parent run's description (MLflow's note), written when a sweep ends -----------------
def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def study_note(study: Any, names: Sequence[str], n_trials: int) -> str:
    """A short markdown summary of an Optuna study for the parent run's description: trials
    by state, and the best trial (or the Pareto set) with its params, values and MLflow run.
    ``vaesweep report`` replaces it with the report's answer."""
    from collections import Counter

    states = Counter(t.state.name for t in study.trials)
    dirs = [d.name.lower() for d in study.directions]
    lines = [f"**Sweep `{study.study_name}`** (Optuna): "
             f"{states.get('COMPLETE', 0)} of {n_trials} trials complete"
             + "".join(f", {n} {s}" for s, n in sorted(states.items()) if s != "COMPLETE") + ".",
             "", "Objectives: " + ", ".join(f"{n} ({d})" for n, d in zip(names, dirs)) + "."]
    best = best_trials(study)
    if best:
        title = "Best trial" if len(dirs) == 1 else f"Pareto set ({len(best)} trials)"
        params = sorted({k for t in best for k in t.params})
        lines += ["", f"{title}:", "",
                  "| trial | " + " | ".join([*params, *names]) + " | MLflow run |",
                  "|---" * (len(params) + len(names) + 2) + "|"]
        for t in sorted(best, key=lambda t: t.number):
            cells = [str(t.number), *(_number(t.params.get(k, "")) for k in params),
                     *(_number(v) for v in t.values), str(t.user_attrs.get(ATTR_RUN_ID, ""))]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines += ["", "No trial has finished."]
    lines += ["", f"_Written when the sweep ended; `vaesweep report {study.study_name}` "
                  "replaces it with the report's answer._"]
    return "\n".join(lines)


def grid_note(sweep: str, jobs: int, failed: int) -> str:
    """The parent run's description after a grid (Hydra's basic sweeper)."""
    return (f"**Sweep `{sweep}`** (grid): {jobs - failed} of {jobs} jobs finished"
            + (f", {failed} failed" if failed else "") + f".\n\n_Written when the sweep ended; "
            f"`vaesweep report {sweep}` replaces it with the report's answer._")
