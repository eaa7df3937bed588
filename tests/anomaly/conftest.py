"""A tiny generated inspection set in the per-type layout: Good/ normals, Spot/ defects with masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth striped texture with mild noise, uint8 [size, size]."""
    y, x = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    base = 120 + 40 * np.sin(2 * np.pi * x / 8.0 + phase) + rng.normal(0, 4, (size, size))
    return np.clip(base, 0, 255).astype(np.uint8)


def make_inspection_set(root: Path, n_normal: int = 24, n_defect: int = 6, size: int = 48, seed: int = 0) -> Path:
    """Write ``root/Good/*.png`` and ``root/Spot/*.png`` (+ same-name ``*_mask.png``... as ``masks/``)."""
    rng = np.random.default_rng(seed)
    good, spot, masks = root / "Good", root / "Spot", root / "Spot" / "masks"
    for folder in (good, masks):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        Image.fromarray(_texture(rng, size)).save(good / f"good_{i:03d}.png")
    for i in range(n_defect):
        image = _texture(rng, size)
        mask = np.zeros((size, size), np.uint8)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = size // 8
        mask[cy - r:cy + r, cx - r:cx + r] = 255
        image[mask > 0] = 250
        Image.fromarray(image).save(spot / f"spot_{i:03d}.png")
        Image.fromarray(mask).save(masks / f"spot_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def inspection_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inspection_set(tmp_path_factory.mktemp("inspection"))
