"""Resuming a killed run: the checkpoint to resume from (``ckpt_path``), checked before training;
the training loader that resumes mid-epoch; the random generators kept in checkpoints; and
the MLflow run a resumed run continues."""
from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from vaesweep.errors import ConfigError
from vaesweep.module import VAEModule, current_keys
from vaesweep.contract import launch_path
from vaesweep.tracking.run import deleted_run

log = logging.getLogger(__name__)


#: written next to the checkpoints: a run resumed from them continues this MLflow run
RUN_ID_FILE = "mlflow_run_id"  # a file name (it matches ATTR_RUN_ID by choice only)


def resolve_ckpt(value: Any, out: Path) -> Path | None:
    """``ckpt_path`` as an existing file: ``last`` is this run's ``checkpoints/last.ckpt``."""
    if value in (None, ""):
        return None
    if str(value) == "last":
        path = out / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError("ckpt_path", "last", f"a run whose folder holds {path}",
                              "`last` is looked up in this run's output folder: set "
                              "hydra.run.dir=<the killed run's folder>, or give the checkpoint's path")
        return path
    path = launch_path(str(value))  # relative: to the folder the command was started from
    if not path.is_file():
        raise ConfigError("ckpt_path", str(value), "null, last, or the path of a checkpoint file",
                          f"{path} does not exist")
    return path


def check_checkpoint(path: Path, value: Any, module: VAEModule) -> None:
    """The checkpoint loads without unpickling code (``weights_only=True``) and fits the model."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [""]
        # torch explains at length; the line that names what the file wanted to load:
        why = next((l.split("error:", 1)[-1].strip() for l in lines
                    if "GLOBAL" in l or "Unpickler error:" in l), lines[0])
        raise ConfigError("ckpt_path", str(value), "a Lightning checkpoint that loads with "
                          "torch.load(weights_only=True)", f"{type(e).__name__}: {why[:300]}") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "optimizer_states" not in ckpt:
        raise ConfigError("ckpt_path", str(value), "a Lightning training checkpoint "
                          "(with state_dict and optimizer_states)")
    want = {k: tuple(v.shape) for k, v in module.state_dict().items() if hasattr(v, "shape")}
    have = {k: tuple(v.shape) for k, v in current_keys(state).items() if hasattr(v, "shape")}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ConfigError("ckpt_path", str(value), "a checkpoint of this model (same model, "
                          "head and latent_dim)", f"differs in {diff}")


def checkpoint_run_id(path: Path) -> str | None:
    """The MLflow run that wrote the checkpoints in ``path``'s folder, if recorded."""
    f = path.parent / RUN_ID_FILE
    return f.read_text().strip() or None if f.is_file() else None


def loader_generator(loader: Any) -> torch.Generator | None:
    """The torch.Generator that orders a loader's batches (its sampler's, or its own for
    data.loaders.DeviceBatches), if it has one."""
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        return loader.generator
    for s in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for obj in (s, getattr(s, "sampler", None)):
            if isinstance(getattr(obj, "generator", None), torch.Generator):
                return obj.generator
    return None


class ResumableBatches:
    """The training loader, resumable in the middle of an epoch: Lightning keeps its
    ``state_dict`` (the sampler's generator at the start of the epoch and the batches trained
    since) in every checkpoint, and a resumed run skips to the same batch of the same order."""

    def __init__(self, loader: Any, trained_in_epoch: Any) -> None:
        self.loader, self.trained_in_epoch = loader, trained_in_epoch
        self.generator = loader_generator(loader)
        self._epoch_start: torch.Tensor | None = None
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        skip = 0
        if self._resume is not None and self.generator is not None:
            self.generator.set_state(self._resume["generator"])
            skip = int(self._resume["batches"])
        self._resume = None
        self._epoch_start = None if self.generator is None else self.generator.get_state()
        it = iter(self.loader)
        for _ in range(min(skip, len(self.loader))):
            next(it)
        return it

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._epoch_start, "batches": int(self.trained_in_epoch())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._resume = state


def resumable(dm: Any) -> Any:
    """``dm`` with a training loader that resumes mid-epoch (see :class:`ResumableBatches`)."""
    make = dm.train_dataloader

    def train_dataloader() -> ResumableBatches:
        return ResumableBatches(
            make(), lambda: dm.trainer.fit_loop.epoch_loop.batch_progress.current.completed)
    dm.train_dataloader = train_dataloader
    return dm


class RandomState(Callback):
    """Keeps the random generators (torch, numpy, random) in checkpoints and restores them when
    training resumes, so the reparameterisation noise continues as if never stopped."""

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "random": random.getstate(),
                 "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restore = state

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if self._restore is None:
            return
        s, self._restore = self._restore, None
        torch.set_rng_state(s["torch"])
        random.setstate(s["random"])
        kind, keys, pos, has_gauss, gauss = s["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


class RunIdFile(Callback):
    """Writes the MLflow run id beside the checkpoints when training starts (after Lightning
    has looked whether the checkpoint folder is empty), so a resumed run continues that run."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.run_id)



def continued_run(uri: str, ckpt: Path, value: Any = None) -> str | None:
    """The MLflow run to continue when resuming from ``ckpt`` (given as ``ckpt_path=value``):
    the one that wrote it, if this tracking store has it. A run that was soft-deleted
    (``mlflow runs delete``) cannot take metrics: a ConfigError naming ``ckpt_path``, the run
    and how to restore it."""

    run_id = checkpoint_run_id(ckpt)
    if run_id is None:
        return None
    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:
        log.warning("The checkpoint's MLflow run %s is not in %s: logging to a new run", run_id, uri)
        return None
    if run.info.lifecycle_stage == "deleted":
        raise deleted_run("ckpt_path", str(value if value is not None else ckpt), uri, run_id,
                          "a checkpoint whose MLflow run is active (not deleted)",
                          f"delete {ckpt.parent / RUN_ID_FILE} to log the resumed training "
                          "to a new run")
    return run_id
