"""Typed configuration: dataclasses, filled from defaults < YAML file < command-line flags.

Every stage has a dataclass config. ``load_config(Cls, yaml_path, overrides)`` builds one,
rejecting unknown keys with the list of valid ones (a typo never silently becomes a
default), coercing YAML scalars to the annotated types, and applying dotted overrides
such as ``{"train.lr": 1e-3}`` or ``--set train.lr=1e-3`` strings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


def _resolve_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args, True
    return [tp], False


def _coerce(value: Any, tp, key: str):
    if tp is Any:
        return value
    options, optional = _resolve_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be null")
    errors = []
    for opt in options:
        try:
            return _coerce_one(value, opt, key)
        except (ConfigError, TypeError, ValueError) as exc:
            errors.append(str(exc))
    raise ConfigError(f"{key}: cannot use {value!r} as {tp}: {'; '.join(errors)}")


def _coerce_one(value: Any, tp, key: str):
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys under '{prefix or '<top>'}': {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def validate_tree(obj) -> None:
    """Call ``validate()`` on a dataclass config and on every nested one (children first)."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        validate_tree(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def to_dict(obj) -> dict:
    """A plain, YAML-safe dict of a (nested) dataclass."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(obj)


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=x"]`` (values read as YAML scalars) into dotted overrides."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        val = yaml.safe_load(v) if v.strip() else ""
        if isinstance(val, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                val = float(val) if any(ch.isdigit() for ch in val) else val
            except ValueError:
                pass
        out[k.strip()] = val
    return out


def _apply_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = {}
            cur[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at the top level")
    return doc


def load_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    section: str | None = None,
    validate: bool = True,
) -> T:
    """defaults < YAML (optionally one ``section`` of it) < ``overrides`` (dotted keys).

    ``None`` values in ``overrides`` mean "flag not given" and are skipped.
    """
    data: dict = to_dict(cls())
    if yaml_path is not None:
        doc = load_yaml(yaml_path)
        if section is not None:
            doc = doc.get(section, {}) or {}
            if not isinstance(doc, dict):
                raise ConfigError(f"{yaml_path}: section '{section}' must be a mapping")
        _deep_update(data, doc)
    for key, value in (overrides or {}).items():
        if value is not None:
            _apply_dotted(data, key, value)
    try:
        cfg = from_dict(cls, data)
        if validate:
            validate_tree(cfg)
        return cfg
    except ConfigError as exc:
        where = f"{yaml_path}: " if yaml_path else ""
        raise ConfigError(f"{where}{exc}") from exc


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def dump_yaml(obj) -> str:
    return yaml.safe_dump(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=False)
