"""``vaesweep best`` and ``vaesweep reproduce``: find a sweep's best configuration and re-run
it, printing how the new metrics differ from the original run's."""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any, Collection, Sequence

import optuna
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from vaesweep.contract import ATTR_RUN_ID, DEFAULT_STORAGE, TAG_ERROR, TAG_REPRODUCES, TAG_STATE
from vaesweep.contract import DEFAULT_TRACKING_URI as DEFAULT_URI
from vaesweep.errors import ConfigError
from vaesweep.job.rundir import check_writable
from vaesweep.tracking.run import (check_sqlite_file, check_tracking_uri, restore_command,
                                   sqlite_path, store_error)
from vaesweep.tracking.tags import file_part

#: the key and allowed value of a storage ``vaesweep best`` and ``report`` read
STORAGE_READ = ("--storage", "a readable Optuna storage")



def best_trials(study: optuna.Study,
                ignore: Collection[int] = ()) -> list[optuna.trial.FrozenTrial]:
    """The best trial, or the Pareto set of a multi-objective study, among its COMPLETE
    trials but those numbered in ``ignore`` (trials whose MLflow run was deleted:
    :func:`deleted_trial_runs`)."""
    if ignore:
        kept = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.number not in ignore]
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory"
        try:
            rest = optuna.create_study(directions=study.directions)
        finally:
            optuna.logging.set_verbosity(verbosity)
        rest.add_trials(kept)  # renumbered 0, 1, ... in the order of ``kept``
        return [kept[t.number] for t in best_trials(rest)]
    try:
        return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)
    except ValueError:
        return []


def deleted_trial_runs(client: MlflowClient | None, study: optuna.Study) -> dict[int, str]:
    """``{trial number: MLflow run id}`` of the study's COMPLETE trials whose MLflow run
    (user attribute ``mlflow_run_id``) was soft-deleted (``mlflow runs delete``): ``vaesweep
    best`` and ``vaesweep report`` leave them out alike. A run the store does not have, or
    no ``client``, counts as not deleted."""
    out: dict[int, str] = {}
    if client is None:
        return out
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = t.user_attrs.get(ATTR_RUN_ID)
        if not run_id:
            continue
        try:
            if client.get_run(str(run_id)).info.lifecycle_stage == "deleted":
                out[t.number] = str(run_id)
        except Exception:  # noqa: BLE001 - not in this store: not known to be deleted
            continue
    return out


def deleted_line(run_ids: Sequence[str], uri: str) -> str:
    """One line saying that ``run_ids`` (deleted MLflow runs) are left out, and how to
    restore them."""

    ids = ", ".join(run_ids[:5]) + (f" and {len(run_ids) - 5} more" if len(run_ids) > 5 else "")
    one = run_ids[0] if len(run_ids) == 1 else "RUN_ID"
    return (f"{len(run_ids)} deleted MLflow run(s) ignored ({ids}); restore with "
            f"`{restore_command(uri, 'run', one)}`" + ("" if len(run_ids) == 1 else " for each"))


def summary_rows(study: optuna.Study, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"trial": t.number, "values": dict(zip(names, t.values)), "params": t.params,
             ATTR_RUN_ID: t.user_attrs.get(ATTR_RUN_ID)} for t in best_trials(study)]


def load_study(name: str, storage: str) -> optuna.Study:
    """Study ``name`` of ``storage``; a read: an SQLite file that is not there is an error,
    not a new empty database."""
    path = sqlite_path(storage)
    if path is not None and not path.is_file():
        raise ConfigError("--storage", storage, "an existing Optuna storage",
                          f"{path} does not exist: run the sweep here first, e.g. "
                          f"`vaesweep -m +sweep={name}`, or pass --storage")
    check_sqlite_file(storage, STORAGE_READ)
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as e:
        raise store_error(storage, e, ("--storage", "a reachable Optuna storage URL")) from None
    if name not in names:
        raise ConfigError("sweep", name, names or "a study in this storage (none yet: run "
                          "`vaesweep -m +sweep=quick` first)")
    return optuna.load_study(study_name=name, storage=storage)


