"""Training settings chosen from the GPU (the seed's table), filled in only where the user set nothing.

| device                                  | precision | workers | grad accumulation |
|-----------------------------------------|-----------|---------|-------------------|
| A100 80 GB                              | bf16      | 16      | 1                 |
| A100 40 GB                              | bf16      | 8       | 2                 |
| 24 GB cards (20-32 GiB, not an A100)    | fp16      | 4       | 4                 |
| other Ampere+ (compute capability >= 8) | bf16      | auto    | 1                 |
| pre-Ampere GPU                          | fp16      | 4       | 4                 |
| CPU                                     | fp32      | auto    | 1                 |

"auto" workers is ``train.num_workers=-1`` (the trainer's rule: ``min(4, cpus - 1)``, 0 on <= 2 CPUs).
The trainer turns TF32 on for every CUDA run; :func:`enable_cudnn_benchmark` turns on
``cudnn.benchmark`` (fixed-size inputs). A setting named in the config file's ``train:`` section
or in a ``--set train.X=...`` override is the user's and is never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from fabml.config import parse_override
from fabml.engine.train_config import TrainConfig

AUTO_KEYS = ("precision", "num_workers", "grad_accum_steps")
_GIB = 1024 ** 3


@dataclass(frozen=True)
class DeviceProps:
    """What the table reads of a device: ``kind`` "cuda" or "cpu", the GPU's name, its memory in
    GiB and its compute capability (major, minor); zeros for a CPU."""

    kind: str
    name: str = ""
    total_memory_gib: float = 0.0
    major: int = 0
    minor: int = 0


def device_props(device: torch.device) -> DeviceProps:
    """The :class:`DeviceProps` of ``device`` (a CUDA device is queried; anything else is a CPU)."""
    if device.type != "cuda":
        return DeviceProps("cpu", "CPU")
    props = torch.cuda.get_device_properties(device)
    return DeviceProps("cuda", props.name, props.total_memory / _GIB, props.major, props.minor)


def auto_train_settings(props: DeviceProps) -> dict[str, Any]:
    """``{"precision", "num_workers", "grad_accum_steps", "rule"}`` for ``props`` (the table above);
    ``rule`` names the row that matched."""
    if props.kind != "cuda":
        return {"precision": "fp32", "num_workers": -1, "grad_accum_steps": 1, "rule": "CPU"}
    a100 = "A100" in props.name.upper()
    if a100 and props.total_memory_gib >= 60:
        return {"precision": "bf16", "num_workers": 16, "grad_accum_steps": 1, "rule": "A100 80 GB"}
    if a100:
        return {"precision": "bf16", "num_workers": 8, "grad_accum_steps": 2, "rule": "A100 40 GB"}
    if 20 <= props.total_memory_gib < 32:
        return {"precision": "fp16", "num_workers": 4, "grad_accum_steps": 4, "rule": "24 GB GPU"}
    if props.major >= 8:
        return {"precision": "bf16", "num_workers": -1, "grad_accum_steps": 1, "rule": "Ampere+ GPU"}
    return {"precision": "fp16", "num_workers": 4, "grad_accum_steps": 4, "rule": "pre-Ampere GPU"}


def explicit_train_keys(config: str | Path | None, overrides: Sequence[str] | None) -> set[str]:
    """Names of the ``train`` settings the user gave: keys of the YAML file's ``train:`` section
    and ``train.X=...`` overrides."""
    keys: set[str] = set()
    if config is not None and Path(config).is_file():
        data = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        section = data.get("train") if isinstance(data, dict) else None
        if isinstance(section, dict):
            keys |= {str(k) for k in section}
    for override in overrides or []:
        parts, value = parse_override(override)
        if parts[0] == "train":
            if len(parts) > 1:
                keys.add(parts[1])
            elif isinstance(value, dict):
                keys |= {str(k) for k in value}
    return keys


def apply_auto_settings(train: TrainConfig, settings: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Set each of :data:`AUTO_KEYS` from ``settings`` on ``train`` unless it is in ``explicit``;
    returns the settings applied."""
    applied = {}
    for key in AUTO_KEYS:
        if key in settings and key not in explicit:
            setattr(train, key, settings[key])
            applied[key] = settings[key]
    return applied


def describe_auto_settings(props: DeviceProps, settings: dict[str, Any], applied: dict[str, Any]) -> str:
    """The line printed at the start of training, e.g.
    ``auto settings (A100 40 GB: NVIDIA A100-SXM4-40GB, 39.4 GiB): precision bf16, workers 8,
    grad accumulation 2; kept from the config: -``."""
    where = f"{props.name}, {props.total_memory_gib:.1f} GiB" if props.kind == "cuda" else props.name or "CPU"
    names = {"precision": "precision", "num_workers": "workers", "grad_accum_steps": "grad accumulation"}

    def show(key: str, value: Any) -> str:
        return f"{names[key]} {'auto' if key == 'num_workers' and value == -1 else value}"

    chosen = ", ".join(show(k, v) for k, v in applied.items()) or "-"
    kept = ", ".join(names[k] for k in AUTO_KEYS if k in settings and k not in applied) or "-"
    return (f"auto settings ({settings.get('rule', '?')}: {where}): {chosen}; kept from the config: {kept} "
            "(override with --set train.precision=..., train.num_workers=..., train.grad_accum_steps=...)")


def enable_cudnn_benchmark(props: DeviceProps) -> bool:
    """Turn on ``torch.backends.cudnn.benchmark`` on a GPU (inputs are fixed-size squares); True when set."""
    if props.kind != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True
