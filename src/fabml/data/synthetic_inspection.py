"""Generated 1-channel inspection images (a striped panel texture) with spot and scratch defects.

Used by the anomaly demo and the tests: ``root/Good/*.png`` normals, ``root/<Defect>/*.png``
defects with same-name masks in ``root/<Defect>/masks/`` (the per-type layout of
:mod:`fabml.data.anomaly_data`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def panel_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth striped texture with random phase and mild noise, uint8 ``[size, size]``."""
    x = np.arange(size)[None, :].repeat(size, axis=0)
    phase = rng.uniform(0, 2 * np.pi)
    base = 120 + 40 * np.sin(2 * np.pi * x / 8.0 + phase) + rng.normal(0, 4, (size, size))
    return np.clip(base, 0, 255).astype(np.uint8)


def spot_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A square spot of side ``size / 4`` at a random place inside the central half, bool ``[size, size]``."""
    mask = np.zeros((size, size), bool)
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    r = max(1, size // 8)
    mask[cy - r:cy + r, cx - r:cx + r] = True
    return mask


def scratch_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin straight scratch (2-3 px wide) across part of the image, bool ``[size, size]``."""
    mask = np.zeros((size, size), bool)
    y0, y1 = rng.integers(size // 6, 5 * size // 6, 2)
    xs = np.arange(size // 6, 5 * size // 6)
    ys = np.round(y0 + (y1 - y0) * (xs - xs[0]) / max(1, len(xs) - 1)).astype(int)
    width = max(1, size // 40)
    for dy in range(-width, width + 1):
        mask[np.clip(ys + dy, 0, size - 1), xs] = True
    return mask


def make_inspection_set(root: str | Path, n_normal: int = 24, n_defect: int = 6, size: int = 48, seed: int = 0,
                        defect_types: tuple[str, ...] = ("Spot",)) -> Path:
    """Write the set under ``root``: ``n_normal`` good images and ``n_defect`` images of each defect type.

    ``Spot`` = a bright square, ``Scratch`` = a dark thin line.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    good = root / "Good"
    good.mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        Image.fromarray(panel_texture(rng, size)).save(good / f"good_{i:03d}.png")
    for kind in defect_types:
        folder, masks = root / kind, root / kind / "masks"
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            image = panel_texture(rng, size)
            mask = scratch_mask(rng, size) if kind.lower() == "scratch" else spot_mask(rng, size)
            image[mask] = 30 if kind.lower() == "scratch" else 250
            Image.fromarray(image).save(folder / f"{kind.lower()}_{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{kind.lower()}_{i:03d}.png")
    return root
