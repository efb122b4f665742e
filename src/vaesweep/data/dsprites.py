"""dSprites (Matthey et al. 2017), generated procedurally, and the published .npz file.

The procedural set follows the dSprites dataset (Matthey et al. 2017): 737,280 binary 64x64 images over the full
grid shape(3: square, ellipse, heart) x scale(6, linspace(0.5, 1)) x orientation(40,
linspace(0, 2*pi)) x posX(32, linspace(0, 1)) x posY(32, linspace(0, 1)), in C order with
posY fastest, exactly the order of the published file.

How it is drawn: 720 templates (shape x scale x orientation), each anti-aliased by 4x4
supersampling and thresholded at half coverage, then shifted one pixel per position class.
The sprite's area centroid sits at image column 16.25 + posX class and row 16.25 + posY
class (y grows downwards), so every sprite stays inside the frame with a margin of 8 pixels. At scale 1 the
square's side is 17% of the width (as in the published set); the ellipse (axes 2:1) has 0.75
and the heart 1.25 times the square's area, so the shapes differ in area at equal scale.

The full set is built from packed rows (8 pixels per byte) and stored packed: 377 MB in
memory and on disk (``<data.root>/dsprites_procedural_v1.npy``). Subsets and ``render`` draw
only the requested images.
"""
from __future__ import annotations

import functools
import logging
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vaesweep.data.base import (
    YOUR_DATA,
    DataConfig,
    ImageSet,
    cfg_get,
    data_root,
    data_seed,
    register_dataset,
    subset_indices,
    subset_size,
    write_atomically,
)
from vaesweep.errors import ConfigError, DataError
from vaesweep.schema import boolean, free

log = logging.getLogger(__name__)

FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
FACTOR_SIZES = [3, 6, 40, 32, 32]
SHAPES = ["square", "ellipse", "heart"]
N_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SIZE = 64
#: the value of each factor class; shape values 1, 2, 3 as in the published latents_values
FACTOR_GRID = [
    np.arange(1.0, 4.0),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2.0 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
]

CACHE_VERSION = 1
CACHE_NAME = f"dsprites_procedural_v{CACHE_VERSION}.npy"
PUBLISHED_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
PUBLISHED_URL = "https://github.com/google-deepmind/dsprites-dataset"

# Geometry, in pixels and sprite units (1 unit = the square's side at that scale).
_SQUARE_SIDE = 0.17 * IMAGE_SIZE  # pixels at scale 1
_ELLIPSE_AREA, _HEART_AREA = 0.75, 1.25  # in squared units (the square has area 1)
_ELLIPSE_A = np.sqrt(_ELLIPSE_AREA / (np.pi / 2.0))  # semi-axes a and a/2: area pi*a^2/2
_ELLIPSE_B = _ELLIPSE_A / 2.0
# Heart: the implicit curve (x^2 + y^2 - 1)^3 = x^2 y^3 (y up), area 3.6620, area centroid
# at y = 0.29348; scaled to _HEART_AREA and shifted so its centroid is the sprite's position.
_HEART_UNIT_AREA, _HEART_CENTROID_Y = 3.66197, 0.293476
_HEART_K = np.sqrt(_HEART_AREA / _HEART_UNIT_AREA)
_RADIUS = 11  # template half-width; sprites reach at most 7 pixels from their centroid
_MARGIN = 16  # centre pixel of position class 0; class 31 lands on pixel 64 - 1 - 16
_SUPERSAMPLE = 4
# The centroid sits a quarter pixel right of and below a pixel centre: a sprite centred on a
# pixel only rasterises to odd widths, so scales ~1 pixel apart could draw the same square.
_OFFSET = 0.25


