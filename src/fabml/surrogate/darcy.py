"""``fabml surrogate import-darcy``: neuraloperator's Darcy-flow ``.pt`` files -> the surrogate job's inputs.

neuraloperator (0.3.0) ships the 2-D Darcy flow data of Li et al. (ICLR 2021) as ``darcy_{train,test}_R.pt``:
a dict ``{"x": [N, R, R] coefficient field (bool or float), "y": [N, R, R] pressure field}``. The surrogate
job reads fields ``[N, T, M, V]`` and one input per case, so each file becomes::

    OUT/fields.npy           float32 [N, 1, R*R, 1]: T = 1 time step, M = R*R nodes in row-major order
                             (train with data.layout=grid, data.grid_shape=[R, R]), V = 1
    OUT/inputs/param_000.png grey R x R image of the coefficient field, min-max scaled over the file to
                             0..255 (a bool field is exactly 0 / 255); the case id is the number in the name
    OUT/darcy.json           the source file, N, R and the coefficient range mapped to 0..255

The ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no code runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fabml.errors import DataError

INPUTS = "inputs"
FIELDS = "fields.npy"


@dataclass
class DarcyImport:
    """What :func:`import_darcy` wrote, and the settings a run on it needs (``overrides``)."""

    fields: Path
    inputs: Path
    n_cases: int
    resolution: int
    overrides: list[str] = field(default_factory=list)


def import_darcy(pt_file: str | Path, out_dir: str | Path) -> DarcyImport:
    """Convert one Darcy ``.pt`` file into ``out_dir`` (see the module docstring)."""
    pt_file, out_dir = Path(pt_file), Path(out_dir)
    if not pt_file.is_file():
        raise DataError(f"Darcy file {pt_file} not found")
    try:
        data = torch.load(pt_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a tensor archive
        raise DataError(f"{pt_file} is not a readable torch file of tensors ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "x" not in data or "y" not in data:
        raise DataError(f"{pt_file} should hold a dict with 'x' (coefficients) and 'y' (pressure); "
                        f"found {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    x = data["x"].float().numpy()
    y = data["y"].float().numpy()
    if x.ndim == 4 and x.shape[1] == 1:  # [N, 1, R, R]
        x = x[:, 0]
    if y.ndim == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if x.ndim != 3 or x.shape != y.shape or x.shape[1] != x.shape[2]:
        raise DataError(f"{pt_file}: x {list(x.shape)} and y {list(y.shape)} should both be [N, R, R]")
    n, res = int(x.shape[0]), int(x.shape[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = out_dir / FIELDS
    np.save(fields, y.reshape(n, 1, res * res, 1).astype(np.float32))
    lo, hi = float(x.min()), float(x.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    images = out_dir / INPUTS
    images.mkdir(exist_ok=True)
    width = max(3, len(str(n - 1)))
    for i in range(n):
        pixels = np.clip(np.rint((x[i] - lo) * scale), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"param_{i:0{width}d}.png")
    (out_dir / "darcy.json").write_text(json.dumps(
        {"source": str(pt_file.resolve()), "cases": n, "resolution": res, "coefficient_range": [lo, hi]}, indent=2),
        encoding="utf-8")
    overrides = ["data.layout=grid", f"data.grid_shape=[{res},{res}]", f"data.image_size={res}",
                 "data.image_channels=1", "conditioner.kind=cnn"]
    return DarcyImport(fields, images, n, res, overrides)
