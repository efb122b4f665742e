"""Images held in memory, the dataset registry, and the helpers every builder shares.

An :class:`ImageSet` keeps a whole dataset as one tensor and produces a batch by tensor
indexing, so fetching a batch costs one gather and one dtype conversion, never a Python loop
over samples. Three storage codecs cover the datasets: ``"uint8"`` (MNIST, CIFAR, digits:
integers scaled by a constant), ``"bits"`` (binary images packed eight pixels to a byte, as
``np.packbits`` writes them: dSprites in 377 MB instead of 3 GB) and ``"float32"``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaesweep.errors import ConfigError, number
from vaesweep.integers import as_integers
from vaesweep.registry import Registry
from vaesweep.schema import PartConfig, boolean, config_from_keys, free, num, whole
from vaesweep.contract import launch_path

log = logging.getLogger(__name__)

#: name -> builder(cfg: Mapping) -> ImageSet; the config key is ``data.name``.
# loaders is skipped: it imports Lightning, and holds no dataset
DATASETS = Registry("dataset", "data.name", package="vaesweep.data", skip=("loaders",))

#: Where datasets live when ``data.root`` is not set (overridable by ``$VAESWEEP_DATA``).
DEFAULT_ROOT = "~/.cache/vaesweep"

CODECS = ("uint8", "bits", "float32")

Renderer = Callable[[np.ndarray], torch.Tensor]


@dataclass
class DataConfig(PartConfig):
    """The ``data`` keys every dataset has (a dataset's Config subclasses it).

    root: folder (null: $VAESWEEP_DATA, else ~/.cache/vaesweep); subset: number of images
    (null: all; at most the dataset's size, checked when it is built); seed: the subset and
    the train/val/test split; batch_size: train images per step; val_fraction, test_fraction:
    of the images (test: of those besides an official test set), together below 1. Accepted
    when given (``+data.<key>=...``): eval_batch_size (null: batch_size), official_test
    (true: the dataset's own test set when it has one)."""

    root: Any = free(None)
    subset: int | None = whole(None, 1, optional=True)
    seed: int = whole(0, 0)
    batch_size: int = whole(64, 1)
    val_fraction: float = num(0.05, 0.0, 1.0, hi_open=True)
    test_fraction: float = num(0.05, 0.0, 1.0, hi_open=True)
    eval_batch_size: int | None = whole(None, 1, optional=True, extra=True)
    official_test: bool = boolean(True, extra=True)

    def check(self, prefix: str) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"{prefix}.val_fraction", self.val_fraction,
                              f"at most {1.0 - self.test_fraction:g} with "
                              f"{prefix}.test_fraction={self.test_fraction:g}")


#: what to use instead of a data.root that a dataset does not read
YOUR_DATA = ("your own images: data=images data.root=DIR; an array file: "
             "data=array data.path=FILE")


@dataclass
class ShippedConfig(DataConfig):
    """A dataset shipped inside a package (digits, mnist_5k): it reads no folder, so a
    ``data.root`` given is refused rather than ignored."""

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.root is not None:
            raise ConfigError(f"{prefix}.root", self.root,
                              "null: this dataset is shipped with a package and reads no folder",
                              YOUR_DATA)


#: the defaults of the ``data`` keys every dataset has (:class:`DataConfig`)
DATA_KEYS: dict[str, Any] = DataConfig.defaults()


def register_dataset(name: str, config: type[DataConfig] = DataConfig, **defaults: Any) -> Callable:
    """Decorator: ``@register_dataset("mnist", DownloadConfig)`` on a ``builder(cfg) -> ImageSet``.

    ``config`` (a :class:`DataConfig` dataclass) declares the dataset's keys with their
    defaults and ranges; ``defaults`` set other defaults for some of them (``val_fraction=0.1``;
    a key it does not declare is accepted unchecked). The builder's ``Config`` is the result,
    and ``keys`` its defaults, the schema of its ``data`` config node."""
    registered = DATASETS.register(name)

    def deco(builder: Callable) -> Callable:
        builder.Config = (config_from_keys(defaults, config, f"{name}_config") if defaults
                          else config)
        builder.keys = builder.Config.defaults()
        return registered(builder)

    return deco


def data_config(name: Any) -> type[DataConfig]:
    """The typed config of dataset ``name`` (:class:`DataConfig` when it has no name).
    Raises ConfigError (``data.name``) for an unregistered name."""
    return DataConfig if name is None else DATASETS.get(name).Config


def dataset_defaults(name: Any) -> dict[str, Any]:
    """The defaults of dataset ``name``'s keys (:data:`DATA_KEYS` when it has no name)."""
    return data_config(name).defaults()


def _bit_table() -> torch.Tensor:
    """(256,) int64: the 8 bytes of entry b are the bits of byte b (0 or 1), most significant first.

    Unpacking is then one gather of int64s and one uint8 -> float32 conversion, about twice as
    fast on CPU as gathering rows of a (256, 8) float table (benchmarks/bench_dsprites.py).
    """
    b = torch.arange(256, dtype=torch.int64)[:, None]
    bits = ((b >> torch.arange(7, -1, -1)) & 1).to(torch.uint8).contiguous()
    return bits.view(torch.int64).view(256)


class ImageSet:
    """Images held in memory; batches are produced by tensor indexing, never per-sample Python.

    ``factors`` (N, F) are int64 factor classes for synthetic data with known generative
    factors (dSprites), ``labels`` (N,) int64 classes for labelled data (digits, MNIST, ...).
    ``render`` returns images for arbitrary factor classes, which the FactorVAE and β-VAE
    scores need; it exists only for sets with factors.
    """

    def __init__(
        self,
        name: str,
        data: torch.Tensor | np.ndarray,
        shape: Sequence[int],
        *,
        codec: str = "uint8",
        scale: float = 1.0 / 255.0,
        factors: np.ndarray | None = None,
        factor_names: Sequence[str] | None = None,
        factor_sizes: Sequence[int] | None = None,
        factor_grid: Sequence[np.ndarray] | None = None,
        labels: np.ndarray | None = None,
        renderer: Renderer | None = None,
        official_test: np.ndarray | None = None,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        self.name = name
        self.shape: tuple[int, int, int] = tuple(  # type: ignore[assignment]
            int(v) for v in as_integers(shape, "shape", "(C, H, W) whole numbers").reshape(-1))
        if len(self.shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {self.shape}")
        data = torch.as_tensor(data)
        n = data.shape[0]
        per_image = int(np.prod(self.shape))
        expected = {"bits": (n, (per_image + 7) // 8)}.get(codec, (n, *self.shape))
        if codec == "bits" and per_image % 8:
            raise ValueError(f"bits codec needs C*H*W divisible by 8, got {self.shape}")
        if tuple(data.shape) != expected:
            raise ValueError(f"{name}: storage shape {tuple(data.shape)} != {expected} for codec {codec!r}")
        if codec in ("uint8", "bits") and data.dtype != torch.uint8:
            raise ValueError(f"{name}: codec {codec!r} needs uint8 storage, got {data.dtype}")
        self.codec = codec
        self.scale = float(scale)
        self.data = data.to(torch.float32) if codec == "float32" else data
        self._bits = _bit_table() if codec == "bits" else None

        self.factor_names = list(factor_names) if factor_names is not None else None
        self.factor_sizes = (as_integers(factor_sizes, f"{name}: factor_sizes", "whole numbers").tolist()
                             if factor_sizes is not None else None)
        self.factor_grid = [np.asarray(g) for g in factor_grid] if factor_grid is not None else None
        # classes, never truncated values (vaesweep.integers)
        self.factors = None if factors is None else np.ascontiguousarray(as_integers(
            factors, f"{name}: factors", "integer factor classes (images, factors)"))
        self.labels = None if labels is None else np.ascontiguousarray(as_integers(
            labels, f"{name}: labels", "integer class labels"))
        for what, arr in (("factors", self.factors), ("labels", self.labels)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name}: {what} has {len(arr)} rows for {n} images")
        if self.factors is not None and (self.factor_sizes is None or self.factors.shape[1] != len(self.factor_sizes)):
            raise ValueError(f"{name}: factors need factor_sizes with one size per column")
        self._renderer = renderer
        #: indices (into this set) of the dataset's official test split, if it has one
        self.official_test = None if official_test is None else as_integers(
            official_test, f"{name}: official_test", "integer image indices")

    # -- size and device -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v}" for k, v in (("factors", self.factor_names), ("labels", self.labels is not None)) if v
        )
        return f"ImageSet({self.name!r}, n={len(self)}, shape={self.shape}, codec={self.codec!r}, device={self.device}{extra})"

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        """Bytes of image storage."""
        return self.data.numel() * self.data.element_size()

    def value_range(self) -> tuple[float, float]:
        """(lowest, highest) value of the batches this set gives (for the heads that model
        values in [0, 1] only); ``(0, 0)`` when it is empty."""
        if self.codec == "bits" or not len(self):
            return (0.0, 1.0 if len(self) else 0.0)
        lo, hi = float(self.data.min()), float(self.data.max())
        return (lo * self.scale, hi * self.scale) if self.codec == "uint8" else (lo, hi)

    def to(self, device: torch.device | str) -> "ImageSet":
        """Move the image storage to ``device`` in place (returns self); batches then come from there."""
        self.data = self.data.to(device)
        if self._bits is not None:
            self._bits = self._bits.to(device)
        return self

    # -- batches ---------------------------------------------------------------------------
    def _index(self, idx: np.ndarray | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            if idx.is_floating_point():
                raise ValueError(f"image indices must be integers, got a {idx.dtype} tensor")
            idx = idx.to(device=self.data.device, dtype=torch.int64)
        else:
            idx = torch.as_tensor(as_integers(idx, "image indices", "integer image indices"),
                                  device=self.data.device)
        return idx

    def batch(self, idx: np.ndarray | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """float32 (B, C, H, W) in [0, 1] for the given image indices."""
        # index_select, not data[idx]: the advanced-indexing kernel is ~5x slower on CPU.
        rows = torch.index_select(self.data, 0, self._index(idx))
        if self.codec == "bits":
            rows = torch.index_select(self._bits, 0, rows.view(-1).long()).view(torch.uint8)
        elif self.codec == "float32":
            return rows
        images = rows.to(torch.float32).view(-1, *self.shape)
        return images if self.scale == 1.0 else images.mul_(self.scale)

    def images(self) -> torch.Tensor:
        """All images as float32 (N, C, H, W); for small sets (plots, metrics)."""
        return self.batch(torch.arange(len(self), device=self.data.device))

    # -- factors ---------------------------------------------------------------------------
    def _require_factors(self, what: str) -> list[int]:
        if self.factor_sizes is None:
            raise NotImplementedError(f"{what}: dataset {self.name!r} has no generative factors")
        return self.factor_sizes

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, F) int64 factor classes, each factor uniform over its classes."""
        sizes = self._require_factors("sample_factors")
        return rng.integers(0, sizes, size=(int(n), len(sizes)), dtype=np.int64)

    def render(self, classes: np.ndarray) -> torch.Tensor:
        """float32 (n, C, H, W) images for (n, F) factor classes (any classes, not only this subset's)."""
        self._require_factors("render")
        if self._renderer is None:
            raise NotImplementedError(f"render: dataset {self.name!r} cannot render factor classes")
        classes = self.check_classes(classes)
        return self._renderer(classes).to(self.data.device)

    def check_classes(self, classes: np.ndarray) -> np.ndarray:
        """``classes`` as an (n, F) int64 array, after checking every class is in range."""
        sizes = np.asarray(self._require_factors("check_classes"))
        classes = np.asarray(classes)
        if classes.ndim == 1 and classes.shape[0] == len(sizes):
            classes = classes[None, :]
        if classes.ndim != 2 or classes.shape[1] != len(sizes):
            raise ValueError(f"factor classes must be shaped (n, {len(sizes)}), got {classes.shape}")
        if not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"factor classes must be integers, got {classes.dtype}")
        classes = classes.astype(np.int64, copy=False)
        if classes.size and ((classes < 0).any() or (classes >= sizes).any()):
            raise ValueError(f"factor classes out of range for sizes {sizes.tolist()}")
        return classes

    def factor_values(self, classes: np.ndarray) -> np.ndarray:
        """float64 (n, F): the value each factor class stands for (scale 0.5..1, angle in radians...)."""
        classes = self.check_classes(classes)
        if self.factor_grid is None:
            return classes.astype(np.float64)
        return np.stack([g[c] for g, c in zip(self.factor_grid, classes.T)], axis=1).astype(np.float64)

    # -- subsets ---------------------------------------------------------------------------
    def take(self, idx: np.ndarray, name: str | None = None) -> "ImageSet":
        """A new ImageSet holding images ``idx`` (a copy); factors, labels and renderer follow."""
        idx = np.asarray(idx, dtype=np.int64)
        official = None
        if self.official_test is not None:
            pos = np.full(len(self), -1, dtype=np.int64)
            pos[idx] = np.arange(len(idx))
            official = pos[self.official_test]
            official = np.sort(official[official >= 0])
        return ImageSet(
            name or self.name,
            self.data[torch.from_numpy(idx).to(self.data.device)],
            self.shape,
            codec=self.codec,
            scale=self.scale,
            factors=None if self.factors is None else self.factors[idx],
            factor_names=self.factor_names,
            factor_sizes=self.factor_sizes,
            factor_grid=self.factor_grid,
            labels=None if self.labels is None else self.labels[idx],
            renderer=self._renderer,
            official_test=official,
        )


# -- config helpers shared by the builders ---------------------------------------------------
def cfg_get(cfg: Mapping, key: str, default: Any = None) -> Any:
    """``cfg[key]`` or ``default`` when the key is absent or null (works for dicts and DictConfig).

    A mandatory value left unset in a DictConfig (``root: ???``) is a ConfigError naming it.
    """
    if type(cfg).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"data.{key}", "???", "a value: it is required for this dataset")
    value = cfg.get(key, default)
    return default if value is None else value


def check_data(cfg: Mapping, config: type[DataConfig]) -> Any:
    """The ``data`` node (dict or DictConfig) checked against ``config``, a null value
    standing for the default as in :func:`cfg_get` (``root`` is the builder's to read: a
    missing one is reported there). Returns the checked config; raises ConfigError."""
    given = {k: cfg_get(cfg, k) for k in config.key_names() if k != "root"}
    return config.validate({k: v for k, v in given.items() if v is not None}, "data")


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then moved onto it: a crash
    mid-write never leaves a truncated cache behind. The file gets the permissions a plain
    ``open`` would (``mkstemp`` makes it 0600). Raises OSError; the temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_root(cfg: Mapping) -> Path:
    """``data.root``, else ``$VAESWEEP_DATA``, else ~/.cache/vaesweep; ``~`` expanded; a
    relative folder is read against the folder the command was started from (not a
    ``hydra.job.chdir=true`` job's output folder)."""
    root = cfg_get(cfg, "root") or os.environ.get("VAESWEEP_DATA") or DEFAULT_ROOT
    return launch_path(str(root))


def subset_size(cfg: Mapping, n: int) -> int | None:
    """``data.subset`` validated: None (whole set, also when it is ``n``) or a whole number in
    1..n (2.0 is 2). Raises ConfigError naming ``data.subset``."""
    subset = cfg_get(cfg, "subset")
    if subset is None:
        return None
    subset = number("data.subset", subset, 1, n, integer=True)
    return None if subset == n else int(subset)


def subset_indices(n: int, size: int, seed: int) -> np.ndarray:
    """A deterministic random subset of ``range(n)``: ``size`` sorted distinct indices.

    Depends only on (n, size, seed), so a subset is the same whether taken from the full set
    or rendered directly.
    """
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    return np.sort(rng.choice(n, size=size, replace=False))


def data_seed(cfg: Mapping) -> int:
    """``data.seed``: a whole number >= 0 (:class:`DataConfig`); raises ConfigError."""
    return int(DataConfig.validate({"seed": cfg_get(cfg, "seed", DATA_KEYS["seed"])}, "data").seed)


def maybe_subset(imageset: ImageSet, cfg: Mapping) -> ImageSet:
    """Apply ``data.subset`` (with ``data.seed``) to a full ImageSet."""
    size = subset_size(cfg, len(imageset))
    if size is None:
        return imageset
    return imageset.take(subset_indices(len(imageset), size, data_seed(cfg)))


def build_imageset(cfg: Mapping) -> ImageSet:
    """Build the ImageSet named by ``data.name`` from the ``data`` config node, checked
    against the dataset's dataclass first. Raises ConfigError naming the bad key."""
    name = cfg_get(cfg, "name")
    if name is None:
        raise ConfigError("data.name", None, sorted(DATASETS))
    builder = DATASETS.get(name)
    check_data(cfg, builder.Config)  # its keys' types and ranges, as after composition
    imageset = builder(cfg)
    log.info("data: %r", imageset)
    return imageset
