"""Strict typed configuration: nested dataclasses in, dictionaries and JSON out.

Load order is defaults <- preset file (JSON) <- `--set section.key=value` overrides. Unknown
keys and values of the wrong type are errors that name the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from a2p.errors import ConfigError
from a2p.fileio import read_json

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it in that type (ints widen to floats)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key '{key}': null is not allowed")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1] if errors else f"config key '{key}': bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a section ({_type_name(tp)}), got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):  # JSON's 1e400 reads as inf: no setting means that
            raise ConfigError(f"config key '{key}': {value!r} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported annotation {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass `cls` from `data`; missing keys keep their defaults, unknown keys fail."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}' must be a mapping")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (valid keys in this section: {', '.join(names)})"
        )
    values = {name: _coerce(data[name], hints[name], prefix + name) for name in names if name in data}
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-ready data (tuples become lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(config)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay `update` on `base`, returning a new dictionary."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_scalar(text: str) -> Any:
    """A `--set` value: JSON when it parses (numbers, true/false, null, lists), else a plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(text: str) -> dict[str, Any]:
    """Turn `section.key=value` into the nested mapping {"section": {"key": value}}."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} names no key")
    nested: dict[str, Any] = {parts[-1]: _parse_scalar(raw.strip())}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def load_config(
    cls: type[T],
    base: T | dict[str, Any] | None = None,
    preset_file: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
) -> T:
    """Resolve a config: `base` (defaults or a named preset) <- JSON preset file <- overrides."""
    data = to_dict(base) if base is not None and not isinstance(base, dict) else dict(base or {})
    if preset_file is not None:
        path = Path(preset_file)
        file_data = read_json(path, "preset file", ConfigError)
        try:
            from_dict(cls, merge(data, file_data))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
        data = merge(data, file_data)
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as JSON, atomically (temp file then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
