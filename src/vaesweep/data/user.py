"""The user's own data: a folder of image files (``data=images``) and an array file
(``data=array``: ``.npy``, ``.npz``, ``.pt``), images or a table of features.

``data=images data.root=DIR`` reads every PNG, JPEG, BMP, TIFF and WebP file under DIR
(recursively) with Pillow. Class subfolders give labels (torchvision's ``ImageFolder``
convention: the sorted names of DIR's subfolders are the classes 0, 1, ...) unless
``data.labels=false``; a flat folder has none. The decoded images are kept as one uint8 file
in the project's cache (``$VAESWEEP_DATA``, else ~/.cache/vaesweep, under ``images/``; never
in DIR), named by a hash of the folder's file list with each file's size and modification
time and of the settings that change the pixels, so a later run, trial or worker reads it
instead of decoding again and a changed folder is decoded anew.

``data=array data.path=FILE`` reads images shaped (n, H, W), (n, C, H, W) or (n, H, W, C)
(``data.layout`` when the shape does not tell), uint8 scaled to [0, 1] and other types as they
are; an array shaped (n, d) is d features, held as images of shape (1, 1, d) (the MLP model
reads any shape, N = d). ``data.standardize=true`` makes each feature zero-mean and unit
variance over the training split.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaesweep.data.base import (DataConfig, ImageSet, cfg_get, check_data, data_root,
                                maybe_subset, register_dataset, write_atomically)
from vaesweep.errors import ConfigError, DataError
from vaesweep.schema import boolean, free, one_of
from vaesweep.schema import _field
from vaesweep.data.loaders import split_indices

log = logging.getLogger(__name__)

#: the file name endings read as images (lower case)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1


def _size(key: str, value: Any) -> tuple[int, int] | None:
    """``data.size``: null, one whole number (square) or [H, W] ("H,W" and "HxW" too)."""
    if value is None:
        return None
    allowed = "null, a whole number, or [H,W]: two whole numbers >= 1 (e.g. data.size=[32,32])"
    parts = value
    if isinstance(value, str):
        parts = value.replace("x", ",").split(",")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value, value]
    try:
        out = tuple(int(str(p).strip()) for p in parts)
        if any(float(str(p).strip()) != int(str(p).strip()) for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(key, value, allowed) from None
    if len(out) != 2 or min(out) < 1:
        raise ConfigError(key, value, allowed)
    return out  # type: ignore[return-value]


def _size_field() -> Any:

    return _field(None, lambda key, value: None if value is None else list(_size(key, value)))


@dataclass
class ImagesConfig(DataConfig):
    """root: the folder of image files (required); labels: class subfolders give labels;
    size: [H, W] to resize to (null: every image must share one size); channels: 1 (grey)
    or 3 (RGB) to convert to (null: as the files are, all alike); on_bad_file: ``error``
    stops at a file that is not a readable image, ``skip`` leaves it out (and logs how many)."""

    root: Any = free("???")
    labels: bool = boolean(True)
    size: Any = _size_field()
    channels: int | None = one_of(None, (None, 1, 3))
    on_bad_file: str = one_of("error", ("error", "skip"))


def cache_dir() -> Path:
    """Where decoded user data are cached: ``$VAESWEEP_DATA/images``, else
    ``~/.cache/vaesweep/images`` (never the user's own folder)."""
    return data_root({}) / "images"


def _list_images(root: Path) -> tuple[list[Path], int]:
    """The image files under ``root`` (sorted by relative path; hidden ones left out) and the
    number of other files."""
    files, others = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                files.append(Path(dirpath) / name)
            else:
                others += 1
    return sorted(files, key=lambda p: p.relative_to(root).as_posix()), others


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically (a crash never leaves half a cache); a cache that cannot be written
    is logged, and the data are used uncached."""
    try:
        write_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as err:
        log.warning("could not write the image cache %s: %s", path, err)


def _decode(files: list[Path], root: Path, size: tuple[int, int] | None, channels: int | None,
            skip_bad: bool) -> tuple[np.ndarray, list[Path], int]:
    """uint8 (n, C, H, W) of ``files`` read with Pillow, the files kept, the number skipped."""
    from PIL import Image, UnidentifiedImageError

    images, kept, skipped = [], [], 0
    first: tuple[Path, tuple[int, ...]] | None = None
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                mode = {1: "L", 3: "RGB"}.get(channels or 0) or (
                    "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
                im = im.convert(mode)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            if skip_bad:
                skipped += 1
                continue
            problem = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError("data.root", path, f"not a readable image ({type(err).__name__}: {problem})",
                            "remove or replace it, or set data.on_bad_file=skip") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if first is None:
            first = (path, arr.shape)
        elif arr.shape != first[1]:
            what = "channels" if arr.shape[0] != first[1][0] else "size"
            fix = "data.channels=1 or 3" if what == "channels" else "data.size=[H,W] to resize them"
            raise DataError("data.root", path,
                            f"image of shape {arr.shape} (C, H, W), unlike {first[0]} of shape "
                            f"{first[1]}: all images must share one {what}", f"set {fix}")
        images.append(arr)
        kept.append(path)
    if not images:
        raise DataError("data.root", root, "no readable image file", "every image file was skipped")
    return np.stack(images), kept, skipped


@register_dataset("images", ImagesConfig, val_fraction=0.1, test_fraction=0.1)
def build_images(cfg: Mapping) -> ImageSet:
    """The image files under ``data.root`` (see the module doc): uint8 (n, C, H, W) scaled
    by 1/255, labels from class subfolders. Raises :class:`DataError` naming the folder (no
    such folder, no image file in it) or the file (not a readable image, a size or channel
    count unlike the first image's)."""
    checked = check_data(cfg, ImagesConfig)
    root_value = cfg_get(cfg, "root")
    root = Path(str(root_value)).expanduser()
    if not root.is_dir():
        raise DataError("data.root", root, "no such folder", "data=images reads a folder of image files")
    files, others = _list_images(root)
    if not files:
        raise DataError("data.root", root, f"no image file ({', '.join(IMAGE_SUFFIXES)}) in the folder",
                        "data=array data.path=FILE reads .npy, .npz and .pt files")
    if others:
        log.info("data images: %d files in %s are not images by name and are left out", others, root)
    size = _size("data.size", checked.size)
    skip_bad = checked.on_bad_file == "skip"
    listing = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(repr((CACHE_VERSION, str(root.resolve()), listing, size, checked.channels,
                               skip_bad)).encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.npz"
    data = kept_names = None
    skipped = 0
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                data, kept_names, skipped = z["images"], list(z["files"]), int(z["skipped"])
            log.info("data images: %d images of %s read from the cache %s", len(data), root, path)
        except (OSError, ValueError, KeyError, EOFError) as err:
            log.warning("image cache %s is unreadable (%s); decoding again", path, err)
            data = None
    if data is None:
        log.info("data images: decoding %d files under %s", len(files), root)
        data, kept, skipped = _decode(files, root, size, checked.channels, skip_bad)
        kept_names = [p.relative_to(root).as_posix() for p in kept]
        _save_npz(path, images=data, files=np.asarray(kept_names, dtype=str),
                  skipped=np.asarray(skipped))
    if skipped:
        log.warning("data images: %d of %d files under %s are not readable images and were "
                    "skipped (data.on_bad_file=skip)", skipped, len(files), root)
    labels = None
    if checked.labels:
        tops = [n.split("/", 1) for n in kept_names]
        nested = [len(t) == 2 for t in tops]
        if any(nested):
            if not all(nested):
                flat = kept_names[nested.index(False)]
                raise DataError("data.root", root / flat,
                                "an image outside the class subfolders (labels come from "
                                "the subfolder of data.root each image is in)",
                                "move it into a class folder, or set data.labels=false")
            classes = sorted({t[0] for t in tops})
            labels = np.asarray([classes.index(t[0]) for t in tops], dtype=np.int64)
            log.info("data images: %d classes from the subfolders of %s", len(classes), root)
    imageset = ImageSet("images", torch.from_numpy(np.ascontiguousarray(data)), data.shape[1:],
                        codec="uint8", scale=1.0 / 255.0, labels=labels)
    return maybe_subset(imageset, cfg)


# -- arrays ----------------------------------------------------------------------------------
LAYOUTS = ("nchw", "nhwc", "nhw", "nd")


@dataclass
class ArrayConfig(DataConfig):
    """path: the .npy, .npz or .pt file (required); x_key: its array of images or features
    (null: the .npy array, or the file's only array); y_key: class labels (n,); factors_key:
    factor classes (n, F) for MIG and the other structure scores; layout: nchw, nhwc, nhw or
    nd (null: from the shape, when it is unambiguous); standardize: each feature to mean 0,
    standard deviation 1 over the training split."""

    path: Any = free("???")
    x_key: str | None = free(None)
    y_key: str | None = free(None)
    factors_key: str | None = free(None)
    layout: str | None = one_of(None, (None, *LAYOUTS))
    standardize: bool = boolean(False)

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.root is not None:  # read nowhere: refused rather than ignored
            raise ConfigError(f"{prefix}.root", self.root, "null: data=array reads the file "
                              "data.path=FILE", "a folder of image files: data=images data.root=DIR")


def _load_arrays(path: Path) -> dict[str, np.ndarray] | np.ndarray:
    """The file's arrays: one (.npy, a .pt tensor) or a name -> array mapping (.npz, a .pt
    dict). Raises DataError naming the file."""
    hint = "data=array reads .npy, .npz and .pt (a tensor or a dict of tensors) files"
    if not path.is_file():
        raise DataError("data.path", path, "no such file", hint)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                return obj.numpy()
            if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
                return {str(k): v.numpy() for k, v in obj.items()}
            raise DataError("data.path", path, f"holds a {type(obj).__name__}, not a tensor or a dict of tensors", hint)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy, zipfile and torch raise many kinds
        problem = str(err).splitlines()[0] if str(err) else ""
        raise DataError("data.path", path, f"cannot be read ({type(err).__name__}: {problem})", hint) from None
    raise DataError("data.path", path, f"unknown file type {suffix!r}", hint)


def _pick(arrays: dict[str, np.ndarray] | np.ndarray, key: str, name: str | None, path: Path,
          required: bool) -> np.ndarray | None:
    if isinstance(arrays, np.ndarray):
        if name is None or key == "x_key":
            if name is not None:
                raise ConfigError(f"data.{key}", name, f"null: {path} holds one array, not named ones")
            return arrays if required else None
        raise ConfigError(f"data.{key}", name, f"null: {path} holds one array, not named ones")
    if name is None:
        if not required:
            return None
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise ConfigError(f"data.{key}", None, f"one of the keys of {path}: {sorted(arrays)}")
    if name not in arrays:
        raise ConfigError(f"data.{key}", name, f"one of the keys of {path}: {sorted(arrays)}")
    return arrays[name]


def _layout(x: np.ndarray, layout: str | None, path: Path) -> np.ndarray:
    """``x`` as (n, C, H, W) (features (n, d): (n, 1, 1, d))."""
    shapes = {"nd": 2, "nhw": 3, "nchw": 4, "nhwc": 4}
    if layout is None:
        if x.ndim in (2, 3):
            layout = "nd" if x.ndim == 2 else "nhw"
        elif x.ndim == 4:
            first, last = x.shape[1] in (1, 3, 4), x.shape[3] in (1, 3, 4)
            if first != last:
                layout = "nchw" if first else "nhwc"
            else:
                raise ConfigError("data.layout", None, "nchw or nhwc: the array's shape "
                                  f"{x.shape} does not tell which axis holds the channels")
        else:
            raise DataError("data.path", path, f"an array of shape {x.shape}",
                            "data=array takes (n, d), (n, H, W), (n, C, H, W) or (n, H, W, C)")
    if x.ndim != shapes[layout]:
        raise ConfigError("data.layout", layout, f"a layout of a {x.ndim}-D array: "
                          + ", ".join(k for k, v in shapes.items() if v == x.ndim))
    if layout == "nd":
        return x[:, None, None, :]
    if layout == "nhw":
        return x[:, None]
    return x if layout == "nchw" else x.transpose(0, 3, 1, 2)


@register_dataset("array", ArrayConfig, val_fraction=0.1, test_fraction=0.1)
def build_array(cfg: Mapping) -> ImageSet:
    """The array ``data.x_key`` of ``data.path`` (see the module doc) with labels
    (``data.y_key``) and factor classes (``data.factors_key``). Raises ConfigError for a key
    the file lacks (listing the keys it has) or an ambiguous layout, DataError for a file
    that cannot be read."""
    checked = check_data(cfg, build_array.Config)  # the registered defaults (val_fraction=0.1)
    if cfg_get(cfg, "path") is None:
        raise ConfigError("data.path", None, "a .npy, .npz or .pt file (data=array needs one)")
    path = Path(str(cfg_get(cfg, "path"))).expanduser()
    arrays = _load_arrays(path)
    x = _pick(arrays, "x_key", checked.x_key, path, True)
    y = _pick(arrays, "y_key", checked.y_key, path, False)
    f = _pick(arrays, "factors_key", checked.factors_key, path, False)
    assert x is not None
    if x.dtype.kind not in "biuf" or x.ndim < 2 or len(x) == 0:
        raise DataError("data.path", path, f"data.x_key holds a {x.dtype} array of shape {x.shape}",
                        "images or features: a non-empty numeric array with one row per example")
    x = np.ascontiguousarray(_layout(x, checked.layout, path))
    for what, arr in (("y_key", y), ("factors_key", f)):
        if arr is not None and len(arr) != len(x):
            raise ConfigError(f"data.{what}", getattr(checked, what),
                              f"an array with one row per example ({len(x)}), not {len(arr)}")
    factors = sizes = names = None
    if f is not None:
        factors = np.asarray(f).reshape(len(f), -1)
        if factors.dtype.kind not in "iub" or factors.min() < 0:
            raise ConfigError("data.factors_key", checked.factors_key,
                              "an array of factor classes: whole numbers >= 0, shaped (n, F)")
        factors = factors.astype(np.int64)
        sizes = (factors.max(axis=0) + 1).tolist()
        names = [f"factor_{j}" for j in range(factors.shape[1])]
    if x.dtype == np.uint8:
        data, codec, scale = torch.from_numpy(x), "uint8", 1.0 / 255.0
    elif x.dtype == np.bool_:
        data, codec, scale = torch.from_numpy(x.astype(np.uint8)), "uint8", 1.0
    else:
        data, codec, scale = torch.from_numpy(x.astype(np.float32)), "float32", 1.0
    imageset = ImageSet("array", data, x.shape[1:], codec=codec, scale=scale,
                        labels=None if y is None else np.asarray(y).reshape(-1),
                        factors=factors, factor_names=names, factor_sizes=sizes)
    imageset = maybe_subset(imageset, cfg)
    if checked.standardize:
        imageset = _standardized(imageset, checked)
    return imageset


def _standardized(imageset: ImageSet, checked: Any) -> ImageSet:
    """Each feature (pixel) minus its mean, over its standard deviation (1 where it is 0),
    both over the training split of :func:`~vaesweep.data.loaders.split_indices`."""

    train, _, _ = split_indices(len(imageset), checked.val_fraction, checked.test_fraction,
                                checked.seed, None)
    x = imageset.images()
    mean = x[torch.from_numpy(train)].mean(dim=0, keepdim=True)
    std = x[torch.from_numpy(train)].std(dim=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ImageSet(imageset.name, (x - mean) / std, imageset.shape, codec="float32",
                    labels=imageset.labels, factors=imageset.factors,
                    factor_names=imageset.factor_names, factor_sizes=imageset.factor_sizes)
