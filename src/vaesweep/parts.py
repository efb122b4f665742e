"""One place that names every kind of part: its config group, its registry, and the typed
config each part declares in Python beside its code (a :mod:`vaesweep.schema` dataclass: the
keys, their defaults, choices and ranges).

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

The node is plain values, not the dataclass (OmegaConf would refuse a bad value with its own
message); :func:`check_parts` checks every part's node against its dataclass right after
composition, before any data are loaded or any run or trial is created.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from vaesweep.contract import OPTIM_DEFAULTS, conf_dir
from vaesweep.errors import ConfigError
from vaesweep.data.base import DATASETS, data_config
from vaesweep.kl.schedules import SCHEDULES
from vaesweep.kl.weighting import WEIGHTINGS
from vaesweep.likelihood.base import HEADS
from vaesweep.nn import MODELS, model_config
from vaesweep.registry import Registry
from vaesweep.schema import PartConfig

import vaesweep.data  # noqa: F401  (the package walks: every part registered)
import vaesweep.kl  # noqa: F401
import vaesweep.likelihood  # noqa: F401

@dataclass(frozen=True)
class Group:
    """A kind of part: its registry, the typed config of a part by name, and how an unknown
    key of its node is treated (``what``: refused, naming the keys of "this head" or
    "dataset images", including one added with ``+data.<key>=``; None: left to Hydra's
    struct mode)."""

    registry: Registry
    config: Callable[[str], type[PartConfig]]
    what: Callable[[str], str] | None
    #: keys of the node that are another group's (kl's ``schedule``)
    ignore: tuple[str, ...] = ()


#: config group -> its kind of part
GROUPS: dict[str, Group] = {
    "data": Group(DATASETS, data_config, lambda name: f"dataset {name}"),
    "model": Group(MODELS, model_config, lambda name: f"model {name}"),
    "likelihood": Group(HEADS, lambda name: HEADS.get(name).Config, lambda name: "this head"),
    "kl": Group(WEIGHTINGS, lambda name: WEIGHTINGS.get(name).Config,
                lambda name: "this weighting", ("schedule",)),
    "kl/schedule": Group(SCHEDULES, lambda name: SCHEDULES.get(name).Config,
                         lambda name: "this schedule"),
}


def part_defaults(group: str, name: str) -> dict[str, Any]:
    """The config node of part ``name`` of ``group`` with every key at its default.

    Raises ConfigError (naming the group's key) for an unregistered name."""
    return {"name": name, **GROUPS[group].config(name).defaults()}


def check_parts(c: Mapping[str, Any]) -> None:
    """Checks the node of every part of the resolved config ``c`` (plain containers) against
    its typed config: the part's name is registered, its keys are known, each value is of
    the type and in the range its dataclass declares, and its rules between keys hold. Needs
    no data: the job and the sweepers call it right after composition, so a bad value stops
    a run before the data are loaded and a sweep before its first trial. What needs the data
    or other groups (image size, N, trainer.max_steps) is checked when the part is built.

    Raises ConfigError naming the first bad key (``kl.reduction``), its value and what is
    allowed."""
    for group, kind in GROUPS.items():
        node: Any = c
        for part in group.split("/"):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None and group == "kl/schedule":
            continue  # no schedule: constant
        if not isinstance(node, Mapping):
            node = {}
        name = node.get("name")
        if not isinstance(name, str):
            raise ConfigError(kind.registry.key, name, sorted(kind.registry))
        kind.registry.get(name)  # an unknown name: ConfigError listing the known ones
        kind.config(name).validate(node, group.replace("/", "."),
                                   kind.what(name) if kind.what else None, kind.ignore)


def part_key_check(c: Mapping[str, Any], key: str) -> Callable[[str, Any], Any] | None:
    """The check of one dotted key of a part's node on its own (``model.latent_dim``: a whole
    number >= 1), read from the typed config of the part that the resolved config ``c`` names
    (``model.name``); None when ``key`` is no part's key or its value is unchecked. A sweep
    checks every value a swept key can take with it before the first trial."""
    for group in sorted(GROUPS, key=len, reverse=True):  # kl/schedule before kl
        prefix = group.replace("/", ".") + "."
        rest = key[len(prefix):] if key.startswith(prefix) else ""
        if not rest or "." in rest:
            continue
        node: Any = c
        for part in group.split("/"):
            node = node.get(part) if isinstance(node, Mapping) else None
        name = node.get("name") if isinstance(node, Mapping) else None
        try:
            config = GROUPS[group].config(name)
        except (ConfigError, KeyError, TypeError):  # an unknown part: check_parts says so
            return None
        return config.key_check(rest)
    return None


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
    for group, kind in GROUPS.items():
        kind.registry.discover()
        for name in sorted(kind.registry):
            node = part_defaults(group, name)
            cs.store(name=schema_name(group, name), node=node, **replace)
            stored.append(schema_name(group, name))
            if not (Path(conf) / group / f"{name}.yaml").is_file():
                cs.store(group=group, name=name, node=node, **replace)
    # the optimiser is no registered part, but its preset starts from Python's defaults too
    optim = schema_name("optim", OPTIM_DEFAULTS["name"])
    cs.store(name=optim, node=dict(OPTIM_DEFAULTS), **replace)
    stored.append(optim)
    return stored
