"""Synthetic wafer maps with the WM-811K failure-pattern families (demo data and tests).

Each map is a round wafer on a die grid of random size (rows in ``grid_range``, columns within
about ±12 % of the rows, as on real maps), with background failures, a few untested holes on
some wafers, and one family pattern at a random position, size and angle. Geometry is drawn in
wafer-normalised coordinates (the wafer is the unit disc), so a pattern looks the same on any
grid. Calibrated by eye against WM-811K maps (Wu et al., 2015).

Mixed-pattern maps: a family may be a joined label such as ``"Center+Scratch"`` (separator
``label_separator``, default ``"+"``); each pattern is drawn independently and a die fails with the
largest of their failure probabilities (an overlay). :data:`MIXED_FAMILIES` holds the 13 two-pattern
and 12 three-pattern mixtures of the local patterns that do not sit on the same place (no
Center+Donut, no Edge-Loc+Edge-Ring), the mixture types of the MixedWM38 data set.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fabml.data.wafer_io import WaferMap
from fabml.data.wafer_labels import LABEL_SEPARATOR, check_separator, join_patterns
from fabml.errors import ConfigError

FAMILIES = ("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "None")
MIXABLE = ("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Scratch")
"""Patterns that overlay into mixed maps (Near-full and Random cover the whole wafer and hide the others)."""
_EXCLUSIVE = (frozenset({"Center", "Donut"}), frozenset({"Edge-Loc", "Edge-Ring"}))
_LOT_SIZE = (20, 26)  # wafers per lot, drawn in [20, 25]: a FOUP holds 25


@dataclass
class _Grid:
    """Die-centre coordinates of one wafer: x, y in the unit disc's frame, r, theta polar,
    edge = distance to the wafer edge in dies, radius = wafer radius in dies."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    theta: np.ndarray
    edge: np.ndarray
    wafer: np.ndarray
    radius: float


def _make_grid(rows: int, cols: int) -> _Grid:
    y = ((np.arange(rows) + 0.5) / rows * 2 - 1)[:, None] * np.ones((1, cols))
    x = ((np.arange(cols) + 0.5) / cols * 2 - 1)[None, :] * np.ones((rows, 1))
    r = np.hypot(x, y)
    radius = (rows + cols) / 4
    # Real maps fill their grid: the edge dies reach about half a die past the inscribed circle.
    rim = 1 + 0.6 / radius
    return _Grid(x, y, r, np.arctan2(y, x), (rim - r) * radius, r <= rim, radius)


