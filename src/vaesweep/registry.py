"""One registry per kind of part (heads, schedules, weightings, datasets, models).

A new part is one Python file in its package (``vaesweep/likelihood/``, ``vaesweep/kl/``,
``vaesweep/nn/``, ``vaesweep/data/``) whose class or function is decorated with
``@REGISTRY.register("name")``, plus optionally one YAML preset in ``conf/<group>/``. Every
module of the package is imported by :func:`import_submodules` (from the package's
``__init__``, and again on a lookup miss), so there is no import line to forget. An unknown
name is a :class:`ConfigError` that lists the registered ones. The part's keys, with their
defaults and ranges, are a dataclass beside it (:mod:`vaesweep.schema`), which
:mod:`vaesweep.parts` finds through the registry: no line to add there either.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable, TypeVar

from vaesweep.errors import ConfigError

T = TypeVar("T")


def import_submodules(package: str, skip: Iterable[str] = ()) -> list[str]:
    """Import every module of ``package`` (recursively) except those named in ``skip``
    (last component, e.g. ``"loaders"``) and private ones (``_x``); returns their names.

    Their ``@register`` decorators run on import: this is how parts are found.
    Raises whatever a module raises on import (a broken part fails loudly, not silently).
    """
    pkg = importlib.import_module(package)
    skip = set(skip)
    names = []
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        last = info.name.rsplit(".", 1)[-1]
        if last.startswith("_") or last in skip:
            continue
        importlib.import_module(info.name)
        names.append(info.name)
    return names


class Registry(dict):
    """A name -> factory mapping for one kind of part; ``key`` is its config key.

    ``package`` (with ``skip``) is where its parts live: a lookup miss imports every module
    there once more before refusing the name, so a part added after import is still found.
    """

    def __init__(self, kind: str, key: str, package: str | None = None,
                 skip: Iterable[str] = ()) -> None:
        super().__init__()
        self.kind, self.key, self.package, self.skip = kind, key, package, tuple(skip)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return deco

    def discover(self) -> None:
        """Import every module of the registry's package (see :func:`import_submodules`)."""
        if self.package:
            import_submodules(self.package, self.skip)

    def get(self, name: str, key: str | None = None) -> Any:  # type: ignore[override]
        if name not in self:
            self.discover()
        if name not in self:
            raise ConfigError(key or self.key, name, sorted(self))
        return self[name]

    def build(self, name: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        return self.get(name, key)(*args, **kwargs)
