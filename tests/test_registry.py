"""Parts are found by walking their package: a new part is one file (plus optionally one
YAML preset), with no import line to add anywhere else; presets repeat no Python default."""
from __future__ import annotations

import sys
import textwrap

import pytest
import yaml

from conftest import CONF, compose

import vaesweep.likelihood as likelihood_pkg
from vaesweep.data import DATASETS
from vaesweep.errors import ConfigError
from vaesweep.kl import SCHEDULES, WEIGHTINGS
from vaesweep.likelihood import HEADS, build_head
from vaesweep.nn import MODELS

GROUPS = {"likelihood": HEADS, "kl": WEIGHTINGS, "kl/schedule": SCHEDULES,
          "model": MODELS, "data": DATASETS}


def test_a_head_in_a_new_module_is_found_without_touching_another_file(tmp_path, monkeypatch):
    # a new file in the package's folder: monkeypatching __path__ adds tmp_path as a folder
    # of vaesweep.likelihood, so nothing in the source tree is written
    (tmp_path / "zz_test_head.py").write_text(textwrap.dedent('''
        from vaesweep.likelihood.base import HEADS, LikelihoodHead

        @HEADS.register("zz_test_head")
        class ZZTestHead(LikelihoodHead):
            keys = {"width": 2.0}

            def nll(self, out, x):
                return (x - out).abs() / self.params["width"]
    '''))
    monkeypatch.setattr(likelihood_pkg, "__path__", [*likelihood_pkg.__path__, str(tmp_path)])
    try:
        assert "zz_test_head" not in HEADS
        head = build_head({"name": "zz_test_head", "width": 4.0}, (1, 8, 8))
        assert type(head).__name__ == "ZZTestHead" and head.params["width"] == 4.0
    finally:
        HEADS.pop("zz_test_head", None)
        sys.modules.pop("vaesweep.likelihood.zz_test_head", None)


def test_an_unknown_part_is_still_refused_after_the_walk():
    with pytest.raises(ConfigError, match=r"likelihood.name='nope' is invalid: allowed is one of"):
        HEADS.get("nope")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_preset_names_a_registered_part_and_every_part_composes(group):
    registry = GROUPS[group]
    presets = {p.stem: p for p in (CONF / group).glob("*.yaml")}
    assert set(presets) <= set(registry), f"conf/{group}/ presets of no registered {group} part"
    for name, path in presets.items():
        assert yaml.safe_load(path.read_text()).get("name") == name, path
    for name in sorted(registry):
        cfg = compose([f"{group}={name}", "data.root=/nonexistent"] if group == "data"
                      else [f"{group}={name}"])
        node = cfg
        for part in group.split("/"):
            node = node[part]
        assert node["name"] == name


def test_a_part_without_a_preset_composes_from_its_python_defaults(tmp_path, monkeypatch):
    from vaesweep.parts import register_schemas

    (tmp_path / "zz_test_head2.py").write_text(textwrap.dedent('''
        from vaesweep.likelihood.base import HEADS, LikelihoodHead

        @HEADS.register("zz_test_head2")
        class ZZTestHead2(LikelihoodHead):
            keys = {"width": 2.0, "mode": "abs"}
    '''))
    monkeypatch.setattr(likelihood_pkg, "__path__", [*likelihood_pkg.__path__, str(tmp_path)])
    try:
        register_schemas()
        cfg = compose(["likelihood=zz_test_head2", "likelihood.width=3"])
        assert dict(cfg.likelihood) == {"name": "zz_test_head2", "width": 3, "mode": "abs"}
    finally:
        HEADS.pop("zz_test_head2", None)
        sys.modules.pop("vaesweep.likelihood.zz_test_head2", None)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_presets_repeat_no_python_default_and_compose_every_key(group):
    from omegaconf import OmegaConf

    from vaesweep.parts import part_defaults, schema_name

    for name in sorted(GROUPS[group]):
        path = CONF / group / f"{name}.yaml"
        preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        assert preset.pop("defaults") == [f"/{schema_name(group, name)}@_here_", "_self_"], path
        defaults = part_defaults(group, name)
        repeated = {k: v for k, v in preset.items() if k != "name" and defaults.get(k) == v}
        assert not repeated, f"{path} repeats Python defaults {repeated}"
        # the composed node holds every key (--cfg job, the MLflow params), preset values on top
        cfg = compose([f"{group}={name}"])
        node = cfg
        for part in group.split("/"):
            node = node[part]
        got = OmegaConf.to_container(node, resolve=False)
        got.pop("schedule", None)  # the kl/schedule group's node inside kl
        assert set(got) == set(defaults), path
        assert {k: got[k] for k in preset} == preset, path


