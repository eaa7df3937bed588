"""Generated golden-template pairs: printed-board-like layouts, their golden images and misaligned,
re-lit, noisy test images with and without defects (boxes with a type).

Each *layout* is a different random arrangement (seeded) of Manhattan traces (3-4 px wide, some in
parallel buses), square pads at trace ends and vias (a copper ring round a dark drill hole) on a
textured substrate, 1-channel (grayscale). Per layout, one golden image (the layout seen straight,
with mild sensor noise) and several test images: defect-free copies and defective copies. Every
test image sees the layout through a small rigid misalignment (a :class:`RigidTransform`:
translation uniform in ``[-max_shift, max_shift]`` px per axis, rotation uniform in
``[-max_rotation, max_rotation]`` degrees about the image centre), an illumination change
(``gain`` in [0.85, 1.15], ``offset`` in [-15, 15] grey levels and a linear gradient of up to
+-12 grey levels across the image in a random direction) and Gaussian sensor noise (``noise``
grey levels), then is rounded to uint8. The layout is drawn on a canvas larger than the image,
so a shifted or rotated view shows real content at its borders, as a camera would.

Defect kinds (``DEFECT_KINDS``), drawn in the layout before the view is taken:

==============  ===============================================================================
open            a gap 3-5 px long cut across a trace
short           a copper bridge (2-3 px wide) from a trace to the nearest other conductor 3-14 px away
spur            a copper stub 3-5 px long and 2-3 px wide sticking out of a trace, touching nothing
missing_pad     a pad erased (substrate where the pad was)
spot            a dark or bright particle (10 or 245 grey levels), an ellipse of 2-4 px radii, anywhere
==============  ===============================================================================

A defect's box is the bounding rectangle of the layout pixels it changed, mapped through the test
image's transform (the bounding box of the four mapped corners), so it is given in pixels of the
test image as saved, in the :class:`fabml.data.annotations.Box` convention ``[x1, x2) x [y1, y2)``
(written rounded outwards to integers).

Folder written by :func:`make_template_pairs` (all paths in ``pairs.csv`` relative to ``root``)::

    root/golden/layout_000.png            one golden image per layout
    root/test/layout_000_00.png           test images: <layout>_<k>, k = 00, 01, ...
    root/boxes/layout_000_02.txt          defective images only: "x1 y1 x2 y2 type" per line
    root/pairs.csv                        image,reference,label,defects,boxes,dx,dy,angle_deg,gain,offset

``label`` is 1 for a defective image; ``defects`` the types joined by ``;``; ``dx, dy, angle_deg``
the true reference -> test transform; ``gain, offset`` the illumination change.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from fabml.data.alignment import RigidTransform
from fabml.data.annotations import Box
from fabml.errors import ConfigError

DEFECT_KINDS = ("open", "short", "spur", "missing_pad", "spot")
_SS = 4  # supersampling of the layout drawing (anti-aliased edges)
_SUBSTRATE, _COPPER, _DRILL = 60.0, 170.0, 25.0


@dataclass
class _Layout:
    """One board drawing on a canvas of ``side`` px (supersampled by ``_SS``)."""

    side: int
    copper: np.ndarray  # bool [side*SS, side*SS]
    drill: np.ndarray  # bool [side*SS, side*SS]
    segments: list[tuple[float, float, float, float, float]]  # x0, y0, x1, y1, width (canvas px)
    pads: list[tuple[float, float, float]]  # cx, cy, half side (canvas px)
    texture: np.ndarray  # float [side, side]: substrate texture
    grain: np.ndarray  # float [side, side]: copper texture


@dataclass
class TemplateSample:
    """One test image: ``image`` uint8 ``[H, W]`` as saved; ``clean`` uint8 ``[H, W]``: the same view
    (same transform, light and noise) without its defects; ``boxes`` in test-image pixels;
    ``transform``: the true reference -> test mapping; ``gain``/``offset``: the light change."""

    name: str
    layout: str
    image: np.ndarray
    clean: np.ndarray
    boxes: list[Box]
    transform: RigidTransform
    gain: float
    offset: float

    @property
    def label(self) -> int:
        """1 when the image holds a defect."""
        return int(bool(self.boxes))


@dataclass
class TemplatePairSet:
    """``goldens``: layout name -> uint8 ``[H, W]`` golden image; ``samples``: every test image."""

    goldens: dict[str, np.ndarray] = field(default_factory=dict)
    samples: list[TemplateSample] = field(default_factory=list)


def _rect(draw: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, fill: int) -> None:
    draw.rectangle([x0 * _SS, y0 * _SS, x1 * _SS - 1, y1 * _SS - 1], fill=fill)


def _texture(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Substrate texture (smooth blotches + a fine glass-weave pattern) and copper grain, float [side, side]."""
    yy, xx = np.mgrid[0:side, 0:side]
    blotch = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), 3.0)
    blotch *= 6.0 / (blotch.std() + 1e-9)
    period, phase = rng.uniform(5, 9), rng.uniform(0, 2 * np.pi, 2)
    weave = 3.0 * np.sin(2 * np.pi * xx / period + phase[0]) * np.sin(2 * np.pi * yy / period + phase[1])
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), 1.5)
    return blotch + weave, grain * 4.0 / (grain.std() + 1e-9)