# -- factors ---------------------------------------------------------------------------------
def classes_to_index(classes: np.ndarray) -> np.ndarray:
    """Row in the full set (C order, posY fastest) of each (n, 5) factor-class vector."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.ravel_multi_index(tuple(classes.T), FACTOR_SIZES).astype(np.int64)


def index_to_classes(index: np.ndarray) -> np.ndarray:
    """(n, 5) int64 factor classes of rows ``index`` of the full set."""
    return np.stack(np.unravel_index(np.asarray(index, dtype=np.int64), FACTOR_SIZES), axis=1).astype(np.int64)


def factor_values(classes: np.ndarray) -> np.ndarray:
    """float64 (n, 5) factor values (shape 1..3, scale, angle in radians, posX, posY) of classes."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.stack([g[c] for g, c in zip(FACTOR_GRID, classes.T)], axis=1)


# -- drawing ---------------------------------------------------------------------------------
def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether sprite-unit points (u right, v up) lie in the shape centred at its centroid."""
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.5
    if shape == 1:
        return (u / _ELLIPSE_A) ** 2 + (v / _ELLIPSE_B) ** 2 <= 1.0
    x, y = u / _HEART_K, v / _HEART_K + _HEART_CENTROID_Y
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


@functools.lru_cache(maxsize=1)
def templates() -> np.ndarray:
    """uint8 (3, 6, 40, 23, 23) binary sprites, centroid at (11.25, 11.25) (row, column).

    A pixel is on when at least half of its 4x4 sub-samples fall inside the rotated, scaled
    shape.
    Orientation rotates the shape counter-clockwise on screen.
    """
    side = 2 * _RADIUS + 1
    sub = ((np.arange(side * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5 - _RADIUS).astype(np.float32)
    dx = (sub - _OFFSET)[None, :]  # right of the centroid
    dy = -(sub - _OFFSET)[:, None]  # above the centroid (rows grow downwards)
    out = np.empty((3, 6, 40, side, side), dtype=np.uint8)
    for s, scale in enumerate(FACTOR_GRID[1]):
        unit = _SQUARE_SIDE * scale  # pixels per sprite unit
        for o, theta in enumerate(FACTOR_GRID[2]):
            c, n = np.float32(np.cos(theta)), np.float32(np.sin(theta))
            # inverse rotation of the sample points into the shape's own frame
            u = (c * dx + n * dy) * np.float32(1.0 / unit)
            v = (-n * dx + c * dy) * np.float32(1.0 / unit)
            for shape in range(3):
                cover = _inside(shape, u, v).reshape(side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(1, 3))
                out[shape, s, o] = cover >= 0.5
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1)
def _canvases() -> np.ndarray:
    """uint8 (720, 95, 95): each template centred at (47, 47) of a zero canvas.

    The image of position classes (px, py) is the 64x64 window whose top-left corner is
    (31 - py, 31 - px): the centroid then lands on row 16.25 + py, column 16.25 + px.
    """
    t = templates().reshape(720, 2 * _RADIUS + 1, 2 * _RADIUS + 1)
    size = IMAGE_SIZE + 31
    c0 = _MARGIN + 31 - _RADIUS
    canvas = np.zeros((720, size, size), dtype=np.uint8)
    canvas[:, c0 : c0 + t.shape[1], c0 : c0 + t.shape[2]] = t
    canvas.setflags(write=False)
    return canvas


def render_classes(classes: np.ndarray) -> np.ndarray:
    """uint8 (n, 64, 64) binary images for (n, 5) factor classes; no full set needed.

    Each image is one window of its template's canvas, copied whole (about 10x faster than
    gathering its 4,096 pixels one index at a time; the sampling metrics render millions)."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1, 5)
    template = np.ravel_multi_index(tuple(classes[:, :3].T), FACTOR_SIZES[:3])
    # (720, 32, 32, 64, 64) view, no copy: [t, i, j] is the window with top-left corner (i, j)
    windows = np.lib.stride_tricks.sliding_window_view(_canvases(), (IMAGE_SIZE, IMAGE_SIZE), axis=(1, 2))
    return windows[template, 31 - classes[:, 4], 31 - classes[:, 3]]


