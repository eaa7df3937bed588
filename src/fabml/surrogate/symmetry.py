"""Symmetries of the physics that the e2e stage can train on (``data.symmetry``).

``transpose``: swapping the two axes of the input image changes the solution by the same swap of
the field's grid, ``u(a^T) = u(a)^T``. Training on both orientations doubles the cases the
conditioner sees for free. It holds when the equation, the domain and the boundary conditions
are all unchanged by the swap (Darcy flow ``-div(a grad u) = f`` on a square with the same
condition on every side, sampled on a grid that treats both axes alike). Rotations and the other
flips are *not* offered: a grid that keeps one boundary row/column but not the opposite one breaks
them (measured on the neuraloperator Darcy 16x16 set: ``u`` is 0 on the first row and column but
not on the last; training a kernel ridge on all eight D4 copies raised its test error from 0.137
to 0.208, on both orientations lowered it to 0.127).

A batch transform, applied to a random half of each training batch (validation sees the data as it
is)::

    inputs [B, C, S, S] -> inputs.transpose(-1, -2)
    field  [B, V, T, H*W] (row-major H x W grid, H = W) -> the same swap of each H x W grid
"""

from __future__ import annotations

import torch

from fabml.errors import ConfigError

SYMMETRIES = ("none", "transpose")


def check_symmetry(symmetry: str, layout: str, grid_shape: list[int], input_kind: str) -> None:
    """One-line ``ConfigError`` unless ``symmetry`` can apply to these data."""
    if symmetry not in SYMMETRIES:
        raise ConfigError(f"data.symmetry={symmetry!r} is unknown; use one of {list(SYMMETRIES)}")
    if symmetry == "none":
        return
    if input_kind != "image":
        raise ConfigError("data.symmetry=transpose needs image inputs (a folder of images); parameter vectors "
                          "have no axes to swap: set data.symmetry=none")
    if layout != "grid" or len(grid_shape) != 2 or grid_shape[0] != grid_shape[1]:
        raise ConfigError(f"data.symmetry=transpose needs data.layout=grid on a square grid_shape, got layout "
                          f"{layout!r} and grid_shape {list(grid_shape)}: set data.symmetry=none")


def transpose_cases(inputs: torch.Tensor, field: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap the axes of the cases where ``flip`` [B] (bool) is set.

    ``inputs`` [B, C, S, S]; ``field`` [B, V, T, M] with M = G*G nodes of a row-major square grid.
    Returns new tensors; the others are unchanged."""
    if inputs.dim() != 4 or inputs.shape[-1] != inputs.shape[-2]:
        raise ConfigError(f"data.symmetry=transpose needs square images, got inputs {list(inputs.shape)}")
    swapped = transpose_grid(field, node_dim=-1)
    mask = flip.to(field.device).view(-1, 1, 1, 1)
    return torch.where(mask, inputs.transpose(-1, -2), inputs), torch.where(mask, swapped, field)


def transpose_grid(field: torch.Tensor, node_dim: int) -> torch.Tensor:
    """The same field with the two axes of its row-major square grid swapped.

    ``field`` has ``M = G*G`` nodes along ``node_dim`` (any other axes are kept); node ``i*G + j``
    goes to ``j*G + i``."""
    node_dim = node_dim % field.dim()
    m = field.shape[node_dim]
    side = int(round(m**0.5))
    if side * side != m:
        raise ConfigError(f"data.symmetry=transpose needs a square grid, got {m} nodes")
    shape = list(field.shape)
    grid = field.reshape(shape[:node_dim] + [side, side] + shape[node_dim + 1:])
    return grid.transpose(node_dim, node_dim + 1).reshape(shape)