def _soft_inside(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, a logistic ramp of width ``softness`` between."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_distance / softness, -50, 50)))


def _blob(g: _Grid, cx: float, cy: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (normalised units) to an irregular blob: an ellipse with a wobbly outline."""
    angle = rng.uniform(0, np.pi)
    dx, dy = g.x - cx, g.y - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / rng.uniform(0.6, 1.0)
    phi = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(0, 0.18) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return np.hypot(u, v) - size * wobble


def _center(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    cx, cy = rng.normal(0, 0.06, size=2)
    size = max(rng.uniform(0.14, 0.35), 2.5 / g.radius)  # at least ~5 dies across on small grids
    return rng.uniform(0.75, 0.97) * _soft_inside(_blob(g, cx, cy, size, rng), 0.04)


def _donut(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    cx, cy = rng.normal(0, 0.04, size=2)
    r = np.hypot(g.x - cx, g.y - cy)
    ring = np.abs(r - rng.uniform(0.32, 0.55)) - rng.uniform(0.08, 0.17)
    prob = rng.uniform(0.65, 0.92) * _soft_inside(ring, 0.04)
    if rng.random() < 0.35:  # an open donut: one sector is missing
        gap = np.abs(np.angle(np.exp(1j * (g.theta - rng.uniform(-np.pi, np.pi)))))
        prob *= _soft_inside(rng.uniform(0.3, 0.8) - gap, 0.1)
    return prob


def _edge_ring(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    width = rng.uniform(1.0, 2.8)  # dies
    prob = rng.uniform(0.75, 0.98) * _soft_inside(g.edge - width, 0.3)
    if rng.random() < 0.3:  # a thinner, weaker side, as on many real rings
        side = np.cos(g.theta - rng.uniform(-np.pi, np.pi))
        prob *= 0.75 + 0.25 * side
    return prob


def _edge_loc(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    phi = rng.uniform(-np.pi, np.pi)
    density = rng.uniform(0.7, 0.95)
    if rng.random() < 0.5:  # a blob cut by the wafer edge
        size = max(rng.uniform(0.16, 0.36), 3.0 / g.radius)
        return density * _soft_inside(_blob(g, np.cos(phi), np.sin(phi), size, rng), 0.04)
    # an arc of the edge band, a few dies deep and 30-120 degrees long
    depth, half_angle = rng.uniform(2.0, 4.5), rng.uniform(0.26, 1.05)
    off_angle = np.abs(np.angle(np.exp(1j * (g.theta - phi))))
    return density * _soft_inside(g.edge - depth, 0.4) * _soft_inside(off_angle - half_angle, 0.08)


def _loc(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    size = max(rng.uniform(0.08, 0.2), 2.0 / g.radius)  # at least ~4 dies across
    rho, phi = rng.uniform(0.15, 0.82 - size), rng.uniform(-np.pi, np.pi)
    blob = _blob(g, rho * np.cos(phi), rho * np.sin(phi), size, rng)
    return rng.uniform(0.7, 0.95) * _soft_inside(blob, 0.03)


def _near_full(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    prob = np.full(g.r.shape, rng.uniform(0.8, 0.97))
    if rng.random() < 0.5:  # a surviving good patch
        rho, phi = rng.uniform(0, 0.8), rng.uniform(-np.pi, np.pi)
        patch = _soft_inside(_blob(g, rho * np.cos(phi), rho * np.sin(phi), rng.uniform(0.1, 0.3), rng), 0.05)
        prob *= 1 - 0.7 * patch
    return prob


def _random(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    return np.full(g.r.shape, rng.uniform(0.25, 0.6))


def _trace(g: _Grid, start: np.ndarray, heading: float, length: float, curl: float) -> list[tuple[int, int]]:
    """Dies [row, col] under a path of ``length`` dies, turning ``curl`` radians per die."""
    rows, cols = g.r.shape
    steps = np.arange(0, length, 0.3)
    headings = heading + curl * steps
    path = start + 0.3 * np.cumsum(np.stack((np.sin(headings), np.cos(headings)), axis=1), axis=0)
    cells = np.rint(path).astype(int)
    keep = (cells[:, 0] >= 0) & (cells[:, 0] < rows) & (cells[:, 1] >= 0) & (cells[:, 1] < cols)
    return [tuple(c) for c in cells[keep]]


def _scratch(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    rows, cols = g.r.shape
    prob = np.zeros(g.r.shape)
    for _ in range(20):  # redraw until the line crosses enough of the wafer
        rho, phi = rng.uniform(0, 0.6), rng.uniform(-np.pi, np.pi)
        start = np.array([(rho * np.sin(phi) + 1) / 2 * rows, (rho * np.cos(phi) + 1) / 2 * cols])
        length = rng.uniform(0.3, 0.9) * min(rows, cols)
        heading, curl = rng.uniform(-np.pi, np.pi), rng.uniform(-1.2, 1.2) / length
        cells = _trace(g, start, heading, length, curl)
        if rng.random() < 0.35 and cells:  # a kinked scratch: a second leg from the end
            end = np.asarray(cells[-1], dtype=float)
            turn = rng.choice([-1, 1]) * rng.uniform(0.3, 1.0)
            cells += _trace(g, end, heading + curl * length + turn, rng.uniform(0.2, 0.5) * length, 0.0)
        cells = [c for c in set(cells) if g.wafer[c]]
        if len(cells) >= 6:
            break
    kept = rng.random(len(cells)) < rng.uniform(0.8, 1.0)  # real scratches are broken lines
    for cell in np.asarray(cells)[kept]:
        prob[tuple(cell)] = 1.0
    return prob


def _none(g: _Grid, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(g.r.shape)


_PATTERNS: dict[str, Callable[[_Grid, np.random.Generator], np.ndarray]] = {
    "Center": _center,
    "Donut": _donut,
    "Edge-Loc": _edge_loc,
    "Edge-Ring": _edge_ring,
    "Loc": _loc,
    "Near-full": _near_full,
    "Random": _random,
    "Scratch": _scratch,
    "None": _none,
}


def mixed_families(
    sizes: Sequence[int] = (2, 3), patterns: Sequence[str] = MIXABLE, separator: str = LABEL_SEPARATOR
) -> tuple[str, ...]:
    """Joined labels of every mixture of ``sizes`` patterns from ``patterns``, except those holding both
    Center and Donut or both Edge-Loc and Edge-Ring (they occupy the same part of the wafer); sorted."""
    check_separator(separator)
    if any(k < 2 for k in sizes):
        raise ConfigError(f"mixture sizes must be >= 2 patterns, got {list(sizes)}")
    combos = [
        c for k in sizes for c in itertools.combinations(sorted(set(patterns)), k)
        if not any(pair <= set(c) for pair in _EXCLUSIVE)
    ]
    return tuple(sorted(separator.join(c) for c in combos))


MIXED_FAMILIES = mixed_families()
"""The 25 default mixtures (13 of two patterns, 12 of three), joined with ``+``."""


def family_patterns(family: str, separator: str = LABEL_SEPARATOR) -> list[str]:
    """The patterns of a (possibly joined) family, canonical order; ``["None"]`` for no pattern."""
    return join_patterns(family.split(separator), separator).split(separator)


def _grid_size(rng: np.random.Generator, grid_range: tuple[int, int]) -> tuple[int, int]:
    low, high = grid_range
    rows = int(rng.integers(low, high + 1))
    cols = int(np.clip(round(rows * np.exp(rng.normal(0, 0.08))), low, high))
    return (rows, cols) if rng.random() < 0.5 else (cols, rows)


def draw_wafer(
    family: str, rows: int, cols: int, noise: float, rng: np.random.Generator, separator: str = LABEL_SEPARATOR
) -> np.ndarray:
    """One map [rows, cols] uint8 (0 no die, 1 good, 2 failed) of ``family`` with background rate ``noise``.

    A joined family (``"Center+Scratch"``) overlays its patterns: failure probability = max over patterns.
    """
    g = _make_grid(rows, cols)
    prob = np.zeros(g.r.shape)
    for pattern in family_patterns(family, separator):
        if pattern not in _PATTERNS:
            raise ConfigError(
                f"unknown wafer pattern {pattern!r} in family {family!r}; choose from {', '.join(FAMILIES)}"
            )
        prob = np.maximum(prob, _PATTERNS[pattern](g, rng))
    background = noise * np.where(g.edge < 1.5, 2.0, 1.0)  # edge dies fail more often
    failed = rng.random(g.r.shape) < np.maximum(prob, background)
    dies = np.where(g.wafer, np.where(failed, 2, 1), 0).astype(np.uint8)
    if rng.random() < 0.2:  # a few untested dies inside the wafer, as on real maps
        holes = g.wafer & (g.edge > 1) & (rng.random(g.r.shape) < rng.uniform(0, 0.01))
        dies[holes] = 0
    return dies


def _check(
    n: int, families: Sequence[str], grid_range: tuple[int, int], noise: tuple[float, float], days: int, separator: str
) -> None:
    if n < 1:
        raise ConfigError(f"number of synthetic maps must be >= 1, got {n}")
    check_separator(separator)
    unknown = [f for f in families if any(p not in _PATTERNS for p in family_patterns(f, separator))]
    if unknown or not families:
        raise ConfigError(f"unknown wafer families {unknown or '(none given)'}; choose from {', '.join(FAMILIES)}")
    if not (12 <= grid_range[0] <= grid_range[1]):
        raise ConfigError(f"grid_range must be (low, high) with 12 <= low <= high, got {tuple(grid_range)}")
    if not (0 <= noise[0] <= noise[1] <= 1):
        raise ConfigError(f"noise must be (low, high) with 0 <= low <= high <= 1, got {tuple(noise)}")
    if days < 1:
        raise ConfigError(f"days must be >= 1, got {days}")


def generate_wafer_maps(
    n: int,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    grid_range: tuple[int, int] = (25, 60),
    noise: tuple[float, float] = (0.0, 0.03),
    start_date: str = "2026-01-01",
    days: int = 90,
    label_separator: str = LABEL_SEPARATOR,
) -> list[WaferMap]:
    """``n`` synthetic maps, families balanced (counts differ by at most one) in shuffled order.

    A family may be a joined label (``"Center+Scratch"``, parts separated by ``label_separator``):
    those maps overlay two or three patterns; ``families=FAMILIES + MIXED_FAMILIES`` mixes single
    and mixed maps. Meta: id ``syn-00001``.., lot ``LOT-01``.. (20-25 wafers per lot, as in a FOUP),
    date (ISO; one date per lot, lots spread evenly over ``days`` days from ``start_date``),
    label = the family's canonical joined label (sorted patterns), source ``synthetic:n:seed``.
    Deterministic for a given seed and arguments.
    """
    _check(n, families, grid_range, noise, days, label_separator)
    try:
        start = dt.date.fromisoformat(start_date)
    except ValueError as exc:
        raise ConfigError(f"start_date must be an ISO date like 2026-01-01, got {start_date!r}") from exc
    rng = np.random.default_rng(seed)
    labels = np.resize(np.asarray(families, dtype=object), n)
    rng.shuffle(labels)
    lot_of = np.repeat(np.arange(n), rng.integers(*_LOT_SIZE, size=n))[:n]
    n_lots = int(lot_of[-1]) + 1
    width = max(5, len(str(n)))
    maps = []
    for i, family in enumerate(labels):
        rows, cols = _grid_size(rng, grid_range)
        dies = draw_wafer(str(family), rows, cols, rng.uniform(*noise), rng, label_separator)
        lot = int(lot_of[i])
        meta = {
            "id": f"syn-{i + 1:0{width}d}",
            "lot": f"LOT-{lot + 1:02d}",
            "date": (start + dt.timedelta(days=lot * days // n_lots)).isoformat(),
            "label": join_patterns(str(family).split(label_separator), label_separator),
            "source": f"synthetic:{n}:{seed}",
        }
        maps.append(WaferMap(dies, meta))
    return maps
