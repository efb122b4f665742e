"""Your own data, by config: ``data=images`` (a folder of image files) and ``data=array``
(.npy, .npz, .pt; images or a table of features), each trained through the real entry point
on real files written in the real formats from packaged data (Fashion-MNIST's IDX files from
Debian's package when installed, else scikit-learn's digits; scikit-learn's breast-cancer
table), and the refusals of data that would otherwise be silently wrong."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import search_runs
from test_bad_input import check, main
from vaesweep.data import build_imageset, user, vision

pytestmark = pytest.mark.usefixtures("one_thread")

# one short training run: the MLP reads any shape
RUN = ["trainer=smoke", "model=mlp", "data.batch_size=16", "metrics.enabled=false", "threads=1"]


def images_and_labels(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) uint8 grey images and (n,) labels: Fashion-MNIST from Debian's package
    when it is installed, else scikit-learn's 8x8 digits scaled to 0..255."""
    debian = vision.DEBIAN_FASHION_MNIST
    if (debian / "t10k-images-idx3-ubyte.gz").is_file():
        x = vision.read_idx(debian / "t10k-images-idx3-ubyte.gz", 3, (28, 28))[:n]
        y = vision.read_idx(debian / "t10k-labels-idx1-ubyte.gz", 1)[:n]
        return x.copy(), y.astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] * 255 / 16).round().astype(np.uint8), d.target[:n].astype(np.int64)


def write_class_folders(root: Path, x: np.ndarray, y: np.ndarray, suffix: str = ".png") -> Path:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}{suffix}")
    return root


def write_flat_jpegs(root: Path, x: np.ndarray) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(img).convert("RGB").save(root / f"{i:04d}.jpg", quality=95)
    return root


def finished(cwd: Path) -> list:
    runs = search_runs(f"sqlite:///{cwd / 'mlflow.db'}")
    assert runs and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    return runs


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


# -- data=images ------------------------------------------------------------------------------
def test_png_class_folders_train_with_labels_and_cache_outside_the_folder(workdir):
    x, y = images_and_labels()
    root = write_class_folders(workdir / "my_pngs", x, y)
    before = listing(root)
    code, err = main([*RUN, "data=images", f"data.root={root}"])
    assert code == 0, err[-3000:]
    finished(workdir)
    assert listing(root) == before, "the user's folder was written to"
    assert list((workdir / "data" / "images").glob("*.npz")), "no decoded cache in $VAESWEEP_DATA"
    imageset = build_imageset({"name": "images", "root": str(root)})
    order = np.argsort([f"class_{label}/{i:04d}.png" for i, label in enumerate(y)], kind="stable")
    np.testing.assert_array_equal(imageset.data[:, 0].numpy(), x[order])
    classes = sorted({f"class_{label}" for label in y})
    np.testing.assert_array_equal(imageset.labels, [classes.index(f"class_{label}") for label in y[order]])
    assert imageset.shape == (1, *x.shape[1:]) and imageset.value_range()[1] <= 1.0


def test_a_flat_jpeg_folder_has_no_labels_and_converts_and_resizes(workdir):
    x, _ = images_and_labels(64)
    root = write_flat_jpegs(workdir / "jpgs", x)
    rgb = build_imageset({"name": "images", "root": str(root)})
    assert rgb.shape == (3, *x.shape[1:]) and rgb.labels is None
    code, err = main([*RUN, "data=images", f"data.root={root}", "data.channels=1",
                      "data.size=[16,12]"])
    assert code == 0, err[-3000:]
    finished(workdir)
    grey = build_imageset({"name": "images", "root": str(root), "channels": 1, "size": [16, 12]})
    assert grey.shape == (1, 16, 12)


def test_the_decoded_cache_is_reused_until_the_folder_changes(workdir, monkeypatch):
    x, y = images_and_labels(40)
    root = write_class_folders(workdir / "pngs", x, y)
    first = build_imageset({"name": "images", "root": str(root)})
    calls = []
    real = user._decode
    monkeypatch.setattr(user, "_decode", lambda *a: calls.append(1) or real(*a))
    again = build_imageset({"name": "images", "root": str(root)})
    assert not calls, "decoded again with an unchanged folder"
    assert torch.equal(first.data, again.data)
    write_class_folders(root, x[:1], np.array([99]))  # one more file, a new class
    changed = build_imageset({"name": "images", "root": str(root)})
    assert calls and len(changed) == len(first) + 1


