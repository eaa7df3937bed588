"""Nested dataclass configs <- YAML file <- ``a.b=c`` overrides, and back to YAML.

A config is a plain ``@dataclass`` whose fields have defaults and simple types
(``int``, ``float``, ``str``, ``bool``, ``None``, ``Path``, lists/tuples of those,
unions of those, or another config dataclass). Precedence: dataclass defaults,
then the YAML file, then each override in order.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar, Union

import yaml

from fabml.errors import ConfigError

T = TypeVar("T")

_NONE_TYPE = type(None)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Turn a config dataclass into nested dicts of YAML-safe values (tuples and Paths become lists and str)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build ``cls`` from nested dicts, coercing YAML scalars to the declared field types.

    ``where`` is the dotted prefix used in error messages (e.g. ``"train"``).
    Missing keys keep their defaults; an unknown key raises :class:`ConfigError`
    naming it and listing the valid keys.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"setting '{where or '<root>'}' must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            scope = f" under '{where}'" if where else ""
            raise ConfigError(
                f"unknown setting '{dotted}'; valid keys{scope}: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming the setting ``where``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        members = typing.get_args(tp)
        if value is None:
            if _NONE_TYPE in members:
                return None
            raise ConfigError(f"setting '{where}' cannot be null")
        # Exact type match first (so ``True`` stays a bool in ``bool | str``), then coercion.
        for member in members:
            if member is not _NONE_TYPE and _is_exact(value, member):
                return _coerce(value, member, where)
        for member in members:
            if member is _NONE_TYPE:
                continue
            try:
                return _coerce(value, member, where)
            except ConfigError:
                continue
        raise ConfigError(f"setting '{where}' = {value!r} matches none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"setting '{where}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"setting '{where}' must have {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"setting '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if value is None:
        raise ConfigError(f"setting '{where}' cannot be null (expected {_type_name(tp)})")
    return _coerce_scalar(value, tp, where)


def _is_exact(value: Any, tp: Any) -> bool:
    base = typing.get_origin(tp) or tp
    if base is float:
        return isinstance(value, float)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(base):
        return isinstance(value, (dict, base))
    return isinstance(base, type) and isinstance(value, base)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    bad = ConfigError(f"setting '{where}' must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_override(override: str) -> tuple[list[str], Any]:
    """Split ``"a.b=c"`` into ``(["a", "b"], value)``; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key=value (e.g. train.lr=1e-4)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override '{override}' has an empty key part; use dotted names like train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{override}': value is not valid YAML ({err.__class__.__name__})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to nested dicts in place (creating levels) and return them."""
    for override in overrides:
        parts, value = parse_override(override)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                raise ConfigError(f"override '{override}': '{prefix}' is a value, not a group of settings")
            node = child
        node[parts[-1]] = value
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()
) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path`` (if given), then by ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{line}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings at the top level")
        data = loaded or {}
    apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{err} (in {path} or --set overrides)") from None
        raise


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (field order kept) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