def _make_layout(rng: np.random.Generator, side: int, pad: int) -> _Layout:
    """A random board drawing: a bus of parallel traces, Manhattan traces with pads, vias."""
    img = Image.new("L", (side * _SS, side * _SS), 0)
    drill = Image.new("L", (side * _SS, side * _SS), 0)
    draw, ddraw = ImageDraw.Draw(img), ImageDraw.Draw(drill)
    segments: list[tuple[float, float, float, float, float]] = []
    pads: list[tuple[float, float, float]] = []

    def segment(x0: float, y0: float, x1: float, y1: float, w: float) -> None:
        xa, xb, ya, yb = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        _rect(draw, xa - w / 2, ya - w / 2, xb + w / 2, yb + w / 2, 255)
        segments.append((x0, y0, x1, y1, w))

    lo, hi = pad + 6, side - pad - 6
    density = max(1.0, ((side - 2 * pad) / 128.0) ** 2)  # element counts grow with the area beyond 128 x 128
    vertical = False
    for _bus in range(int(round(density))):
        # a bus: 3-5 parallel traces, horizontal or vertical, spacing 7-10 px
        n_bus, spacing, w = int(rng.integers(3, 6)), float(rng.integers(7, 11)), float(rng.integers(3, 5))
        start = float(rng.uniform(lo, hi - n_bus * spacing))
        a0, a1 = float(rng.uniform(0, side * 0.3)), float(rng.uniform(side * 0.7, side))
        vertical = bool(rng.integers(0, 2))
        for i in range(n_bus):
            c = start + i * spacing
            segment(*((c, a0, c, a1) if vertical else (a0, c, a1, c)), w)
    # Manhattan traces with pads at both ends
    for _ in range(int(rng.integers(5, 9) * density)):
        w = float(rng.integers(3, 5))
        x, y = (float(v) for v in rng.uniform(lo, hi, 2))
        points = [(x, y)]
        for k in range(int(rng.integers(1, 4))):
            length = float(rng.uniform(12, side * 0.45)) * (1 if rng.integers(0, 2) else -1)
            if (k + int(vertical)) % 2 == 0:
                x = float(np.clip(x + length, pad, side - pad))
            else:
                y = float(np.clip(y + length, pad, side - pad))
            points.append((x, y))
        for (xa, ya), (xb, yb) in zip(points[:-1], points[1:]):
            segment(xa, ya, xb, yb, w)
        for px, py in (points[0], points[-1]):
            half = float(rng.integers(3, 6))
            _rect(draw, px - half, py - half, px + half, py + half, 255)
            pads.append((px, py, half))
    # vias: copper ring, dark drill
    for _ in range(int(rng.integers(3, 7) * density)):
        cx, cy = (float(v) * _SS for v in rng.uniform(lo, hi, 2))
        r_out, r_in = float(rng.uniform(3.5, 5.0)) * _SS, float(rng.uniform(1.5, 2.5)) * _SS
        draw.ellipse([cx - r_out, cy - r_out, cx + r_out, cy + r_out], fill=255)
        ddraw.ellipse([cx - r_in, cy - r_in, cx + r_in, cy + r_in], fill=255)
    texture, grain = _texture(rng, side)
    return _Layout(side, np.asarray(img) > 0, np.asarray(drill) > 0, segments, pads, texture, grain)


