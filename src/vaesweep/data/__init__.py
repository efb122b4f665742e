"""Datasets (``data=``) and the LightningDataModule.

A dataset is one builder registered with ``@register_dataset("name", Config)`` that turns the
``data`` config node into an :class:`ImageSet` (``Config``: its keys, a
:class:`~vaesweep.data.base.DataConfig` dataclass); :class:`VAEDataModule` splits it and
serves batches.
``VAEDataModule`` is imported on first use, so that code needing only images (metrics,
notebooks) does not pay for importing Lightning.
"""
from typing import Any

from vaesweep.data.base import DATASETS, ImageSet, build_imageset, register_dataset

DATASETS.discover()  # imports every dataset module (not loaders): a new dataset is one file

_LAZY = {"VAEDataModule", "BatchIndexedDataset", "split_indices"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from vaesweep.data import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "BatchIndexedDataset",
    "ImageSet",
    "VAEDataModule",
    "build_imageset",
    "register_dataset",
    "split_indices",
]
