"""Errors that reach the user as one clear line: the key, the bad value, what is allowed."""
from __future__ import annotations

from typing import Any, Iterable


class VaesweepError(Exception):
    """Base class of errors that the CLI prints as one line and exits non-zero on."""

    exit_code = 2


class ConfigError(VaesweepError, ValueError):
    """A config value is invalid: names the dotted key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str | Iterable[Any], hint: str = "") -> None:
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is invalid: allowed is {allowed}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class DataError(VaesweepError, OSError):
    """A dataset file is missing or corrupt: names the config key, the path and what to do."""

    def __init__(self, key: str, path: Any, problem: str, hint: str = "") -> None:
        self.key, self.path = key, path
        msg = f"{key}: {problem}: {path}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


def number(key: str, value: Any, lo: float = float("-inf"), hi: float = float("inf"), *,
           integer: bool = False, lo_open: bool = False) -> float:
    """``value`` as a finite number in [lo, hi] (or (lo, hi] with ``lo_open``), else a
    ConfigError naming ``key``. Strings, NaN and infinities are refused."""
    kind = "a whole number" if integer else "a number"
    allowed = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, bool) or value is None:
        raise ConfigError(key, value, allowed)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, value, allowed) from None
    if v != v or v in (float("inf"), float("-inf")) or v < lo or v > hi or (lo_open and v == lo):
        raise ConfigError(key, value, allowed)
    if integer:
        if v != int(v):
            raise ConfigError(key, value, allowed)
        return int(v)
    return v