def generate_packed(progress: bool = True) -> np.ndarray:
    """The full procedural set as packed bits: uint8 (737280, 512), row i = image i.

    Packing happens before the shifts: for each template the 32 horizontal windows of its
    canvas are packed once (95 rows x 32 shifts x 8 bytes), and the 32 vertical positions
    are then row windows of that packed array, so no unpacked 64x64 image is ever made.
    """
    canvas = _canvases()
    out = np.empty((N_IMAGES, IMAGE_SIZE * IMAGE_SIZE // 8), dtype=np.uint8)
    view = out.reshape(720, 32, 32, IMAGE_SIZE, IMAGE_SIZE // 8)  # template, px, py, row, byte
    swv = np.lib.stride_tricks.sliding_window_view
    for t in tqdm(range(720), desc="dSprites", unit="sprite", disable=not progress, mininterval=0.5):
        cols = swv(canvas[t], IMAGE_SIZE, axis=1)  # (95, 32, 64): [r, j] = canvas[r, j:j+64]
        packed = np.packbits(cols, axis=-1)  # (95, 32, 8)
        win = swv(packed, IMAGE_SIZE, axis=0)  # (32, 32, 8, 64): [i, j, b, r] = packed[i+r, j, b]
        # px = 31 - j, py = 31 - i
        view[t] = win[::-1, ::-1].transpose(1, 0, 3, 2)
    return out


# -- cache -----------------------------------------------------------------------------------
def cache_path(root: Path) -> Path:
    return Path(root).expanduser() / CACHE_NAME


def _load_cache(path: Path) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        log.warning("dSprites cache %s is unreadable (%s); generating it again", path, err)
        return None
    if arr.shape != (N_IMAGES, 512) or arr.dtype != np.uint8:
        log.warning("dSprites cache %s holds %s %s, not the expected set; generating it again", path, arr.dtype, arr.shape)
        return None
    # Spot-check against the renderer: catches a stale cache from a changed generator and
    # damage inside a well-formed file, for the price of drawing the templates (needed by
    # render() anyway).
    probe = subset_indices(N_IMAGES, 512, seed=CACHE_VERSION)
    if not np.array_equal(arr[probe], np.packbits(render_classes(index_to_classes(probe)).reshape(512, -1), axis=1)):
        log.warning("dSprites cache %s differs from the generator; generating it again", path)
        return None
    return arr


def _save_cache(path: Path, packed: np.ndarray) -> None:
    """Write atomically: a crash mid-write never leaves a truncated cache behind."""
    try:
        write_atomically(path, lambda f: np.save(f, packed, allow_pickle=False))
    except OSError as err:  # a read-only root still gives a working (uncached) dataset
        log.warning("could not write the dSprites cache to %s: %s", path, err)
    else:
        log.info("dSprites cached at %s", path)


def load_or_generate(root: Path, cache: bool = True, progress: bool = True) -> np.ndarray:
    """The full packed set from ``<root>/dsprites_procedural_v1.npy``, generating it if absent."""
    path = cache_path(root)
    if cache and path.exists():
        packed = _load_cache(path)
        if packed is not None:
            return packed
    log.info("generating procedural dSprites (%d images)", N_IMAGES)
    packed = generate_packed(progress=progress)
    if cache:
        _save_cache(path, packed)
    return packed


def _render_tensor(classes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(render_classes(classes)).to(torch.float32).unsqueeze(1)


def _imageset(name: str, images: np.ndarray, codec: str, factors: np.ndarray, renderer, grid=FACTOR_GRID) -> ImageSet:
    return ImageSet(
        name,
        torch.from_numpy(images),
        (1, IMAGE_SIZE, IMAGE_SIZE),
        codec=codec,
        scale=1.0,
        factors=factors,
        factor_names=FACTOR_NAMES,
        factor_sizes=FACTOR_SIZES,
        factor_grid=grid,
        renderer=renderer,
    )


#: Subsets up to this size are rendered directly (~700k images/s on one core) instead of cut
#: from the full set (a cached load takes ~0.3-0.5 s, a generation ~1-1.5 s); both give
#: identical images, and a small subset never writes the 377 MB cache.
DIRECT_RENDER_MAX = 20_000


@dataclass
class DSpritesConfig(DataConfig):
    """Given with ``+data.<key>=``: cache (write the generated full set to data.root for the
    next run), progress (a progress bar while generating)."""

    cache: bool = boolean(True, extra=True)
    progress: bool = boolean(True, extra=True)

    def check(self, prefix: str) -> None:
        """A ``data.root`` given must hold the procedural set's cache: dSprites reads no
        files of the user's, and would write its 377 MB cache into any folder named."""
        super().check(prefix)
        if self.root is not None and not cache_path(Path(str(self.root))).is_file():
            raise ConfigError(f"{prefix}.root", self.root,
                              f"null (the procedural set is cached in $VAESWEEP_DATA, else "
                              f"~/.cache/vaesweep), or a folder holding its cache {CACHE_NAME}",
                              YOUR_DATA)


@register_dataset("dsprites", DSpritesConfig)
def build_dsprites(cfg: Mapping) -> ImageSet:
    """Procedural dSprites. Keys: root, cache (true), subset (null), seed (0), progress (true)."""
    size = subset_size(cfg, N_IMAGES)
    cache = bool(cfg_get(cfg, "cache", True))
    progress = bool(cfg_get(cfg, "progress", True))
    if size is not None and size <= DIRECT_RENDER_MAX:
        idx = subset_indices(N_IMAGES, size, data_seed(cfg))
        classes = index_to_classes(idx)
        # uint8 storage: unpacking bits costs more per batch than converting bytes (benchmarks/)
        images = render_classes(classes)[:, None]
        return _imageset("dsprites", np.ascontiguousarray(images), "uint8", classes, _render_tensor)
    packed = load_or_generate(data_root(cfg), cache=cache, progress=progress)
    if size is None:
        return _imageset("dsprites", packed, "bits", index_to_classes(np.arange(N_IMAGES)), _render_tensor)
    idx = subset_indices(N_IMAGES, size, data_seed(cfg))
    return _imageset("dsprites", packed[idx], "bits", index_to_classes(idx), _render_tensor)


# -- the published file ----------------------------------------------------------------------
def _npz_path(cfg: Mapping) -> Path:
    root = data_root(cfg)
    if root.suffix == ".npz":
        return root
    return root / str(cfg_get(cfg, "filename", PUBLISHED_NAME))


def _bad_npz(path: Path, problem: str) -> DataError:
    return DataError(
        "data.root",
        path,
        problem,
        f"download {PUBLISHED_NAME} from {PUBLISHED_URL} into data.root, "
        "or use data=dsprites for the procedural set",
    )


def _read_npy_member(zf: zipfile.ZipFile, member: str, path: Path, chunk_rows: int | None = None, fn=None):
    """Read array ``member`` of an .npz without holding the raw array when ``fn`` packs chunks."""
    try:
        info = zf.getinfo(member + ".npy")
    except KeyError:
        raise _bad_npz(path, f"the file has no '{member}' array (keys: {sorted(n[:-4] for n in zf.namelist())})") from None
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _bad_npz(path, f"'{member}' uses .npy format {version}, expected 1.0 or 2.0")
        if dtype.hasobject or fortran:
            raise _bad_npz(path, f"'{member}' is not a plain C-order numeric array")
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        n = shape[0] if shape else 1
        chunk_rows = chunk_rows or n
        parts = []
        for start in range(0, n, max(chunk_rows, 1)):
            rows = min(chunk_rows, n - start)
            buf = f.read(rows * row * dtype.itemsize)
            if len(buf) != rows * row * dtype.itemsize:
                raise _bad_npz(path, f"'{member}' is truncated")
            arr = np.frombuffer(buf, dtype=dtype).reshape((rows, *shape[1:]))
            parts.append(fn(arr) if fn else arr.copy())
        return np.concatenate(parts) if parts else np.empty((0, *shape[1:]), dtype)


def read_published_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed images (N, 512) uint8, classes (N, 5) int64, values (N, 5) float64) of the file.

    Images are packed in chunks so the 3 GB of unpacked bytes is never held at once. The
    pickled ``metadata`` entry is not read: its sizes are the fixed dSprites sizes, and
    unpickling a file is code execution.
    """
    if not path.is_file():
        raise _bad_npz(path, "the published dSprites file is missing")
    try:
        with zipfile.ZipFile(path) as zf:
            classes = _read_npy_member(zf, "latents_classes", path)
            values = _read_npy_member(zf, "latents_values", path)
            packed = _read_npy_member(
                zf, "imgs", path, chunk_rows=16384, fn=lambda a: np.packbits(a.reshape(len(a), -1) != 0, axis=1)
            )
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise _bad_npz(path, f"the file is corrupt or truncated ({type(err).__name__}: {err})") from err
    n = len(packed)
    if n == 0:
        raise _bad_npz(path, "'imgs' holds no images")
    if packed.shape[1:] != (512,):
        raise _bad_npz(path, "'imgs' is not shaped (N, 64, 64)")
    if classes.shape != (n, 6) or values.shape != (n, 6):
        raise _bad_npz(path, f"latents are shaped {classes.shape} / {values.shape}, expected ({n}, 6)")
    classes = classes[:, 1:].astype(np.int64)  # column 0 is the constant color
    if (classes < 0).any() or (classes >= np.asarray(FACTOR_SIZES)).any():
        raise _bad_npz(path, f"latents_classes outside the dSprites sizes {FACTOR_SIZES}")
    return packed, classes, values[:, 1:].astype(np.float64)


class _LookupRenderer:
    """Render = look images up in the file by factor classes (any subset of the grid)."""

    def __init__(self, packed: np.ndarray, classes: np.ndarray) -> None:
        flat = classes_to_index(classes)
        order = np.argsort(flat, kind="stable")
        self.keys, self.rows = flat[order], order
        self.images = ImageSet("dsprites_npz", torch.from_numpy(packed), (1, IMAGE_SIZE, IMAGE_SIZE), codec="bits", scale=1.0)

    def __call__(self, classes: np.ndarray) -> torch.Tensor:
        flat = classes_to_index(classes)
        pos = np.minimum(np.searchsorted(self.keys, flat), len(self.keys) - 1)
        missing = self.keys[pos] != flat
        if missing.any():
            raise ValueError(f"the dSprites file has no image for factor classes {classes[missing][:5].tolist()}")
        return self.images.batch(self.rows[pos])


@dataclass
class NpzConfig(DataConfig):
    """root "???": required (the folder holding the .npz, or the file); Hydra refuses a run
    that leaves it unset. filename (given with ``+data.filename=``): the file in root."""

    root: Any = free("???")
    filename: str | None = free(None, extra=True)


@register_dataset("dsprites_npz", NpzConfig)
def build_dsprites_npz(cfg: Mapping) -> ImageSet:
    """The published dSprites .npz. Keys: root (dir or .npz path), filename, subset, seed."""
    path = _npz_path(cfg)
    packed, classes, values = read_published_npz(path)
    grid = [np.unique(values[:, k]) for k in range(5)]
    if [len(g) for g in grid] != FACTOR_SIZES:
        grid = FACTOR_GRID  # a partial file: fall back to the nominal values
    renderer = _LookupRenderer(packed, classes)
    size = subset_size(cfg, len(packed))
    if size is not None:
        idx = subset_indices(len(packed), size, data_seed(cfg))
        packed, classes = packed[idx], classes[idx]
    imageset = _imageset("dsprites_npz", packed, "bits", classes, renderer, grid)
    return imageset

