"""Typed configuration: dataclasses, filled from defaults < YAML file < command-line flags.

Every stage has a dataclass config. ``load_config(Cls, yaml_path, overrides)`` builds one,
rejecting unknown keys with the list of valid ones (a typo never silently becomes a
default), coercing YAML scalars to the annotated types, and applying dotted overrides
such as ``{"train.lr": 1e-3}`` or ``--set train.lr=1e-3`` strings (typed by the field:
``--set source.split=2e1`` stays the text ``"2e1"``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


@dataclasses.dataclass(frozen=True)
class SetValue:
    """The text of a ``--set KEY=TEXT`` override, typed once the field's type is known.

    A ``str`` field takes the literal text (``--set source.split=2e1`` is the split ``"2e1"``,
    not ``"20.0"``); any other field takes :attr:`value`, the text read as a YAML scalar, so
    numbers, booleans and lists still parse.
    """

    text: str

    def yaml(self) -> Any:
        """The text read as a YAML document ("" when empty; the text itself if not YAML)."""
        if not self.text.strip():
            return ""
        try:
            return yaml.safe_load(self.text)
        except yaml.YAMLError:
            return self.text

    @property
    def value(self) -> Any:
        """What a non-string field receives: the YAML reading, with ``1e-3`` a float (YAML 1.2;
        PyYAML's YAML 1.1 reads it as a string)."""
        val = self.yaml()
        if isinstance(val, str) and _FLOAT_RE.fullmatch(val.strip()):
            return float(val)
        return val


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce_set_value(sv: SetValue, tp, key: str):
    options, _ = _resolve_type(tp)
    val = sv.yaml()
    if str in options and val is not None and not isinstance(val, (list, dict)):
        # the text as typed: YAML would turn 2e1 into 20.0, 010 into 8 and yes into True
        return val if isinstance(val, str) else sv.text.strip()
    return _coerce(sv.value, tp, key)


def _plain(value):
    """``value`` with every :class:`SetValue` inside it replaced by its YAML reading."""
    if isinstance(value, SetValue):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _resolve_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args, True
    return [tp], False


def _coerce(value: Any, tp, key: str):
    if tp is Any:
        return _plain(value)
    if isinstance(value, SetValue):
        return _coerce_set_value(value, tp, key)
    options, optional = _resolve_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be null")
    if len(options) == 1:  # the inner error names the key and the cause
        try:
            return _coerce_one(value, options[0], key)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: cannot use {_plain(value)!r}: {exc}") from None
    errors = []
    for opt in options:
        try:
            return _coerce_one(value, opt, key)
        except (ConfigError, TypeError, ValueError) as exc:
            errors.append(str(exc))
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{key}: cannot use {_plain(value)!r} as {names}: {'; '.join(errors)}")


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
        return _plain(dict(value))
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
        if isinstance(value, str) and "e" in value.lower():
            value = float(value)  # 2e3
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
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


def parse_set(items: list[str] | None) -> dict[str, SetValue]:
    """Parse ``["a.b=1", "c=x"]`` into dotted overrides.

    The values stay text (:class:`SetValue`) until :func:`load_config` knows each field's
    type: a string field keeps the text as typed, any other reads it as a YAML scalar.
    """
    out: dict[str, SetValue] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = SetValue(v)
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
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at the top level")
    return doc


def load_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its ``base:`` resolved: ``base: other.yaml`` (relative to this
    file's folder) loads that file first (itself possibly with a base) and this file's keys
    are merged over it, section by section; a key set here replaces the base's value (a
    section set to ``null`` removes it). ``base: [a.yaml, b.yaml]`` merges b over a first
    (an overlay such as a fast schedule over a paper setting)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"{path}: `base` files form a cycle ({chain})")
    doc = load_yaml(path)
    base = doc.pop("base", None)
    if base is None:
        return doc
    bases = base if isinstance(base, list) else [base]
    if not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"{path}: `base` must be the path of another config file, or a list of them"
        )
    merged: dict = {}
    for b in bases:
        _deep_update(merged, load_config_yaml(path.parent / b, (*_seen, path)))
    _deep_update(merged, doc)
    return merged


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
        doc = load_config_yaml(yaml_path)
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


def build_config(
    cls, config: Path | None, sets: list[str] | None, flags: dict[str, Any], validate: bool = True
):
    """defaults < YAML < ``sets`` (``--set KEY=VALUE`` strings) < explicit ``flags`` (None:
    not given). A key given both as a flag and by ``--set``
    is an error (one of them would be silently ignored)."""
    overrides = parse_set(sets)
    given = {k: v for k, v in flags.items() if v is not None}
    both = sorted(set(overrides) & set(given))
    if both:
        raise ConfigError(
            f"{', '.join(both)}: given both as an option and with --set; give each key once"
        )
    overrides.update(given)
    return load_config(cls, config, overrides, validate=validate)


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def dump_yaml(obj) -> str:
    # allow_unicode: a non-ASCII path stays readable ("/data/straße", not "/data/stra\\xDFe")
    return yaml.safe_dump(
        to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=False, allow_unicode=True
    )
