"""The LightningDataModule: a deterministic train/val/test split of an ImageSet, served as batches.

Each loader is a ``DataLoader`` with ``batch_size=None`` over a dataset whose ``__getitem__``
takes a whole list of indices and returns ``imageset.batch(indices)``; the sampler is a
``BatchSampler`` over a ``RandomSampler`` (train, ``drop_last``) or a ``SequentialSampler``
(val, test). One batch is therefore one tensor gather, with no per-sample Python and no
collation. Batches are float32 (B, C, H, W) images only: factors and labels stay on the
ImageSet and are looked up by index (``datamodule.test_idx``) for the metrics.

On an accelerator the images are moved to the device once (``setup``) and each loader is a
:class:`DeviceBatches`: batches are gathered there, with no DataLoader and no host-to-device
copy per batch, in the same order as the DataLoader path. The last ImageSet built is kept
for the next job of the process with the same data config (:func:`cached_imageset`).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from vaesweep.data.base import DATASETS, ImageSet, build_imageset, cfg_get, check_data, data_config
from vaesweep.errors import ConfigError

log = logging.getLogger(__name__)


class BatchIndexedDataset(Dataset):
    """``dataset[list_of_positions]`` -> ``imageset.batch(indices[positions])``: a whole batch per call."""

    def __init__(self, imageset: ImageSet, indices: np.ndarray) -> None:
        self.imageset = imageset
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        positions = torch.as_tensor(positions, dtype=torch.int64)
        return self.imageset.batch(torch.index_select(self.indices, 0, positions))


class DeviceBatches:
    """Batches gathered where the ImageSet lives (the device-resident fast path).

    The same batches, in the same order, as the DataLoader of :meth:`VAEDataModule._loader`:
    the permutation is ``torch.randperm`` of the same seeded generator (what ``RandomSampler``
    draws), and each pass draws one number from the global generator as a DataLoader
    iterator does for its base seed, so the reparameterisation noise that follows is the
    same too. ``generator`` is the one that orders the batches (for mid-epoch resume).
    """

    def __init__(self, imageset: ImageSet, indices: np.ndarray, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None) -> None:
        self.imageset, self.batch_size, self.shuffle = imageset, int(batch_size), shuffle
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.generator = generator
        self._on_device = self.indices.to(imageset.device)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.shuffle else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        torch.empty((), dtype=torch.int64).random_()  # a DataLoader iterator's base seed
        idx = self._on_device
        if self.shuffle:
            order = torch.randperm(len(self.indices), generator=self.generator)
            idx = idx[order.to(idx.device)]
        bs = self.batch_size
        for i in range(len(self)):
            yield self.imageset.batch(idx[i * bs:(i + 1) * bs])


#: data keys that shape the loaders, not the images: a change keeps the cached ImageSet
LOADER_KEYS = ("batch_size", "eval_batch_size", "val_fraction", "test_fraction", "official_test")
_last_imageset: tuple[Any, ImageSet] | None = None


def _cache_key(cfg: Mapping) -> Any:
    try:
        from omegaconf import OmegaConf
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        builder = DATASETS.get(cfg_get(plain, "name"))
    except Exception:  # a bad config: build_imageset raises the clear error
        return None
    # standardised features depend on the training split: then every key counts
    loader_keys = () if plain.get("standardize") else LOADER_KEYS
    items = sorted((k, repr(v)) for k, v in plain.items() if k not in loader_keys)
    return builder, tuple(items), os.environ.get("VAESWEEP_DATA")


def cached_imageset(cfg: Mapping) -> ImageSet:
    """``build_imageset(cfg)``, reusing the ImageSet of the previous call when the data
    config (less :data:`LOADER_KEYS`), the dataset's builder and ``$VAESWEEP_DATA`` are the
    same: the trials of a sweep run in one process (basic launcher) or a few reused ones
    (joblib), and rebuilding costs about a second per trial (dSprites' 20,000-image subset is
    rendered). Only the last one is kept. ImageSets are not changed by training; the fast path
    moves one to the device and back (``ImageSet.to``), which a later job redoes as needed."""
    global _last_imageset
    key = _cache_key(cfg)
    if key is not None and _last_imageset is not None and _last_imageset[0] == key:
        return _last_imageset[1]
    _last_imageset = None  # free the old one before building the next
    imageset = build_imageset(cfg)
    if key is not None:
        _last_imageset = (key, imageset)
    return imageset


def split_indices(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    official_test: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint sorted (train, val, test) indices of ``range(n)``, a function of the arguments only.

    With ``official_test`` (MNIST's and CIFAR's own test sets) the test split is that set and
    val is drawn from the rest; otherwise test and val are random fractions of all ``n``.
    """
    rng = np.random.default_rng([int(seed), 0x59117])
    if official_test is not None:
        test = np.sort(np.asarray(official_test, dtype=np.int64))
        rest = np.setdiff1d(np.arange(n), test, assume_unique=True)
    else:
        perm = rng.permutation(n)
        n_test = int(round(test_fraction * n))
        test, rest = np.sort(perm[:n_test]), perm[n_test:]
    rest = rng.permutation(rest)
    n_val = int(round(val_fraction * n))
    return np.sort(rest[n_val:]), np.sort(rest[:n_val]), test


