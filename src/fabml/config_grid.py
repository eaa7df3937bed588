"""Settings grids for ablations: ``--grid KEY=V1,V2,...`` axes -> every combination as a config.

One grid language for every job's ablation command (``fabml anomaly ablation``, ``fabml wafer ablation``): an
axis is ``KEY=V1,V2,...`` with each value read as YAML (``[64, 64]`` stays one value: commas inside brackets and
braces do not split); KEY is a dotted setting, which the job may rewrite first (the anomaly job reads a key that
names no config section as a model setting). Combinations are ordered with the first axis varying slowest, and a
bad value is a :class:`~fabml.errors.ConfigError` naming the setting before anything is trained.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, Sequence, TypeVar

import yaml

from fabml.config import apply_overrides, from_dict, to_dict
from fabml.errors import ConfigError

T = TypeVar("T")
Axes = list[tuple[str, list[Any]]]


def split_values(text: str) -> list[str]:
    """``"a,[1, 2],b"`` -> ``["a", "[1, 2]", "b"]``: split on commas outside brackets and braces."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(specs: Sequence[str], resolve_key: Callable[[str], str] = str.strip,
               example: str = "train.lr=0.001,0.0003") -> Axes:
    """``["a.b=1,2", "c=x,y"]`` -> ``[(resolve_key("a.b"), [1, 2]), (resolve_key("c"), ["x", "y"])]``.

    Raises ConfigError for an axis without ``=`` or values, a value that is not YAML, or a key named twice.
    An empty ``specs`` gives no axes (the caller decides whether that is allowed).
    """
    axes: Axes = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        values = split_values(raw) if sep else []
        if not key.strip() or not values or any(v == "" for v in values):
            raise ConfigError(f"--grid {spec!r} must be KEY=V1,V2,... e.g. --grid {example}")
        try:
            parsed = [yaml.safe_load(v) for v in values]
        except yaml.YAMLError:
            raise ConfigError(f"--grid {spec!r}: a value is not valid YAML") from None
        full = resolve_key(key)
        if any(full == k for k, _ in axes):
            raise ConfigError(f"--grid names {full} twice; give each setting once with all its values")
        axes.append((full, parsed))
    return axes


def grid_configs(cls: type[T], base: T, axes: Axes) -> list[tuple[dict[str, Any], T]]:
    """Every combination of ``axes`` applied to ``base`` (a config dataclass of type ``cls``) as
    ``(settings, config)``, the first axis varying slowest; no axes gives ``[({}, base)]``."""
    combos = []
    for values in itertools.product(*(vals for _, vals in axes)):
        settings = {key: value for (key, _), value in zip(axes, values)}
        data = apply_overrides(to_dict(base), [f"{key}={json.dumps(value)}" for key, value in settings.items()])
        combos.append((settings, from_dict(cls, data)))
    return combos


def settings_label(settings: dict[str, Any]) -> str:
    """``{"data.size": 64, "model.attention": True, "augment.preset": "d4"}`` ->
    ``"data.size=64 model.attention=true augment.preset=d4"`` (values as ``--grid`` takes them); ``"base"`` when empty."""
    text = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    return " ".join(f"{key}={text(value)}" for key, value in settings.items()) or "base"
