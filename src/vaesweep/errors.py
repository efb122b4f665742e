"""Errors that reach the user as one clear line: the key, the bad value, what is allowed."""
from __future__ import annotations

import signal
from typing import Any, Iterable, Mapping


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


class Interrupted(BaseException):
    """SIGTERM or SIGINT (Ctrl-C), turned into an exception so the run is marked KILLED on the
    way out (:class:`vaesweep.tracking.run.TrackedRun` raises it from its signal handler). A
    BaseException, as KeyboardInterrupt: no ``except Exception`` swallows it. Each
    TrackedRun it passes through adds its run id to :attr:`killed_runs`. Defined here, with
    :func:`stop_signal`, so that the CLI can tell a stop without importing MLflow."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.killed_runs: list[str] = []
        super().__init__(f"signal {self.signum} ({self.signal_name})")

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return str(self.signum)


def stop_signal(e: BaseException) -> tuple[str, int] | None:
    """The signal that stopped a job, as (name, number): an :class:`Interrupted`'s, SIGINT
    for a KeyboardInterrupt (Ctrl-C outside any run); None when ``e`` is no stop (the user's
    CLI message and a sweep's reason for the trials it marks FAIL both read it)."""
    if isinstance(e, Interrupted):
        return e.signal_name, e.signum
    if isinstance(e, KeyboardInterrupt):
        return "SIGINT", int(signal.SIGINT)
    return None


# -- the one way parts check their config: number, flag, choice, known_keys ------------------
def number(key: str, value: Any, lo: float = float("-inf"), hi: float = float("inf"), *,
           integer: bool = False, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite number in [lo, hi] (``lo_open``/``hi_open``: that end excluded),
    else a ConfigError naming ``key``. Strings, NaN and infinities are refused."""
    kind = "a whole number" if integer else "a number"
    allowed = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if isinstance(value, bool) or value is None:
        raise ConfigError(key, value, allowed)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, value, allowed) from None
    if (v != v or v in (float("inf"), float("-inf")) or v < lo or v > hi or (lo_open and v == lo)
            or (hi_open and v == hi)):
        raise ConfigError(key, value, allowed)
    if integer:
        if v != int(v):
            raise ConfigError(key, value, allowed)
        return int(v)
    return v


def flag(key: str, value: Any) -> bool:
    """A YAML boolean, or a ConfigError naming ``key``."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` when it is one of ``allowed``, else a ConfigError listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(key, value, allowed)
    return value


def known_keys(prefix: str, given: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    """Refuse the first key of ``given`` not in ``allowed`` (sorted): a ConfigError naming
    ``<prefix>.<key>`` and listing the keys of ``what`` (e.g. "this head")."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", given[unknown[0]],
                          f"a key of {what}: {allowed or 'none'}")