def test_labels_false_reads_class_folders_unlabelled(workdir):
    x, y = images_and_labels(40)
    root = write_class_folders(workdir / "pngs", x, y)
    assert build_imageset({"name": "images", "root": str(root), "labels": False}).labels is None


def test_a_truncated_image_stops_the_run_naming_it_or_is_skipped(workdir, monkeypatch):
    x, y = images_and_labels(60)
    root = write_class_folders(workdir / "pngs", x, y)
    bad = sorted(root.rglob("*.png"))[7]
    bad.write_bytes(bad.read_bytes()[:40])
    code, err = main([*RUN, "data=images", f"data.root={root}"])
    check(code, err, ["data.root", "not a readable image", str(bad), "data.on_bad_file=skip"], 2)
    assert len([l for l in err.splitlines() if l.startswith("vaesweep: error:")]) == 1
    assert not (workdir / "mlflow.db").exists() or not search_runs(f"sqlite:///{workdir / 'mlflow.db'}")
    warned = []  # Hydra's run set up logging: record the warning itself
    monkeypatch.setattr(user.log, "warning", lambda msg, *a: warned.append(msg % a))
    imageset = build_imageset({"name": "images", "root": str(root), "on_bad_file": "skip"})
    assert len(imageset) == 59
    assert any("1 of 60 files" in w and "skipped" in w for w in warned), warned
    monkeypatch.undo()
    code, err = main([*RUN, "data=images", f"data.root={root}", "data.on_bad_file=skip"])
    assert code == 0, err[-3000:]


def test_images_of_different_sizes_name_the_first_that_differs(workdir):
    from PIL import Image

    x, y = images_and_labels(20)
    root = write_class_folders(workdir / "pngs", x, y)
    odd = sorted(root.rglob("*.png"))[5]
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(odd)
    code, err = main([*RUN, "data=images", f"data.root={root}"])
    check(code, err, ["data.root", str(odd), "all images must share one size", "data.size=[H,W]"], 2)
    assert len(build_imageset({"name": "images", "root": str(root), "size": [8, 8]})) == 20


# -- data=array -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["npy", "npz", "pt", "nhwc"])
def test_array_files_train(workdir, kind):
    x, y = images_and_labels(120)
    if kind == "npy":
        np.save(workdir / "x.npy", x)
        args, path = [], workdir / "x.npy"
    elif kind == "npz":
        np.savez(workdir / "xy.npz", images=x, labels=y)
        args, path = ["data.x_key=images", "data.y_key=labels"], workdir / "xy.npz"
    elif kind == "pt":
        torch.save({"x": torch.from_numpy(x[:, None]), "y": torch.from_numpy(y)}, workdir / "xy.pt")
        args, path = ["data.x_key=x", "data.y_key=y"], workdir / "xy.pt"
    else:  # (n, H, W, 3): channels last, inferred
        np.save(workdir / "rgb.npy", np.repeat(x[..., None], 3, axis=3))
        args, path = [], workdir / "rgb.npy"
    code, err = main([*RUN, "data=array", f"data.path={path}", *args])
    assert code == 0, err[-3000:]
    finished(workdir)
    cfg = {"name": "array", "path": str(path),
           **dict(a.removeprefix("data.").split("=", 1) for a in args)}
    imageset = build_imageset(cfg)
    assert imageset.codec == "uint8" and imageset.value_range()[1] <= 1.0
    np.testing.assert_array_equal(imageset.data[:, 0].numpy(), x)
    assert (imageset.labels is not None) == bool(args)


def test_a_key_the_file_lacks_lists_the_keys_it_has(workdir):
    x, y = images_and_labels(40)
    np.savez(workdir / "xy.npz", images=x, labels=y)
    code, err = main([*RUN, "data=array", f"data.path={workdir / 'xy.npz'}", "data.x_key=imgs"])
    check(code, err, ["data.x_key='imgs'", "['images', 'labels']"], 2)


def test_an_ambiguous_layout_asks_for_data_layout(workdir):
    np.save(workdir / "x.npy", np.zeros((40, 3, 5, 3), np.uint8))
    code, err = main([*RUN, "data=array", f"data.path={workdir / 'x.npy'}"])
    check(code, err, ["data.layout=None", "nchw or nhwc"], 2)
    imageset = build_imageset({"name": "array", "path": str(workdir / "x.npy"), "layout": "nhwc"})
    assert imageset.shape == (3, 3, 5)


