"""Generated images for the retrieval job: coloured shapes as classes, objects with IDs, several photos each.

``make_shape_set(out)`` writes ``OUT/<class>/<class>-<NN>_<seq>.png`` (the retrieval layout: folder =
class, everything before the last ``_`` = object ID). A class is a shape (circle, square, triangle,
cross, ring, bar, ...) in a colour family; an object is one instance with its own hue, size and
aspect; each photo of it moves, rotates and rescales the object a little on a textured background
with pixel noise, so photos of one object are alike and objects of one class vary more.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fabml.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "diamond", "star")
HUES = (0.0, 0.33, 0.6, 0.12, 0.8, 0.5, 0.95, 0.2)  # class colour families (HSV hue)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float, aspect: float) -> list[tuple[float, float]]:
    """Corner points of a polygon shape of radius ``r`` rotated by ``angle`` (radians)."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "diamond":
        pts = [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5 - math.pi / 2),
                (1.0 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5 - math.pi / 2)) for i in range(10)]
    elif shape == "bar":
        pts = [(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)]
    else:  # cross
        w = 0.3
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * aspect * c - y * s), cy + r * (x * aspect * s + y * c)) for x, y in pts]


def draw_shape(size: int, shape: str, rgb: tuple[int, int, int], rng: np.random.Generator, radius: float,
               aspect: float, jitter: float = 1.0) -> Image.Image:
    """One RGB photo ``size x size`` of a shape of ``radius`` (fraction of the side) on a noisy background."""
    base = rng.integers(150, 230)
    background = np.clip(rng.normal(base, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size * jitter
    cy = size / 2 + rng.uniform(-0.12, 0.12) * size * jitter
    r = radius * size * (1 + rng.uniform(-0.1, 0.1) * jitter)
    angle = rng.uniform(-0.4, 0.4) * jitter
    if shape in ("circle", "ring"):
        box = [cx - r * aspect, cy - r, cx + r * aspect, cy + r]
        draw.ellipse(box, fill=None if shape == "ring" else rgb, outline=rgb, width=max(2, int(r * 0.35)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle, aspect), fill=rgb)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_shape_set(out: str | Path, n_classes: int = 6, ids_per_class: int = 8, images_per_id: int = 3,
                   size: int = 64, seed: int = 0) -> Path:
    """Write the set (see the module docstring) under ``out`` and return ``out``.

    ``n_classes`` <= 8 shapes; ``ids_per_class`` objects per class, ``images_per_id`` photos per object,
    ``size`` x ``size`` pixels. The same arguments write the same files.
    """
    if not 1 <= n_classes <= len(SHAPES):
        raise ConfigError(f"n_classes={n_classes} must be in 1..{len(SHAPES)}")
    if ids_per_class < 1 or images_per_id < 1 or size < 16:
        raise ConfigError("ids_per_class and images_per_id must be >= 1 and size >= 16")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        shape = SHAPES[c]
        folder = out / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(ids_per_class):
            hue = (HUES[c] + rng.uniform(-0.05, 0.05)) % 1.0
            rgb = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9)))
            radius, aspect = rng.uniform(0.22, 0.34), rng.uniform(0.8, 1.2)
            for k in range(images_per_id):
                img = draw_shape(size, shape, rgb, rng, radius, aspect)
                img.save(folder / f"{shape}-{i:02d}_{k}.png")
    return out
