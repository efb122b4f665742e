"""Labelled image sets: scikit-learn's digits, and MNIST, Fashion-MNIST, CIFAR-10 via torchvision.

The torchvision sets are read from ``data.root`` once into one uint8 tensor (train then test,
with ``official_test`` marking the dataset's own test images) and are downloaded only when
``data.download=true``. Files are checked before torchvision parses them, so a missing,
truncated or foreign file is reported by name instead of as a bare ``AssertionError``.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vaesweep.data.base import ImageSet, cfg_get, data_root, maybe_subset, register_dataset
from vaesweep.errors import DataError

log = logging.getLogger(__name__)


@register_dataset("digits")
def build_digits(cfg: Mapping) -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (values 0..16, scaled to [0, 1]) with labels. Keys: subset, seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8)[:, None])  # values are integers 0..16
    imageset = ImageSet("digits", images, (1, 8, 8), codec="uint8", scale=1.0 / 16.0, labels=digits.target)
    return maybe_subset(imageset, cfg)


# -- MNIST-style IDX files -------------------------------------------------------------------
_IDX_UINT8 = 0x08


def check_idx(path: Path, ndim: int, shape_tail: tuple[int, ...] = ()) -> int:
    """Check an uncompressed IDX file (LeCun's MNIST format) of uint8 and return its item count.

    The magic number is 0x0000, then type 0x08 (unsigned byte), then the number of dimensions;
    then one big-endian uint32 per dimension; then the data, exactly prod(dims) bytes.
    """
    hint = "replace it with the original file (or delete it and set data.download=true)"
    try:
        with open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            size = path.stat().st_size
    except OSError as err:
        raise DataError("data.root", path, f"cannot read the file ({err.strerror})", hint) from err
    if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != _IDX_UINT8 or header[3] != ndim:
        raise DataError(
            "data.root",
            path,
            f"not an IDX file of {ndim}-D uint8 data (magic {header[:4].hex() or 'missing'}, "
            f"expected 0000{_IDX_UINT8:02x}{ndim:02x})",
            hint + "; gzip files must be decompressed" if header[:2] == b"\x1f\x8b" else hint,
        )
    if len(header) < 4 + 4 * ndim:
        raise DataError("data.root", path, "the IDX header is truncated", hint)
    dims = struct.unpack(f">{ndim}I", header[4:])
    if shape_tail and tuple(dims[1:]) != shape_tail:
        raise DataError("data.root", path, f"items are shaped {dims[1:]}, expected {shape_tail}", hint)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if size != expected:
        raise DataError("data.root", path, f"the file has {size} bytes, its header announces {expected} (truncated?)", hint)
    return dims[0]


def _vision_error(name: str, root: Path, problem: str, files: list[Path]) -> DataError:
    listing = ", ".join(str(p) for p in files)
    return DataError(
        "data.root",
        root,
        f"{name} {problem}",
        f"expected {listing}; set data.download=true to download it with torchvision, "
        "or point data.root at a directory that holds them",
    )


def _mnist_like(cfg: Mapping, name: str, tv_class: str) -> ImageSet:
    import torchvision.datasets as tvd

    root = data_root(cfg)
    download = bool(cfg_get(cfg, "download", False))
    raw = root / tv_class / "raw"
    pairs = [(raw / f"{p}-images-idx3-ubyte", raw / f"{p}-labels-idx1-ubyte") for p in ("train", "t10k")]
    files = [f for pair in pairs for f in pair]
    if not download:
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise _vision_error(name, root, f"is missing from data.root ({len(missing)} of 4 files)", files)
    parts = []
    for split, (images_file, labels_file) in zip(("train", "test"), pairs):
        if images_file.is_file() and labels_file.is_file():
            n_images = check_idx(images_file, 3, (28, 28))
            n_labels = check_idx(labels_file, 1)
            if n_images != n_labels:
                raise DataError("data.root", labels_file, f"{n_labels} labels for {n_images} images in {images_file.name}")
        try:
            ds = getattr(tvd, tv_class)(str(root), train=split == "train", download=download)
        except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as err:
            raise _vision_error(name, root, f"could not be read or downloaded ({type(err).__name__}: {err})", files) from err
        parts.append((ds.data, ds.targets))
    data = torch.cat([p[0] for p in parts]).unsqueeze(1).contiguous()
    labels = torch.cat([torch.as_tensor(p[1]) for p in parts]).numpy()
    n_train = len(parts[0][0])
    imageset = ImageSet(
        name, data, (1, 28, 28), codec="uint8", scale=1.0 / 255.0, labels=labels,
        official_test=np.arange(n_train, len(data)),
    )
    return maybe_subset(imageset, cfg)


@register_dataset("mnist")
def build_mnist(cfg: Mapping) -> ImageSet:
    """MNIST from ``<root>/MNIST/raw/`` (70,000 images, the last 10,000 the official test set).

    Keys: root, download (false), subset, seed.
    """
    return _mnist_like(cfg, "mnist", "MNIST")


@register_dataset("fashion_mnist")
def build_fashion_mnist(cfg: Mapping) -> ImageSet:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/``. Keys: root, download (false), subset, seed."""
    return _mnist_like(cfg, "fashion_mnist", "FashionMNIST")


@register_dataset("cifar10")
def build_cifar10(cfg: Mapping) -> ImageSet:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (60,000 3x32x32 images, the last 10,000 the test set).

    Keys: root, download (false), subset, seed.
    """
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    root = data_root(cfg)
    download = bool(cfg_get(cfg, "download", False))
    folder = root / tvd.CIFAR10.base_folder
    listed = tvd.CIFAR10.train_list + tvd.CIFAR10.test_list
    files = [folder / fname for fname, _ in listed] + [folder / tvd.CIFAR10.meta["filename"]]
    if not download:
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise _vision_error("cifar10", root, f"is missing from data.root ({len(missing)} of {len(files)} files)", files)
        corrupt = [folder / fname for fname, md5 in listed if not check_integrity(str(folder / fname), md5)]
        if corrupt:
            raise DataError(
                "data.root", corrupt[0], "the file fails its MD5 check (truncated or modified)",
                "replace it with the original, or delete the folder and set data.download=true",
            )
    parts = []
    for train in (True, False):
        try:
            ds = tvd.CIFAR10(str(root), train=train, download=download)
        except (RuntimeError, ValueError, OSError, EOFError, KeyError) as err:
            raise _vision_error("cifar10", root, f"could not be read or downloaded ({type(err).__name__}: {err})", files) from err
        parts.append((ds.data, ds.targets))
    data = torch.from_numpy(np.concatenate([p[0] for p in parts]).transpose(0, 3, 1, 2).copy())
    labels = np.concatenate([np.asarray(p[1]) for p in parts])
    imageset = ImageSet(
        "cifar10", data, (3, 32, 32), codec="uint8", scale=1.0 / 255.0, labels=labels,
        official_test=np.arange(len(parts[0][0]), len(data)),
    )
    return maybe_subset(imageset, cfg)