def _down(mask: np.ndarray) -> np.ndarray:
    """Area fraction per canvas pixel of a supersampled bool mask, float [side, side]."""
    s = mask.shape[0] // _SS
    return mask.reshape(s, _SS, s, _SS).mean(axis=(1, 3))


def _render(layout: _Layout, copper: np.ndarray, particle: np.ndarray, particle_level: float) -> np.ndarray:
    """Canvas intensities (float [side, side], grey levels) of the drawing before view and light."""
    cu, dr, pa = _down(copper), _down(layout.drill), _down(particle)
    base = _SUBSTRATE + layout.texture
    out = base + cu * (_COPPER + layout.grain - base)
    out = out + dr * (_DRILL - out)
    return out + pa * (particle_level - out)


def _free(copper: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> bool:
    """True when the canvas rectangle holds no copper (supersampled test)."""
    r0, r1 = int(math.floor(min(y0, y1) * _SS)), int(math.ceil(max(y0, y1) * _SS))
    c0, c1 = int(math.floor(min(x0, x1) * _SS)), int(math.ceil(max(x0, x1) * _SS))
    if r0 < 0 or c0 < 0 or r1 > copper.shape[0] or c1 > copper.shape[1]:
        return False
    return not copper[r0:r1, c0:c1].any()


def _point_on(seg: tuple[float, float, float, float, float], rng: np.random.Generator,
              box: tuple[float, float]) -> tuple[float, float, bool] | None:
    """A random point of the segment's centre line inside ``box`` = (lo, hi) on both axes, and
    whether the segment is horizontal; None when no such point exists."""
    x0, y0, x1, y1, _ = seg
    lo, hi = box
    horizontal = abs(y1 - y0) < 1e-9
    if horizontal:
        a, b = max(min(x0, x1), lo), min(max(x0, x1), hi)
        if b - a < 4 or not lo <= y0 <= hi:
            return None
        return float(rng.uniform(a + 2, b - 2)), y0, True
    a, b = max(min(y0, y1), lo), min(max(y0, y1), hi)
    if b - a < 4 or not lo <= x0 <= hi:
        return None
    return x0, float(rng.uniform(a + 2, b - 2)), False


def _add_defect(rng: np.random.Generator, layout: _Layout, copper: np.ndarray, particle: np.ndarray,
                kind: str, box: tuple[float, float]) -> bool:
    """Draw one defect of ``kind`` into ``copper`` / ``particle`` (supersampled bool, in place) with its
    centre inside the canvas square ``box`` = (lo, hi); False when this try found no place for it."""
    img = Image.fromarray(copper.astype(np.uint8) * 255)
    draw = ImageDraw.Draw(img)
    if kind == "spot":
        cx, cy = (float(v) for v in rng.uniform(box[0], box[1], 2))
        rx, ry = (float(v) * _SS for v in rng.uniform(2.0, 4.0, 2))
        pim = Image.fromarray(particle.astype(np.uint8) * 255)
        ImageDraw.Draw(pim).ellipse([cx * _SS - rx, cy * _SS - ry, cx * _SS + rx, cy * _SS + ry], fill=255)
        particle |= np.asarray(pim) > 0
        return True
    if kind == "missing_pad":
        inside = [p for p in layout.pads if box[0] <= p[0] <= box[1] and box[0] <= p[1] <= box[1]]
        if not inside:
            return False
        px, py, half = inside[int(rng.integers(len(inside)))]
        _rect(draw, px - half, py - half, px + half, py + half, 0)
        copper[:] = np.asarray(img) > 0
        return True
    seg = layout.segments[int(rng.integers(len(layout.segments)))]
    found = _point_on(seg, rng, box)
    if found is None:
        return False
    x, y, horizontal = found
    w = seg[4]
    if kind == "open":
        gap = float(rng.uniform(3, 5))
        if horizontal:
            _rect(draw, x - gap / 2, y - w / 2 - 1, x + gap / 2, y + w / 2 + 1, 0)
        else:
            _rect(draw, x - w / 2 - 1, y - gap / 2, x + w / 2 + 1, y + gap / 2, 0)
        before = copper.copy()
        copper[:] = np.asarray(img) > 0
        return bool((before != copper).any())
    side = 1.0 if rng.integers(0, 2) else -1.0
    width = float(rng.uniform(2, 3))
    if kind == "spur":
        length = float(rng.uniform(3, 5))
        if horizontal:
            e = y + side * w / 2
            x0, y0, x1, y1 = x - width / 2, min(e, e + side * length), x + width / 2, max(e, e + side * length)
            clear = _free(copper, x0 - 2, y0 - (2 if side < 0 else 0), x1 + 2, y1 + (2 if side > 0 else 0))
        else:
            e = x + side * w / 2
            x0, y0, x1, y1 = min(e, e + side * length), y - width / 2, max(e, e + side * length), y + width / 2
            clear = _free(copper, x0 - (2 if side < 0 else 0), y0 - 2, x1 + (2 if side > 0 else 0), y1 + 2)
        if not clear:
            return False
        _rect(draw, x0, y0, x1, y1, 255)
        copper[:] = np.asarray(img) > 0
        return True
    if kind == "short":
        e = (y if horizontal else x) + side * w / 2
        for reach in np.arange(1.0, 15.0, 0.25):
            probe = e + side * reach
            rr, cc = (int(probe * _SS), int(x * _SS)) if horizontal else (int(y * _SS), int(probe * _SS))
            if not (0 <= rr < copper.shape[0] and 0 <= cc < copper.shape[1]):
                return False
            if copper[rr, cc]:
                if reach < 3:
                    return False
                a, b = sorted((e, probe + side * 0.5))
                if horizontal:
                    _rect(draw, x - width / 2, a, x + width / 2, b, 255)
                else:
                    _rect(draw, a, y - width / 2, b, y + width / 2, 255)
                copper[:] = np.asarray(img) > 0
                return True
        return False
    raise ConfigError(f"unknown defect kind {kind!r}; choose from {', '.join(DEFECT_KINDS)}")


def _view(canvas: np.ndarray, pad: int, size: int, transform: RigidTransform) -> np.ndarray:
    """The test camera's view ``[size, size]`` of the canvas: test(p) = golden(T^-1 p)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    x, y = transform.inverse().apply(xx, yy, (size, size))
    return ndimage.map_coordinates(canvas, [y + pad - 0.5, x + pad - 0.5], order=3, mode="nearest")


def _light(rng: np.random.Generator, size: int) -> tuple[float, float, np.ndarray]:
    """(gain, offset, gradient [size, size]) of one illumination change."""
    gain, offset = float(rng.uniform(0.85, 1.15)), float(rng.uniform(-15, 15))
    phi, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 12)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5 - size / 2) / size
    return gain, offset, amp * 2 * (xx * np.cos(phi) + yy * np.sin(phi))


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _mapped_box(changed: np.ndarray, pad: int, size: int, transform: RigidTransform, kind: str) -> Box:
    """The test-image box of the supersampled changed-pixel mask (canvas), rounded outwards, clipped."""
    rows, cols = np.nonzero(changed)
    x0, x1 = cols.min() / _SS - pad, (cols.max() + 1) / _SS - pad
    y0, y1 = rows.min() / _SS - pad, (rows.max() + 1) / _SS - pad
    xs, ys = transform.apply(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]), (size, size))
    return Box(float(max(0, math.floor(xs.min()))), float(max(0, math.floor(ys.min()))),
               float(min(size, math.ceil(xs.max()))), float(min(size, math.ceil(ys.max()))), kind)


def generate_template_pairs(n_layouts: int = 4, n_good: int = 2, n_defect: int = 3, size: int = 128,
                            max_shift: float = 3.0, max_rotation: float = 1.0, noise: float = 3.0,
                            golden_noise: float = 1.5, max_defects: int = 1,
                            defect_kinds: tuple[str, ...] = DEFECT_KINDS, seed: int = 0) -> TemplatePairSet:
    """The set in memory (see the module docstring); the same arguments give the same arrays.

    Per layout ``n_good`` defect-free and ``n_defect`` defective test images (1 to ``max_defects``
    defects each, kinds drawn from ``defect_kinds``), all ``size x size`` uint8.
    """
    if n_layouts < 1 or n_good < 0 or n_defect < 0 or n_good + n_defect < 1:
        raise ConfigError("template pairs need n_layouts >= 1 and at least one test image per layout "
                          f"(got n_layouts={n_layouts}, n_good={n_good}, n_defect={n_defect})")
    if size < 48:
        raise ConfigError(f"template pairs need size >= 48 px to hold a layout, got {size}")
    if max_shift < 0 or max_rotation < 0 or noise < 0 or golden_noise < 0 or max_defects < 1:
        raise ConfigError("max_shift, max_rotation, noise and golden_noise must be >= 0 and max_defects >= 1")
    unknown = [k for k in defect_kinds if k not in DEFECT_KINDS]
    if unknown or not defect_kinds:
        raise ConfigError(f"unknown defect kinds {unknown or '(none given)'}; choose from {', '.join(DEFECT_KINDS)}")
    rng = np.random.default_rng(seed)
    pad = int(math.ceil(max_shift + size * math.sin(math.radians(max_rotation)) + 4))
    side = size + 2 * pad
    out = TemplatePairSet()
    for li in range(n_layouts):
        name = f"layout_{li:03d}"
        layout = _make_layout(rng, side, pad)
        no_particle = np.zeros_like(layout.copper)
        clean_canvas = _render(layout, layout.copper, no_particle, 0.0)
        out.goldens[name] = _to_u8(clean_canvas[pad:pad + size, pad:pad + size]
                                   + rng.normal(0, golden_noise, (size, size)))
        margin = max_shift + 10  # defects stay well inside every view
        inner = (pad + margin, pad + size - margin)
        for k in range(n_good + n_defect):
            copper, particle = layout.copper.copy(), no_particle.copy()
            defects: list[tuple[str, np.ndarray]] = []
            if k >= n_good:
                for _ in range(int(rng.integers(1, max_defects + 1))):
                    kind = str(defect_kinds[int(rng.integers(len(defect_kinds)))])
                    for attempt in range(400):  # the kind is kept for 200 tries, then any kind may be drawn
                        if attempt >= 200:
                            kind = str(defect_kinds[int(rng.integers(len(defect_kinds)))])
                        before_cu, before_pa = copper.copy(), particle.copy()
                        if _add_defect(rng, layout, copper, particle, kind, inner):
                            defects.append((kind, (before_cu != copper) | (before_pa != particle)))
                            break
                        copper[:], particle[:] = before_cu, before_pa
            level = float(rng.choice([10.0, 245.0]))
            canvas = _render(layout, copper, particle, level)
            transform = RigidTransform(float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift)),
                                       float(rng.uniform(-max_rotation, max_rotation)))
            gain, offset, gradient = _light(rng, size)
            sensor = rng.normal(0, noise, (size, size))

            def shot(c: np.ndarray) -> np.ndarray:
                return _to_u8(gain * _view(c, pad, size, transform) + offset + gradient + sensor)

            boxes = [_mapped_box(changed, pad, size, transform, kind) for kind, changed in defects]
            out.samples.append(TemplateSample(f"{name}_{k:02d}", name, shot(canvas), shot(clean_canvas),
                                              boxes, transform, gain, offset))
    return out


def make_template_pairs(root: str | Path, **kwargs: object) -> Path:
    """Write the set of :func:`generate_template_pairs` (same keyword arguments) under ``root`` as
    ``golden/``, ``test/``, ``boxes/`` and ``pairs.csv`` (module docstring); returns ``root``."""
    root = Path(root)
    data = generate_template_pairs(**kwargs)  # type: ignore[arg-type]
    for sub in ("golden", "test", "boxes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, image in data.goldens.items():
        Image.fromarray(image).save(root / "golden" / f"{name}.png")
    rows = []
    for s in data.samples:
        Image.fromarray(s.image).save(root / "test" / f"{s.name}.png")
        boxes = ""
        if s.boxes:
            boxes = f"boxes/{s.name}.txt"
            lines = [f"{b.x1:g} {b.y1:g} {b.x2:g} {b.y2:g} {b.type}" for b in s.boxes]
            (root / boxes).write_text("\n".join(lines) + "\n")
        t = s.transform
        rows.append([f"test/{s.name}.png", f"golden/{s.layout}.png", s.label, ";".join(b.type for b in s.boxes),
                     boxes, f"{t.dx:.4f}", f"{t.dy:.4f}", f"{t.angle_deg:.4f}", f"{s.gain:.4f}", f"{s.offset:.4f}"])
    with open(root / "pairs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "reference", "label", "defects", "boxes", "dx", "dy", "angle_deg", "gain", "offset"])
        writer.writerows(rows)
    return root