def test_factor_classes_from_factors_key(workdir):
    x, y = images_and_labels(40)
    factors = np.stack([y, y % 2], axis=1)
    np.savez(workdir / "xf.npz", x=x, f=factors)
    imageset = build_imageset({"name": "array", "path": str(workdir / "xf.npz"), "x_key": "x",
                               "factors_key": "f"})
    np.testing.assert_array_equal(imageset.factors, factors)
    assert imageset.factor_sizes == [int(y.max()) + 1, 2]


# -- tabular data -----------------------------------------------------------------------------
@pytest.fixture
def table(workdir) -> Path:
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()  # (569, 30) features
    np.savez(workdir / "cancer.npz", x=b.data, y=b.target)
    return workdir / "cancer.npz"


def test_a_feature_table_trains_standardised_with_a_gaussian_head(workdir, table):
    args = ["data=array", f"data.path={table}", "data.x_key=x", "data.y_key=y",
            "data.standardize=true", "likelihood=gaussian"]
    code, err = main([*RUN, *args])
    assert code == 0, err[-3000:]
    finished(workdir)
    imageset = build_imageset({"name": "array", "path": str(table), "x_key": "x",
                               "standardize": True})
    assert imageset.shape == (1, 1, 30)
    from vaesweep.data.loaders import split_indices

    train, _, _ = split_indices(len(imageset), 0.1, 0.1, 0, None)
    feats = imageset.images()[torch.from_numpy(train)].reshape(len(train), 30)
    np.testing.assert_allclose(feats.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(feats.std(0).numpy(), 1, atol=1e-4)


@pytest.mark.parametrize("head", ["bernoulli", "continuous_bernoulli"])
def test_a_head_on_zero_one_refuses_data_outside_it(workdir, table, head):
    code, err = main([*RUN, "data=array", f"data.path={table}", "data.x_key=x",
                      "data.standardize=true", f"likelihood={head}"])
    check(code, err, [f"likelihood.name='{head}'", "a head for values in [-", "gaussian, ",
                      "laplace", "models values in [0, 1]"], 2)
    assert not (workdir / "mlflow.db").exists() or not search_runs(f"sqlite:///{workdir / 'mlflow.db'}")


def test_convert_takes_the_number_of_features(capsys):
    from vaesweep.convert import convert_main

    assert convert_main(["--shape", "30", "--latents", "2", "--rec", "mean", "--kl", "sum"]) == 0
    assert "N = 30" in capsys.readouterr().out


# -- no silent wrong data ---------------------------------------------------------------------
def test_data_root_on_dsprites_is_refused_and_writes_nothing_there(workdir):
    x, y = images_and_labels(20)
    root = write_class_folders(workdir / "my_pngs", x, y)
    before = listing(root)
    code, err = main(["trainer=smoke", "threads=1", f"data.root={root}"])  # the default: dSprites
    check(code, err, [f"data.root='{root}'", "dsprites_procedural_v1.npy", "data=images data.root=DIR"], 2)
    assert listing(root) == before


@pytest.mark.parametrize("name", ["digits", "mnist_5k"])
def test_data_root_on_a_shipped_dataset_is_refused(workdir, name):
    code, err = main([*RUN, f"data={name}", f"data.root={workdir}"])
    check(code, err, [f"data.root='{workdir}'", "reads no folder", "data=images"], 2)


def test_unknown_data_keys_are_refused_like_model_keys(workdir):
    code, err = main(["trainer=smoke", "threads=1", "+data.path=/tmp/x.npy"])
    check(code, err, ["data.path='/tmp/x.npy'", "a key of dataset dsprites", "'subset'"], 2)
    code, err = main([*RUN, "data=images", f"data.root={workdir}", "+data.resize=8"])
    check(code, err, ["data.resize=8", "a key of dataset images", "'size'"], 2)


def test_fashion_mnist_with_a_root_that_lacks_the_files_is_refused(workdir):
    folder = workdir / "mine"
    folder.mkdir()
    code, err = main([*RUN, "data=fashion_mnist", f"data.root={folder}"])
    check(code, err, ["data.root", str(folder), "fashion_mnist is missing from data.root",
                      "train-images-idx3-ubyte"], 2)
    assert str(vision.DEBIAN_FASHION_MNIST) not in err.split("(")[0]
