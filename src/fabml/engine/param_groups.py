"""Optimizer parameter groups: per-group learning-rate multiples and no weight decay on biases and norms.

A group is a dict ``{"params": [...], "lr_scale": float, "weight_decay": float, "name": str}``;
only ``params`` is required. The trainer sets each group's rate to ``schedule(step) * lr_scale``
at every optimizer step; a group without ``weight_decay`` gets ``train.weight_decay``.
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from fabml.errors import TrainingError


def decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr_scale: float = 1.0,
    name: str = "params",
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Split parameters into a decayed group and a ``weight_decay=0`` group.

    Parameters with ``ndim <= 1`` (biases, BatchNorm/LayerNorm/GroupNorm weights, scalar
    temperatures) go to ``{name}_no_decay`` with ``weight_decay = 0``; matrices and kernels go
    to ``{name}`` with ``weight_decay`` (``None`` = ``train.weight_decay``). Both get
    ``lr_scale``. Parameters with ``requires_grad=False`` are left out; empty groups are dropped.
    The BYOL and ArcFace recipes (LARS / SGD with decay) exclude these parameters from decay.
    """
    decay, no_decay = [], []
    for _, param in named_parameters:
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        group: dict[str, Any] = {"params": decay, "lr_scale": float(lr_scale), "name": name}
        if weight_decay is not None:
            group["weight_decay"] = float(weight_decay)
        groups.append(group)
    if no_decay:
        groups.append({"params": no_decay, "lr_scale": float(lr_scale), "weight_decay": 0.0, "name": f"{name}_no_decay"})
    return groups


def check_groups(groups: list[dict[str, Any]], module: nn.Module) -> list[dict[str, Any]]:
    """Validate ``groups`` against ``module``: every parameter belongs to ``module``, needs a
    gradient, and appears in one group only. Returns copies with ``lr_scale`` and ``name`` filled in."""
    owned = {id(p) for p in module.parameters()}
    seen: set[int] = set()
    out: list[dict[str, Any]] = []
    for index, group in enumerate(groups):
        params = list(group.get("params", []))
        label = group.get("name", f"group{index}")
        for param in params:
            if id(param) not in owned:
                raise TrainingError(f"param group '{label}' holds a parameter that is not part of the method")
            if not param.requires_grad:
                raise TrainingError(f"param group '{label}' holds a parameter with requires_grad=False; leave it out")
            if id(param) in seen:
                raise TrainingError(f"a parameter appears in more than one param group (again in '{label}')")
            seen.add(id(param))
        scale = float(group.get("lr_scale", 1.0))
        if scale < 0:
            raise TrainingError(f"param group '{label}' has lr_scale={scale}; it must be >= 0")
        if params:
            out.append({**group, "params": params, "lr_scale": scale, "name": label})
    return out
