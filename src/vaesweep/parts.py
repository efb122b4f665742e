"""One place that names every kind of part: its config group, its registry, and the
defaults each part declares in Python beside its code.

Those defaults are the only copy: :func:`register_schemas` stores each part's as a Hydra
ConfigStore node ``_defaults_<group>_<name>`` (no group: it stays out of ``--help``), and the
part's YAML preset ``conf/<group>/<name>.yaml`` starts from it::

    defaults:
      - /_defaults_likelihood_gaussian@_here_
      - _self_
    name: gaussian           # plus only the values that differ from the Python defaults

so the composed config (``vaesweep --cfg job``, the run's MLflow params) still shows every key.
A part without a YAML is composable by its name all the same (a ConfigStore node in its
group). :mod:`vaesweep.resolvers` calls :func:`register_schemas` on import, so every entry
point that composes (the CLI, the sweepers, the tests' ``compose``) has them.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from vaesweep.contract import conf_dir
from vaesweep.data.base import DATASETS, dataset_defaults
from vaesweep.kl.schedules import SCHEDULES
from vaesweep.kl.weighting import WEIGHTINGS
from vaesweep.likelihood.base import HEADS
from vaesweep.nn import MODELS, model_defaults
from vaesweep.registry import Registry

import vaesweep.data  # noqa: F401  (the package walks: every part registered)
import vaesweep.kl  # noqa: F401
import vaesweep.likelihood  # noqa: F401

#: config group -> (registry, the defaults of one registered part by name)
GROUPS: dict[str, tuple[Registry, Callable[[str], dict[str, Any]]]] = {
    "data": (DATASETS, dataset_defaults),
    "model": (MODELS, model_defaults),
    "likelihood": (HEADS, lambda name: dict(HEADS.get(name).keys)),
    "kl": (WEIGHTINGS, lambda name: WEIGHTINGS.get(name).defaults()),
    "kl/schedule": (SCHEDULES, lambda name: dict(SCHEDULES.get(name).keys)),
}


def part_defaults(group: str, name: str) -> dict[str, Any]:
    """The config node of part ``name`` of ``group`` with every key at its default.

    Raises ConfigError (naming the group's key) for an unregistered name."""
    registry, defaults = GROUPS[group]
    return {"name": name, **defaults(name)}


def schema_name(group: str, name: str) -> str:
    """The ConfigStore name of a part's defaults: ``_defaults_kl_schedule_linear``."""
    return f"_defaults_{group.replace('/', '_')}_{name}"


def register_schemas(conf: Path | None = None) -> list[str]:
    """Store every registered part's defaults in Hydra's ConfigStore (see the module doc);
    a part with no preset in ``conf`` (the package's conf folder by default) is also stored
    as an option of its group. Idempotent; returns the names stored."""
    from hydra.core.config_store import ConfigStore

    if conf is None:
        conf = conf_dir()
    cs = ConfigStore.instance()
    # calling again (a part added since) replaces the nodes: say so where Hydra (1.4+) asks
    replace = {"replace": True} if "replace" in inspect.signature(cs.store).parameters else {}
    stored = []
    for group, (registry, _) in GROUPS.items():
        registry.discover()
        for name in sorted(registry):
            node = part_defaults(group, name)
            cs.store(name=schema_name(group, name), node=node, **replace)
            stored.append(schema_name(group, name))
            if not (Path(conf) / group / f"{name}.yaml").is_file():
                cs.store(group=group, name=name, node=node, **replace)
    return stored