def test_the_one_validation_style_names_key_value_and_what_is_allowed():
    from vaesweep.errors import choice, flag, known_keys, number

    with pytest.raises(ConfigError, match=r"data.val_fraction=1.0 is invalid: allowed is a number in \[0, 1\)"):
        number("data.val_fraction", 1.0, 0.0, 1.0, hi_open=True)
    assert number("data.val_fraction", 0.0, 0.0, 1.0, hi_open=True) == 0.0
    with pytest.raises(ConfigError, match=r"kl.reduction='avg' is invalid: allowed is one of 'sum', 'mean'"):
        choice("kl.reduction", "avg", ("sum", "mean"))
    with pytest.raises(ConfigError, match=r"likelihood.learn_scale='yes' is invalid: allowed is true or false"):
        flag("likelihood.learn_scale", "yes")
    with pytest.raises(ConfigError, match=r"model.widht=3 is invalid: allowed is a key of model mlp: \['hidden', 'latent_dim'\]"):
        known_keys("model", {"widht": 3}, ["latent_dim", "hidden"], "model mlp")


# -- each part's typed config, checked right after composition (issue 14) --------------------
NEW_PARTS = {
    "likelihood": ("vaesweep.likelihood", "zz_typed_head", '''
        from dataclasses import dataclass

        from vaesweep.likelihood.base import HEADS, LikelihoodHead
        from vaesweep.schema import PartConfig, one_of, positive

        @HEADS.register("zz_typed_head")
        class ZZTypedHead(LikelihoodHead):
            @dataclass
            class Config(PartConfig):
                width: float = positive(2.0)
                mode: str = one_of("abs", ("abs", "square"))
    ''', {"width": 2.0, "mode": "abs"},
        [("likelihood.width=-1", r"likelihood.width=-1 is invalid: allowed is a number in \(0, inf\]"),
         ("likelihood.mode=cube", r"likelihood.mode='cube' is invalid: allowed is one of 'abs', 'square'")]),
    # a model's signature is its dataclass: an int argument is a count of units
    "model": ("vaesweep.nn", "zz_typed_model", '''
        from vaesweep.nn import MODELS

        @MODELS.register("zz_typed_model")
        def zz_typed_model(shape, latent_dim: int, out_channels: int, width: int = 8):
            raise AssertionError("not built by this test")
    ''', {"latent_dim": 10, "width": 8},
        [("model.width=2.5", r"model.width=2.5 is invalid: allowed is a whole number in \[1, inf\]")]),
}


@pytest.mark.parametrize("group", sorted(NEW_PARTS))
def test_a_new_part_s_dataclass_is_checked_after_composition_with_no_registration_line(
        group, tmp_path, monkeypatch):
    import importlib

    from omegaconf import OmegaConf

    from vaesweep.parts import GROUPS as PARTS, check_parts, register_schemas

    package, name, source, defaults, bad = NEW_PARTS[group]
    pkg = importlib.import_module(package)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    registry = PARTS[group].registry
    try:
        register_schemas()  # what importing vaesweep.resolvers does: finds the new file
        cfg = compose([f"{group}={name}"])
        assert dict(cfg[group]) == {"name": name, **defaults}  # the dataclass's defaults
        check_parts(OmegaConf.to_container(cfg, resolve=True))
        for override, message in bad:
            c = OmegaConf.to_container(compose([f"{group}={name}", override]), resolve=True)
            with pytest.raises(ConfigError, match=message):
                check_parts(c)
    finally:
        registry.pop(name, None)
        sys.modules.pop(f"{package}.{name}", None)


def test_integer_config_values_follow_one_rule():
    """data.subset, data.seed and data.batch_size take a whole number (2.0 is 2), and refuse
    2.5 with errors.number's message, as every other count of the config does."""
    from vaesweep.data.base import DataConfig, data_seed, subset_size

    assert subset_size({"subset": 2.0}, 10) == 2 and subset_size({"subset": 10}, 10) is None
    with pytest.raises(ConfigError, match=r"data.subset=2.5 is invalid: allowed is a whole number in \[1, 10\]"):
        subset_size({"subset": 2.5}, 10)
    assert data_seed({"seed": 3.0}) == 3
    with pytest.raises(ConfigError, match=r"data.seed=1.5 is invalid: allowed is a whole number in \[0, inf\]"):
        data_seed({"seed": 1.5})
    assert DataConfig.validate({"batch_size": 32.0}, "data").batch_size == 32
    with pytest.raises(ConfigError, match=r"data.batch_size=2.5 is invalid: allowed is a whole number in \[1, inf\]"):
        DataConfig.validate({"batch_size": 2.5}, "data")
