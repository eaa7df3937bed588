"""Colours, sizes and the save helper shared by every fabml figure.

Figures are built on :class:`matplotlib.figure.Figure` directly (never pyplot), so
drawing is independent of the global backend and safe to call from worker threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

DPI = 110

# Wafer map colours (RGB uint8), indexed by die code: 0 no die, 1 good die, 2 failed die.
WAFER_RGB = np.array(
    [
        (255, 255, 255),  # 0: off wafer, white
        (205, 219, 203),  # 1: good die, light grey-green
        (178, 24, 43),  # 2: failed die, dark red
    ],
    dtype=np.uint8,
)

NOISE_COLOR = (0.80, 0.80, 0.80)  # HDBSCAN noise / missing labels, always drawn first
OTHER_COLOR = (0.45, 0.45, 0.45)  # categories merged into "other" beyond the legend limit

# One fixed palette for categories so that cluster k has the same colour in every figure
# (scatter, trend, ...) whichever subset of clusters a figure happens to show.
# tab20b / tab20c hold 5 hues x 4 shades; taking one shade of every hue before the next
# shade keeps neighbouring ids apart. tab20c's grey hue is skipped (reserved for noise).
def _by_shade(name: str, hues: int) -> list[tuple[float, float, float]]:
    colours = colormaps[name].colors  # type: ignore[attr-defined]
    return [tuple(colours[h * 4 + s][:3]) for s in (0, 2, 1, 3) for h in range(hues)]


PALETTE: list[tuple[float, float, float]] = (
    [tuple(c[:3]) for c in colormaps["tab10"].colors]  # type: ignore[attr-defined]
    + _by_shade("tab20b", 5)
    + _by_shade("tab20c", 4)
)  # 46 colours

NOISE_NAMES = {"-1", "noise"}


def as_int(label: object) -> int | None:
    """The label as an int when it is an integer or an integral float (3.0), else None."""
    if isinstance(label, (bool, np.bool_)):
        return None
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return int(label)
    return None


def is_noise(label: Hashable) -> bool:
    """True for the HDBSCAN noise label (-1, -1.0, "-1" or "noise", any case)."""
    number = as_int(label)
    if number is not None:
        return number == -1
    return str(label).strip().lower() in NOISE_NAMES


def is_missing(label: object) -> bool:
    """True for None, NaN, NaT and pd.NA (an unlabelled item)."""
    result = pd.isna(label)
    return isinstance(result, (bool, np.bool_)) and bool(result)


def sort_categories(labels: list[Hashable]) -> list[Hashable]:
    """Sort category labels numerically when all are integer-valued, else as strings."""
    if all(as_int(x) is not None for x in labels):
        return sorted(labels, key=lambda x: as_int(x))  # type: ignore[arg-type, return-value]
    return sorted(labels, key=str)


def category_colors(categories: list[Hashable]) -> dict[Hashable, tuple[float, float, float]]:
    """Colour per category: integer id k -> PALETTE[k mod len]; strings by sorted position.

    Noise (-1) gets :data:`NOISE_COLOR`. Integer ids map to the same colour in every
    figure; string labels are coloured by their rank among the given categories.
    """
    colours: dict[Hashable, tuple[float, float, float]] = {}
    others = [c for c in categories if not is_noise(c)]
    ids = [as_int(c) for c in others]
    all_ids = all(i is not None and i >= 0 for i in ids)
    for rank, cat in enumerate(sort_categories(others)):
        idx = as_int(cat) if all_ids else rank
        colours[cat] = PALETTE[idx % len(PALETTE)]  # type: ignore[operator]
    for cat in categories:
        if is_noise(cat):
            colours[cat] = NOISE_COLOR
    return colours


def category_name(label: Hashable) -> str:
    """Display name of a category: "noise" for -1, "3" for 3 or 3.0, else the label as text."""
    if is_noise(label):
        return "noise"
    number = as_int(label)
    return str(number) if number is not None else str(label)


def shorten(text: str, width: int) -> str:
    """Cut every line of ``text`` to ``width`` characters, marking cuts with an ellipsis."""
    lines = str(text).splitlines() or [""]
    return "\n".join(ln if len(ln) <= width else ln[: max(width - 1, 1)] + "\u2026" for ln in lines)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI`, create the folder, release the figure."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png", facecolor="white")
    fig.clear()
    return out