class VAEDataModule(L.LightningDataModule):
    """Train/val/test loaders of image batches over one ImageSet held in memory.

    Keys of the ``data`` node read here: ``batch_size``, ``eval_batch_size`` (null: the
    train batch size), ``val_fraction``, ``test_fraction`` (the defaults: the dataset's
    ``keys``), ``seed`` (0: split and
    shuffling), ``official_test`` (true: use the dataset's own test set when it has one).
    The ImageSet is built in ``__init__`` so its shape is known before ``Trainer.fit``.

    ``data_on_device`` (set by the job from ``trainer.data_on_device``): ``"auto"`` moves the
    images to the training device when it is an accelerator and they take at most a quarter
    of its free memory; ``True`` always (on CPU: :class:`DeviceBatches` instead of a
    DataLoader); ``False`` never (a DataLoader, and Lightning copies each batch).
    """

    data_on_device: bool | str = "auto"

    def __init__(self, cfg: Mapping, imageset: ImageSet | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        # the checked keys, with the dataset's defaults for those a partial config leaves out
        # (register_dataset); an ImageSet handed in may be of no registered dataset: then
        # the common ones
        name = cfg_get(cfg, "name")
        config = data_config(None if imageset is not None and name not in DATASETS else name)
        checked = check_data(cfg, config)
        self.batch_size = checked.batch_size
        self.eval_batch_size = checked.eval_batch_size or self.batch_size
        val_fraction, test_fraction = checked.val_fraction, checked.test_fraction
        self.seed = checked.seed
        self.imageset = imageset if imageset is not None else cached_imageset(cfg)
        official = self.imageset.official_test if checked.official_test else None
        self.train_idx, self.val_idx, self.test_idx = split_indices(
            len(self.imageset), val_fraction, test_fraction, self.seed, official
        )
        if len(self.train_idx) < self.batch_size:
            raise ConfigError(
                "data.batch_size",
                self.batch_size,
                f"at most the {len(self.train_idx)} training images of {self.imageset.name!r}",
                "train batches drop the last partial batch; lower data.batch_size or raise data.subset",
            )
        log.info(
            "data %s: %d train / %d val / %d test images", self.imageset.name, len(self.train_idx), len(self.val_idx), len(self.test_idx)
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.imageset.shape

    def setup(self, stage: str) -> None:
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        target = device if self._wants_device(device) else torch.device("cpu")
        if self.imageset.device != target:
            log.info("data: %s images (%.0f MB) to %s", self.imageset.name, self.imageset.nbytes / 1e6, target)
            self.imageset.to(target)

    def _wants_device(self, device: torch.device) -> bool:
        if self.data_on_device is True:
            return True
        if self.data_on_device is False or device.type == "cpu":
            return False
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return self.imageset.nbytes <= free // 4
        return True

    def _loader(self, indices: np.ndarray, batch_size: int, train: bool) -> DataLoader | DeviceBatches:
        generator = torch.Generator().manual_seed(self.seed) if train else None
        if self.imageset.device.type != "cpu" or self.data_on_device is True:
            return DeviceBatches(self.imageset, indices, batch_size, shuffle=train, generator=generator)
        dataset = BatchIndexedDataset(self.imageset, indices)
        if train:
            sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=True)
        else:
            sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, self.eval_batch_size, train=False)
