"""One registry per kind of part (heads, schedules, controllers, datasets, models).

A new part is one class or function decorated with ``@REGISTRY.register("name")`` plus one
YAML file; the config names it, and an unknown name is a :class:`ConfigError` that lists the
registered ones.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from vaesweep.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A name -> factory mapping for one kind of part; ``key`` is its config key."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__()
        self.kind, self.key = kind, key

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return deco

    def get(self, name: str, key: str | None = None) -> Any:  # type: ignore[override]
        if name not in self:
            raise ConfigError(key or self.key, name, sorted(self))
        return self[name]

    def build(self, name: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        return self.get(name, key)(*args, **kwargs)
