"""How one setting's text is read: numbers, yes/no, names and paths, each refused in one sentence.

``contract/settings.py`` builds ``Settings`` from the environment with these; each reader takes
the environment and the setting's name, returns its value (or the default when it is unset or
blank), and raises ``BadInput`` naming the setting and what it must be.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TypeVar

from contract.errors import BadInput, shown

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


_FACTORY_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def factory_path(env: Mapping[str, str], name: str, default: str) -> str:
    """The setting ``name``: a ``package.module:callable`` path (only its shape is checked here)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not _FACTORY_PATH.fullmatch(raw):
        raise BadInput(f"{name} must be package.module:callable, not {shown(raw)}.")
    return raw


N = TypeVar("N", int, float)


def number(
    env: Mapping[str, str], name: str, default: N, kind: type[N], *, low: N, high: N | None = None
) -> N:
    """The setting ``name`` as a finite number written in ASCII digits, within [low, high]."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if not (_INTEGER if kind is int else _DECIMAL).fullmatch(text):
        noun = "a whole number" if kind is int else "a number"
        raise BadInput(f"{name} must be {noun}, not {shown(raw)}.")
    value = kind(text)
    if not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, not {shown(raw)}.")
    if value < low:
        raise BadInput(f"{name} must be at least {low}, not {shown(raw)}.")
    if high is not None and value > high:
        raise BadInput(f"{name} must be at most {high}, not {shown(raw)}.")
    return value


def optional_number(
    env: Mapping[str, str], name: str, kind: type[N], *, low: N, high: N | None = None
) -> N | None:
    """The setting ``name`` as ``number`` reads it, or None when it is not set."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return number(env, name, low, kind, low=low, high=high)


def optional_flag(env: Mapping[str, str], name: str) -> bool | None:
    """The setting ``name`` as ``flag`` reads it, or None when it is not set."""
    raw = env.get(name)
    return None if raw is None or raw.strip() == "" else flag(env, name, False)


_CONNECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def connection_name(env: Mapping[str, str]) -> str:
    """ERP_CONNECTION: a short name (letters, digits, ``_.-``) that goes into Redis keys."""
    raw = (env.get("ERP_CONNECTION") or "").strip()
    if not raw:
        return "default"
    if not _CONNECTION.fullmatch(raw):
        raise BadInput(
            "ERP_CONNECTION must be up to 64 letters, digits, '_', '.' or '-' (it names the "
            f"connection's keys in Redis), not {shown(raw)}."
        )
    return raw


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The setting ``name`` as a yes/no: 1/true/yes/on or 0/false/no/off (any case)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise BadInput(f"{name} must be 1 or 0 (true/false, yes/no), not {shown(raw)}.")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def header_name(env: Mapping[str, str], name: str, default: str) -> str:
    """The setting ``name``: an HTTP header name (a token, RFC 9110)."""
    raw = (env.get(name) or "").strip() or default
    if not _HEADER_NAME.fullmatch(raw):
        raise BadInput(f"{name} must be an HTTP header name, not {shown(raw)}.")
    return raw