def run_config(client: MlflowClient, run_id: str) -> Any:
    """The resolved ``config.yaml`` a run logged."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, "config.yaml", d)
        except Exception as e:
            raise ConfigError("run", run_id, f"an MLflow run with a config.yaml artifact ({e})") from None
        return OmegaConf.load(path)


#: the line of a config file written by ``vaesweep best`` that names the run it came from
RUN_LINE = "# mlflow_run_id: "


def write_config(path: Path, cfg: Any, run_id: str, what: str) -> None:
    """The resolved config, headed by comments naming the MLflow run it came from (read back
    by ``vaesweep reproduce FILE`` to compare with that run)."""
    path.write_text(f"# vaesweep best: {what}\n{RUN_LINE}{run_id}\n" + OmegaConf.to_yaml(cfg))


def recorded_run(path: Path) -> str | None:
    """The MLflow run id a config file written by ``vaesweep best`` records, if any."""
    for line in path.read_text().splitlines():
        if line.startswith(RUN_LINE):
            return line[len(RUN_LINE):].strip() or None
        if line and not line.startswith("#"):
            return None
    return None


def best_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="vaesweep best", description=(
        "Print the best trial of a sweep's Optuna study (or its Pareto set), with its MLflow "
        "run, and write its resolved config as YAML (to re-run: vaesweep reproduce FILE)."))
    p.add_argument("sweep", help="the sweep / Optuna study name, e.g. quick")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage (default {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
    p.add_argument("--out", default=None, help="where to write the config (default best_<sweep>.yaml)")
    a = p.parse_args(list(argv))
    study = load_study(a.sweep, a.storage)
    names = study.user_attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))]
    try:
        check_tracking_uri(a.tracking_uri)  # a read: no new empty store (MlflowClient makes one)
        client: MlflowClient | None = MlflowClient(tracking_uri=a.tracking_uri)
    except ConfigError:
        client = None  # no store: nothing known to be deleted (a config to write needs one)
    deleted = deleted_trial_runs(client, study)
    best = best_trials(study, deleted)
    if deleted:
        print(deleted_line(list(deleted.values()), a.tracking_uri))
    if not best:
        states = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        have = ", ".join(f"{n} {k}" for k, n in sorted(states.items())) or "no trials"
        if deleted:
            have += f" ({len(deleted)} COMPLETE with a deleted MLflow run)"
        raise ConfigError("sweep", a.sweep, "a study with at least one COMPLETE trial",
                          f"study {a.sweep!r} has {have} yet: run or resume it with "
                          f"`vaesweep -m +sweep={a.sweep}`")
    dirs = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions))
    print(f"study {study.study_name}: {len(study.trials)} trials; objectives {dirs}")
    print("best trial:" if len(best) == 1 else f"Pareto set ({len(best)} trials):")
    for t in best:
        vals = "  ".join(f"{n}={v:.5g}" for n, v in zip(names, t.values))
        params = "  ".join(f"{k}={v}" for k, v in t.params.items())
        print(f"  trial {t.number}: {vals}\n    params: {params}\n"
              f"    mlflow run: {t.user_attrs.get('mlflow_run_id')}")
    first = best[0]
    run_id = first.user_attrs.get(ATTR_RUN_ID)
    if run_id:
        out = Path(a.out or f"best_{file_part(a.sweep)}.yaml")
        check_writable("--out", str(out), out, "run vaesweep best from a writable folder, "
                       "or pass --out PATH")
        if client is None:  # the config to write needs the store: say why it cannot be read
            check_tracking_uri(a.tracking_uri)
            client = MlflowClient(tracking_uri=a.tracking_uri)
        cfg = run_config(client, run_id)
        write_config(out, cfg, run_id, f"study {study.study_name}, trial {first.number}")
        print(f"wrote the resolved config of trial {first.number} to {out}"
              f"\n  re-run it with: vaesweep reproduce {run_id}   (or: vaesweep reproduce "
              f"{shlex.quote(str(out))})")
    return 0


def _has_run(uri: str, run_id: str) -> bool:
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return False
    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:
        return False
    return True


def pruned_note(run: Any, max_steps: Any) -> str | None:
    """What to say up front when the original MLflow ``run`` was pruned (tag
    ``vaesweep.state=PRUNED``, its ``vaesweep.error`` naming the step): the reproduction
    trains all ``max_steps``, so its metrics differ from the pruned run's. None otherwise."""
    tags = run.data.tags
    if tags.get(TAG_STATE) != "PRUNED":
        return None
    m = re.search(r"pruned at step (\d+)", tags.get(TAG_ERROR, ""))
    at = f"at step {m.group(1)} of {max_steps}" if m else f"before step {max_steps}"
    return (f"run {run.info.run_id} was pruned {at}; reproducing the full run, so its "
            "metrics will differ from the pruned run's")


def reproduce_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="vaesweep reproduce", description=(
        "Re-run the exact resolved config of an MLflow run (or a config file written by "
        "`vaesweep best`) and print the metric differences to the original run."))
    p.add_argument("source", help="an MLflow run id, or a config YAML file")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
    a = p.parse_args(list(argv))
    original: str | None = None
    if Path(a.source).is_file():
        cfg = OmegaConf.load(a.source)
        original = recorded_run(Path(a.source))
        if original is not None and not _has_run(a.tracking_uri, original):
            print(f"(the original run {original} is not in {a.tracking_uri}: nothing to "
                  "compare with; pass --tracking-uri)")
            original = None
    else:
        check_tracking_uri(a.tracking_uri)  # a read: no new empty store (MlflowClient makes one)
        cfg = run_config(MlflowClient(tracking_uri=a.tracking_uri), a.source)
        original = a.source
    # the reproduction is a run of its own, outside any sweep
    cfg.study.trial = None
    cfg.study.parent_run_id = None
    cfg.tracking.uri = a.tracking_uri
    from vaesweep.train import run_job  # start-up time: torch only when reproducing
    note = None
    if original is not None:
        note = pruned_note(MlflowClient(tracking_uri=a.tracking_uri).get_run(original),
                           (cfg.get("trainer") or {}).get("max_steps"))
        if note:
            print(note)
    tags = {TAG_REPRODUCES: original or str(a.source)}
    metrics = run_job(cfg, tags=tags)
    new_id = metrics.pop("_run_id")
    if original is None:
        print(f"reproduction run {new_id} (no original run to compare with)")
        return 0
    old = MlflowClient(tracking_uri=a.tracking_uri).get_run(original).data.metrics
    print(f"reproduction run {new_id} of {original}:")
    print(f"  {'metric':32s} {'original':>14s} {'reproduced':>14s} {'difference':>12s}")
    differ = 0
    for k in sorted(set(old) & set(metrics)):
        if not k.startswith(("test/", "val/")):
            continue
        o, n = old[k], float(metrics[k])
        d = n - o
        differ += not (d == 0 or (math.isnan(o) and math.isnan(n)))
        print(f"  {k:32s} {o:14.6g} {n:14.6g} {d:12.3g}")
    print("identical" if differ == 0 else f"{differ} metric(s) differ"
          + (" (the original was pruned: see above)" if note else ""))
    return 0
