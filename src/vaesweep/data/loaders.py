"""The LightningDataModule: a deterministic train/val/test split of an ImageSet, served as batches.

Each loader is a ``DataLoader`` with ``batch_size=None`` over a dataset whose ``__getitem__``
takes a whole list of indices and returns ``imageset.batch(indices)``; the sampler is a
``BatchSampler`` over a ``RandomSampler`` (train, ``drop_last``) or a ``SequentialSampler``
(val, test). One batch is therefore one tensor gather, with no per-sample Python and no
collation. Batches are float32 (B, C, H, W) images only: factors and labels stay on the
ImageSet and are looked up by index (``datamodule.test_idx``) for the metrics.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from vaesweep.data.base import ImageSet, build_imageset, cfg_get, data_seed
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


def _fraction(cfg: Mapping, key: str, default: float) -> float:
    value = cfg_get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"data.{key}", value, "a number in [0, 1)")
    return float(value)


def _positive_int(cfg: Mapping, key: str, default: int | None) -> int | None:
    value = cfg_get(cfg, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"data.{key}", value, "a positive integer")
    return int(value)


class VAEDataModule(L.LightningDataModule):
    """Train/val/test loaders of image batches over one ImageSet held in memory.

    Keys of the ``data`` node read here: ``batch_size`` (64), ``eval_batch_size`` (null: the
    train batch size), ``val_fraction`` (0.1), ``test_fraction`` (0.1), ``seed`` (0: split and
    shuffling), ``official_test`` (true: use the dataset's own test set when it has one).
    The ImageSet is built in ``__init__`` so its shape is known before ``Trainer.fit``.
    """

    def __init__(self, cfg: Mapping, imageset: ImageSet | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.batch_size = _positive_int(cfg, "batch_size", 64)
        self.eval_batch_size = _positive_int(cfg, "eval_batch_size", None) or self.batch_size
        val_fraction = _fraction(cfg, "val_fraction", 0.1)
        test_fraction = _fraction(cfg, "test_fraction", 0.1)
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                "data.val_fraction", val_fraction, f"at most {1.0 - test_fraction:g} with data.test_fraction={test_fraction:g}"
            )
        self.seed = data_seed(cfg)
        self.imageset = imageset if imageset is not None else build_imageset(cfg)
        official = self.imageset.official_test if bool(cfg_get(cfg, "official_test", True)) else None
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

    def _loader(self, indices: np.ndarray, batch_size: int, train: bool) -> DataLoader:
        dataset = BatchIndexedDataset(self.imageset, indices)
        if train:
            generator = torch.Generator().manual_seed(self.seed)
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
