"""Typed dataclasses from plain mappings (parsed YAML or JSON), strictly: unknown keys and wrong
types raise :class:`ConfigError` naming the key and the fix; nested dataclasses, lists, dicts and
optional fields are followed. What :func:`karmma.config.from_dict` runs."""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from typing import Any

from karmma.errors import ConfigError

log = logging.getLogger(__name__)

Renamed = dict[type, dict[str, str]]
# A YAML 1.1 loader reads ``1e-3`` (no dot) as a string; such strings are accepted as numbers.
_NUMBER_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(\.inf|\.nan)", re.IGNORECASE)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, renamed: Renamed) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, renamed)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return typed_from_dict(tp, value, where, renamed)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{where}[{i}]", renamed) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, arg = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, arg, f"{where}.{k}", renamed) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        return float(value.strip().lower().replace(".inf", "inf").replace(".nan", "nan"))
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got the boolean {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def typed_from_dict(cls: type, data: dict[str, Any], where: str = "config", renamed: Renamed | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types; ``renamed``
    maps a dataclass to its ``{old key: new key}`` (the old key is read, with a warning)."""
    renamed = renamed or {}
    for old, new in renamed.get(cls, {}).items():
        if old in data:
            if new in data:
                raise ConfigError(f"{where}: both {old!r} and {new!r} given; {old!r} is the old name of {new!r}")
            log.warning("%s.%s is deprecated: it is now %s.%s (same meaning); please rename it", where, old, where, new)
            data = {(new if k == old else k): v for k, v in data.items()}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)} (check the spelling, or remove the key)"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}", renamed) for k, v in data.items()}
    return cls(**kwargs)
