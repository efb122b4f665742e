"""Runs whose process died: recognised by the process that owns them, closed with a reason.

Every MLflow run (and every Optuna trial of the vaesweep sweeper) records its owner process:
``vaesweep.host``, ``vaesweep.pid`` and, on Linux, ``vaesweep.pid_start`` (the process start
time, so that a recycled pid is not taken for the owner). ``kill -9`` gives a process no chance
to close its run; the next start of the same sweep closes the RUNNING runs of that sweep
whose owner is gone: status KILLED, tag ``vaesweep.error`` saying why.

Only processes on this host can be checked; runs owned by other hosts are left alone.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from vaesweep.contract import TAG_ERROR, TAG_HOST, TAG_PARENT, TAG_PID, TAG_PID_START, TAG_SWEEP, TAG_TRIAL
from vaesweep.tracking.tags import filter_value, set_tags

log = logging.getLogger(__name__)



def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # field 22; the command name (field 2) is in parentheses and may contain spaces
    return stat.rsplit(")", 1)[-1].split()[19]


def owner(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process ``pid`` (default: this one) on this host."""
    pid = os.getpid() if pid is None else int(pid)
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(pid)}
    start = process_start(pid)
    if start is not None:
        tags[TAG_PID_START] = start
    return tags


def owner_alive(tags: dict[str, Any]) -> bool | None:
    """Whether the owner named by ``tags`` still runs: None when it cannot be told (another
    host, or no owner recorded)."""
    host, pid = tags.get(TAG_HOST), tags.get(TAG_PID)
    if host != socket.gethostname() or pid in (None, ""):
        return None
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, TypeError):
        return None
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = tags.get(TAG_PID_START)
    return started is None or process_start(pid) in (None, str(started))


def close_stale_runs(uri: str, experiment: str, sweep: str) -> list[str]:
    """Marks KILLED the RUNNING runs of ``sweep`` whose owner process on this host is gone;
    returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = (f"attributes.status = 'RUNNING' and tags.`{TAG_SWEEP}` = "
           f"{filter_value(sweep, 'study.name')}")
    closed = []
    for run in client.search_runs([exp.experiment_id], flt, max_results=50000):
        tags = run.data.tags
        if owner_alive(tags) is not False:
            continue
        reason = (f"stale: its process {tags.get(TAG_PID)} on {tags.get(TAG_HOST)} died while the "
                  f"run was RUNNING; closed by process {os.getpid()} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        set_tags(client, run.info.run_id, {TAG_ERROR: reason})  # other workers may close it too
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    if closed:
        log.warning("Marked %d stale MLflow run(s) of sweep %r KILLED: %s", len(closed), sweep,
                    ", ".join(closed))
    return closed


def close_children(uri: str, experiment: str, parent_run_id: str, status: str, reason: str,
                   trials: "set[int] | None" = None) -> tuple[list[str], list[str]]:
    """Ends with ``status`` (KILLED for a stop, FAILED otherwise) and tag ``vaesweep.error`` =
    ``reason`` the RUNNING child runs of ``parent_run_id`` (``trials``: only those whose
    ``vaesweep.trial`` is one of them). Returns the ids of the runs it ended, and of those
    already ended with ``status`` (by their own job). A sweep calls it when a launch ends in an
    exception: a launcher's worker process (joblib's loky pool) is killed with SIGKILL when
    the sweep stops, often before it could end its own run. Raises what the store raises."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    flt = f"tags.`{TAG_PARENT}` = {filter_value(parent_run_id, 'study.parent_run_id')}"
    closed, ended = [], []
    for run in client.search_runs([exp.experiment_id], flt, max_results=50000):
        trial = run.data.tags.get(TAG_TRIAL)
        if trials is not None and (trial is None or int(trial) not in trials):
            continue
        if run.info.status == status and trials is not None:
            ended.append(run.info.run_id)
        if run.info.status != "RUNNING":
            continue
        set_tags(client, run.info.run_id, {TAG_ERROR: reason})
        client.set_terminated(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed, ended
