"""What a job reads from Hydra's runtime: its output folder, the sweeper's settings, and the
MLflow tags and run name that link it to its sweep (docs/pages/metrics.md)."""
from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Mapping

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from vaesweep.contract import TAG_OVERRIDES, TAG_SWEEP, TAG_PARENT, TAG_TRIAL


#: config keys that differ per job of a sweep: tags, not params
PER_JOB = ("study.trial", "study.parent_run_id")


def job_tags(study: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags linking a job to its sweep (docs/pages/metrics.md)."""
    tags: dict[str, Any] = {}
    if study.get("name"):
        tags[TAG_SWEEP] = study["name"]
    if study.get("parent_run_id"):
        tags[TAG_PARENT] = study["parent_run_id"]
    trial = study.get("trial")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        tags[TAG_OVERRIDES] = " ".join(hc.overrides.task)[:5000]
        if trial is None and hc.mode.name == "MULTIRUN":
            trial = hc.job.num
        if not study.get("name") and hc.runtime.choices.get("sweep"):
            tags[TAG_SWEEP] = hc.runtime.choices.get("sweep")
    if trial is not None:
        tags[TAG_TRIAL] = str(trial)
    return {k: str(v) for k, v in tags.items()}


def run_name(c: Mapping[str, Any], study: Mapping[str, Any]) -> str:
    """``tracking.run_name``, else ``<sweep>-<trial>`` in a sweep, else head-weighting-random.
    (MLflow's own random names would repeat: the job seeds Python's RNG before the run.)"""
    if c["tracking"].get("run_name"):
        return str(c["tracking"]["run_name"])
    tags = job_tags(study)
    if TAG_SWEEP in tags and TAG_TRIAL in tags:
        return f"{tags[TAG_SWEEP]}-{tags[TAG_TRIAL]}"
    return f"{c['likelihood']['name']}-{c['kl']['name']}-{secrets.token_hex(3)}"


def sweeper_setting(key: str) -> Any:
    """``hydra.sweeper.<key>`` resolved to plain containers, or None outside Hydra or unset."""
    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    return OmegaConf.to_container(sweeper[key], resolve=True) if sweeper.get(key) else None


def output_dir() -> Path:
    """The job's output folder: Hydra's, else ``outputs/<date_time>`` under the working folder."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd() / "outputs" / time.strftime("%Y-%m-%d_%H-%M-%S")
