"""Typed part configs: a dataclass beside each part holds its keys, their defaults, choices
and ranges (as pythae's ``models/vae/vae_config.py``), declared once::

    @HEADS.register("gaussian")
    class Gaussian(LikelihoodHead):
        @dataclass
        class Config(PartConfig):
            sigma: float = positive(1.0)

Two uses, one declaration:

- :meth:`PartConfig.defaults` is the node :mod:`vaesweep.parts` stores in Hydra's ConfigStore
  (``_defaults_<group>_<name>``), which the YAML presets start from. The node holds plain
  values, not the dataclass: a typed structured node would make OmegaConf refuse a bad value
  with its own message, where vaesweep promises one line naming the key, the value and what
  is allowed (the bad-input table of docs/pages/reliability.md).
- :meth:`PartConfig.validate` checks a composed node with the helpers of
  :mod:`vaesweep.errors` (``number``, ``choice``, ``flag``, ``known_keys``) and the class's
  :meth:`~PartConfig.check` (rules between keys), raising one :class:`ConfigError`. It runs
  right after composition for every part (:func:`vaesweep.parts.check_parts`, from the job's
  early checks and the sweeper's pre-flight, before any data are loaded or any run or trial
  is created), and again when the part is built (Python callers), which then reads the
  checked values from the instance it returns.

What needs more than the config (the data's image shape, ``trainer.max_steps`` as the unit of
a fraction, the number of elements N) is checked when the part is built.

A part class may instead give a plain ``keys`` dict (name -> default): :class:`Configured`
then makes its Config from it, its keys known but their values unchecked (an inherited key
keeps its check).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from vaesweep.errors import ConfigError, choice, flag, known_keys, number

#: field metadata: the check of a value, ``check(dotted_key, value) -> value``
CHECK = "vaesweep_check"
#: field metadata: a key accepted (and checked) when given, but not part of the composed
#: node (e.g. ``data.eval_batch_size``, added with ``+data.eval_batch_size=...``)
EXTRA = "vaesweep_extra"

Check = Callable[[str, Any], Any]


def _field(default: Any, check: Check | None, extra: bool = False) -> Any:
    meta = {CHECK: check, EXTRA: extra}
    if isinstance(default, (list, tuple, dict)):  # a dataclass default must be immutable
        value = list(default) if isinstance(default, tuple) else default
        return field(default_factory=lambda: copy.deepcopy(value), metadata=meta)
    return field(default=default, metadata=meta)


def num(default: Any, lo: float = -math.inf, hi: float = math.inf, *, integer: bool = False,
        lo_open: bool = False, hi_open: bool = False, optional: bool = False,
        extra: bool = False) -> Any:
    """A number in [lo, hi] (see :func:`vaesweep.errors.number`); ``optional``: null too."""
    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        return number(key, value, lo, hi, integer=integer, lo_open=lo_open, hi_open=hi_open)

    return _field(default, check, extra)


def positive(default: Any, **kw: Any) -> Any:
    """A finite number above 0."""
    return num(default, 0.0, lo_open=True, **kw)


def whole(default: Any, lo: float = 0, hi: float = math.inf, **kw: Any) -> Any:
    """A whole number in [lo, hi] (2.0 is 2, 2.5 is refused)."""
    return num(default, lo, hi, integer=True, **kw)


def one_of(default: Any, allowed: Iterable[Any], extra: bool = False) -> Any:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    return _field(default, lambda key, value: choice(key, value, allowed), extra)


def boolean(default: bool, extra: bool = False) -> Any:
    """true or false."""
    return _field(default, flag, extra)


def wholes(default: Sequence[int], lo: float = 1) -> Any:
    """A list of whole numbers, each at least ``lo`` (layer widths)."""
    def check(key: str, value: Any) -> list[int]:
        allowed = f"a list of whole numbers, each at least {lo:g}"
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ConfigError(key, value, allowed)
        out = []
        for v in value:
            try:
                out.append(number(key, v, lo, integer=True))
            except ConfigError:
                raise ConfigError(key, value, allowed) from None
        return out

    return _field(default, check)


def free(default: Any, extra: bool = False) -> Any:
    """Any value (a path, a file name): not checked here."""
    return _field(default, None, extra)


@dataclass
class PartConfig:
    """Base of the part configs (see the module doc). Subclasses are dataclasses whose fields
    are made with :func:`num`, :func:`positive`, :func:`whole`, :func:`one_of`,
    :func:`boolean`, :func:`wholes` or :func:`free`."""

    #: :meth:`defaults` lists a subclass's own keys before those it inherits
    own_first: ClassVar[bool] = False

    def check(self, prefix: str) -> None:
        """Rules between keys, after each key was checked; raises ConfigError naming one of
        them (``prefix``: the config node, e.g. ``likelihood``)."""

    @classmethod
    def key_check(cls, name: str) -> Check | None:
        """The check of key ``name`` on its own (its type and range, as
        ``check(dotted_key, value) -> value``; rules between keys are :meth:`check`'s), or
        None when the part has no such key or leaves its value unchecked."""
        return next((f.metadata.get(CHECK) for f in fields(cls) if f.name == name), None)

    @classmethod
    def key_names(cls) -> list[str]:
        """Every key the part accepts (extra ones included)."""
        return [f.name for f in fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The part's keys (not the extra ones) with their defaults, in the order of the
        fields (:attr:`own_first`: a subclass's own keys first, then those it inherits)."""
        by_name = {f.name: f for f in fields(cls) if not f.metadata.get(EXTRA)}
        order: list[str] = []
        for klass in (cls.__mro__ if cls.own_first else ()):
            for name in klass.__dict__.get("__annotations__", {}):
                if name in by_name and name not in order:
                    order.append(name)
        order += [name for name in by_name if name not in order]
        out = {}
        for name in order:
            f = by_name[name]
            out[name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        return out

    @classmethod
    def validate(cls, given: Mapping[str, Any], prefix: str, what: str | None = None,
                 ignore: Iterable[str] = ()) -> "PartConfig":
        """``given`` (the part's config node; ``name`` and the ``ignore`` keys are skipped)
        checked key by key, then by :meth:`check`; returns the config with the defaults of
        the keys not given. ``what`` (e.g. "this head"): an unknown key is refused, naming
        the keys of ``what``; None: unknown keys are left to Hydra's struct mode.

        Raises ConfigError naming ``<prefix>.<key>``, the value and what is allowed."""
        ignore = set(ignore)
        if type(given).__name__ == "DictConfig":  # a missing value stays "???", for cfg_get
            from omegaconf import OmegaConf

            given = OmegaConf.to_container(given, resolve=True)  # type: ignore[assignment]
        given = {k: v for k, v in dict(given).items() if k != "name" and k not in ignore}
        if what is not None:
            known_keys(prefix, given, [*cls.key_names(), *ignore], what)
        values = {}
        for f in fields(cls):
            if f.name in given:
                check = f.metadata.get(CHECK)
                value = given[f.name]
                values[f.name] = check(f"{prefix}.{f.name}", value) if check else value
        config = cls(**values)
        config.check(prefix)
        return config


def config_from_keys(keys: Mapping[str, Any], base: type[PartConfig],
                     name: str = "Config") -> type[PartConfig]:
    """A Config made from a plain ``keys`` dict (name -> default): the keys ``base`` has keep
    their check with the new default; the others take any value."""
    inherited = {f.name: f for f in fields(base)}
    specs = []
    for key, default in keys.items():
        meta = inherited[key].metadata if key in inherited else {}
        specs.append((key, Any, _field(default, meta.get(CHECK), bool(meta.get(EXTRA)))))
    return dataclasses.make_dataclass(name, specs, bases=(base,))


class Configured:
    """Mixin of the part classes (heads, weightings, schedules): ``Config`` declares the
    keys; :attr:`keys` (name -> default) is derived from it. A subclass that gives only a
    ``keys`` dict gets a Config made from it (:func:`config_from_keys`)."""

    Config: ClassVar[type[PartConfig]] = PartConfig
    keys: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" not in cls.__dict__ and "keys" in cls.__dict__:
            cls.Config = config_from_keys(cls.__dict__["keys"], cls.Config,
                                          f"{cls.__name__}Config")
        cls.keys = cls.Config.defaults()


def config_from_signature(function: Callable, base: type[PartConfig],
                          skip: Iterable[str] = (), name: str = "Config") -> type[PartConfig]:
    """A Config from a builder's keyword arguments (its signature is its schema, e.g. a model
    builder's ``channels: int = 32``): an ``int`` is a whole number >= 1 (a count of units),
    a sequence of ints a list of them; anything else is not checked."""
    hints = typing.get_type_hints(function)
    specs = []
    for key, p in inspect.signature(function).parameters.items():
        if key in skip or p.default is p.empty:
            continue
        hint = hints.get(key)
        args = typing.get_args(hint)
        if hint is int:
            spec = whole(p.default, 1)
        elif typing.get_origin(hint) is not None and args and args[0] is int and len(args) == 1:
            spec = wholes(p.default, 1)
        else:
            spec = free(p.default)
        specs.append((key, hint or Any, spec))
    return dataclasses.make_dataclass(name, specs, bases=(base,))
