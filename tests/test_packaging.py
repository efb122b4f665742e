"""A built wheel carries the config groups and the named studies: installed into a clean
folder, with the editable checkout out of sight, ``vaesweep`` composes ``+sweep=quick`` and
every option of every config group from the wheel's own copy (issue 14, "configs and studies
ship"). Offline: pip builds with the venv's setuptools (``--no-build-isolation``) and installs
the one local wheel (``--no-index --no-deps``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

# what the build reads; copied so that pip's build/ and *.egg-info never land in the checkout
BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "conf", "sweeps")

# run in the clean interpreter: every option of every config group composes and resolves,
# from the package's own conf folder (prints one JSON line for the test to check)
COMPOSE_ALL = r"""
import json, sys
from pathlib import Path
import vaesweep, vaesweep.cli as cli, vaesweep.resolvers
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

conf = cli.CONF_DIR
options = sorted((str(p.parent.relative_to(conf)), p.stem) for p in conf.rglob("*.yaml")
                 if p.parent != conf and p.parts[len(conf.parts)] != "hydra")
# no version_base, as the CLI (hydra.main) and tests/conftest.py compose
with initialize_config_dir(config_dir=str(conf)):
    choices = compose("config", return_hydra_config=True).hydra.runtime.choices
    for group, option in options:
        # a group the defaults list chooses is overridden, any other (sweep, method) added
        cfg = compose("config", [f"{'' if group in choices else '+'}{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)
print(json.dumps({"file": vaesweep.__file__, "conf": str(conf), "options": options,
                  "path": sys.path}))
"""


def _yaml_files(folder: Path) -> set[str]:
    """The YAML files under ``folder``, relative to it, following links (conf/sweep is one;
    ``Path.rglob`` does not follow it on Python 3.11)."""
    return {str(Path(d, f).relative_to(folder)) for d, _, files in os.walk(folder, followlinks=True)
            for f in files if f.endswith(".yaml")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout, installed with ``--target`` into a fresh
    folder; returns that folder."""
    import setuptools
    assert tuple(map(int, setuptools.__version__.split(".")[:2])) >= (77, 0), \
        f"building needs setuptools>=77 in the venv (pyproject's build-system), found {setuptools.__version__}"
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src_copy"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "dist"), str(src)], check=True, env=env, timeout=300)
    (wheel,) = (tmp / "dist").glob("vaesweep-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("vaesweep/conf/") for n in z.namelist()
                   if n.startswith("vaesweep/conf/")}
    # every YAML file of conf/ (the named studies through its sweep -> ../sweeps link)
    assert shipped == _yaml_files(ROOT / "conf")
    assert {f"sweep/{n}" for n in _yaml_files(ROOT / "sweeps") if "/" not in n} <= shipped
    target = tmp / "clean"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, env=env, timeout=300)
    return target


def _clean_python(args: list[str], target: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -S ARGS`` that imports vaesweep from ``target`` only: ``-S`` skips the site
    module, so the venv's ``__editable__.vaesweep*.pth`` (which maps vaesweep to the
    checkout) is not read; the dependencies come from the venv's site-packages, named on
    PYTHONPATH after ``target``."""
    paths = sysconfig.get_paths()
    site = dict.fromkeys([paths["purelib"], paths["platlib"]])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VAESWEEP_CONF_DIR", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *site])
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_composes_every_group_and_the_quick_study(installed, tmp_path):
    res = _clean_python(["-c", COMPOSE_ALL], installed, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # the wheel's copy, not the checkout's, and no path into the checkout's src/
    assert Path(out["file"]).is_relative_to(installed), out["file"]
    assert Path(out["conf"]) == installed / "vaesweep" / "conf"
    assert not any(p.startswith(str(ROOT / "src")) for p in out["path"]), out["path"]
    options = {tuple(o) for o in out["options"]}
    assert {("sweep", p.stem) for p in (ROOT / "sweeps").glob("*.yaml")} <= options
    assert {"data", "model", "likelihood", "kl", "kl/schedule", "method", "head", "metrics", "optim",
            "trainer", "sweep"} <= {g for g, _ in options}

    res = _clean_python(["-m", "vaesweep", "+sweep=quick", "--cfg", "job", "--resolve"],
                        installed, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "name: quick" in res.stdout

    # `vaesweep sweep` lists the named studies from the wheel's conf/sweep
    res = _clean_python(["-m", "vaesweep", "sweep"], installed, tmp_path)
    assert res.returncode == 2 and "quick" in res.stderr and "beta_norm_grid" in res.stderr


def test_the_config_folder_is_the_packages_unless_vaesweep_conf_dir_says(monkeypatch, tmp_path):
    import vaesweep
    from vaesweep.cli import conf_dir

    monkeypatch.delenv("VAESWEEP_CONF_DIR", raising=False)
    # in a checkout, the package's conf is the top-level conf/ (through src/vaesweep/conf)
    assert conf_dir() == Path(vaesweep.__file__).parent / "conf"
    assert conf_dir().resolve() == (ROOT / "conf").resolve()
    assert (conf_dir() / "sweep" / "quick.yaml").resolve() == (ROOT / "sweeps" / "quick.yaml").resolve()
    monkeypatch.setenv("VAESWEEP_CONF_DIR", str(tmp_path))
    assert conf_dir() == tmp_path
