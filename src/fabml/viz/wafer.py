"""Wafer map figures: map rendering, galleries, cluster galleries, search results.

Every ``plot_*`` function writes one PNG and returns its path. Maps are 2-D arrays
coded 0 = no die, 1 = good die, 2 = failed die, of any size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fabml.errors import DataError
from fabml.viz.style import WAFER_RGB, is_noise, save_figure, shorten, sort_categories

CELL_IN = 1.35  # inches per map cell
CELL_PX = 150  # display pixels per map cell at DPI 110 (used to pool large maps)
TITLE_FONT = 7.5
QUERY_COLOR = "#1f4e9c"


def render_wafer(dies: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """Colour a wafer map.

    Args:
        dies: [H, W] array coded 0 (no die), 1 (good), 2 (failed).
        max_side: when H or W exceeds it, the map is max-pooled by an integer factor
            first so that no failed die disappears when the image is drawn small.

    Returns:
        [H', W', 3] uint8 RGB image (H' = H unless pooled): white / light grey-green / dark red.
    """
    arr = np.asarray(dies)
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"wafer map must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.isin(arr, (0, 1, 2)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1, 2))])[:5].tolist()
        raise DataError(f"wafer map must be coded 0 (no die) / 1 (good) / 2 (failed), found {bad}")
    codes = arr.astype(np.uint8)
    if max_side is not None and max(codes.shape) > max_side:
        codes = _max_pool(codes, math.ceil(max(codes.shape) / max_side))
    return WAFER_RGB[codes]


def _max_pool(codes: np.ndarray, factor: int) -> np.ndarray:
    """Block max over factor x factor tiles (failed > good > none), zero-padded at the edge."""
    h, w = codes.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(codes, ((0, ph), (0, pw)))
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).max(
        axis=(1, 3)
    )


def _draw_map(ax: Axes, dies: np.ndarray, title: str, frame: str | None = None) -> None:
    """Draw one map into ``ax`` without ticks; a coloured frame when ``frame`` is given."""
    ax.imshow(render_wafer(dies, max_side=CELL_PX), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(3)
    if title:
        ax.set_title(shorten(title, 24), fontsize=TITLE_FONT, color=frame or "black", pad=3)


def _blank(ax: Axes, text: str = "") -> None:
    ax.axis("off")
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=TITLE_FONT, color="0.4")


def _title_lines(titles: Sequence[str]) -> int:
    return max((len(str(t).splitlines()) for t in titles), default=0)


def plot_wafer_grid(
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    ncols: int = 8,
    suptitle: str | None = None,
) -> Path:
    """Gallery of wafer maps, ``ncols`` per row, one title (may hold newlines) per map.

    An empty ``maps`` list gives a small figure saying so.
    """
    if len(maps) != len(titles):
        raise ValueError(f"plot_wafer_grid: {len(maps)} maps but {len(titles)} titles")
    if ncols < 1:
        raise ValueError(f"plot_wafer_grid: ncols must be >= 1, got {ncols}")
    n = len(maps)
    cols = max(min(ncols, n), 1)
    rows = max(math.ceil(n / cols), 1)
    title_in = 0.14 * _title_lines(titles)
    height = rows * (CELL_IN + title_in) + (0.4 if suptitle else 0.0)
    fig = Figure(figsize=(max(cols * CELL_IN, 2.5), height), layout="constrained")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _draw_map(ax, maps[i], str(titles[i]))
        else:
            _blank(ax, "no maps" if n == 0 else "")
    return save_figure(fig, path)


def _cluster_order(keys: Sequence[Hashable]) -> list[Hashable]:
    """Clusters by id, the noise row last."""
    regular = [k for k in keys if not is_noise(k)]
    return sort_categories(regular) + [k for k in keys if is_noise(k)]


def plot_cluster_gallery(
    cluster_to_maps: dict[Hashable, Sequence[np.ndarray]],
    path: str | Path,
    per_cluster: int = 8,
    sizes: dict[Hashable, int] | None = None,
) -> Path:
    """One row per cluster titled "cluster 3 (n=412)" (the noise row: "noise (n=...)").

    Args:
        cluster_to_maps: cluster id -> example maps (only the first ``per_cluster`` are drawn).
        sizes: cluster id -> cluster size for the titles; defaults to the number of maps given.
    """
    if not cluster_to_maps:
        raise ValueError("plot_cluster_gallery: no clusters given")
    if per_cluster < 1:
        raise ValueError(f"plot_cluster_gallery: per_cluster must be >= 1, got {per_cluster}")
    order = _cluster_order(list(cluster_to_maps))
    row_in = CELL_IN + 0.3
    fig = Figure(figsize=(per_cluster * CELL_IN, len(order) * row_in), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(order), 1))
    for subfig, key in zip(subfigs, order):
        maps = list(cluster_to_maps[key])
        n = sizes.get(key, len(maps)) if sizes else len(maps)
        name = "noise" if is_noise(key) else f"cluster {key}"
        subfig.suptitle(f"{name} (n={n})", fontsize=10, x=0.01, ha="left", fontweight="bold")
        axes = subfig.subplots(1, per_cluster, squeeze=False)[0]
        for i, ax in enumerate(axes):
            if i < len(maps):
                _draw_map(ax, maps[i], "")
            else:
                _blank(ax, "(no maps)" if i == 0 and not maps else "")
    return save_figure(fig, path)


def plot_search_results(
    query: np.ndarray,
    neighbours: Sequence[np.ndarray],
    scores: Sequence[float],
    path: str | Path,
    query_title: str = "query",
    neighbour_titles: Sequence[str] | None = None,
    ncols: int = 10,
) -> Path:
    """The query map (framed, left) and its neighbours in rank order (right).

    Neighbour titles read "#1 0.934" (rank, similarity) plus the matching line of
    ``neighbour_titles`` (e.g. id and label) when given; at most ``ncols`` per row.
    """
    if len(neighbours) != len(scores):
        raise ValueError(
            f"plot_search_results: {len(neighbours)} neighbours but {len(scores)} scores"
        )
    if neighbour_titles is not None and len(neighbour_titles) != len(neighbours):
        raise ValueError(
            f"plot_search_results: {len(neighbours)} neighbours but {len(neighbour_titles)} titles"
        )
    k = len(neighbours)
    cols = max(min(ncols, k), 1)
    rows = max(math.ceil(k / cols), 1)
    titles = [
        f"#{i + 1} {float(s):.3f}" + (f"\n{neighbour_titles[i]}" if neighbour_titles else "")
        for i, s in enumerate(scores)
    ]
    title_in = 0.14 * max(_title_lines(titles), _title_lines([query_title]))
    query_cols = 1.3
    fig = Figure(
        figsize=((cols + query_cols) * CELL_IN + 0.3, rows * (CELL_IN + title_in) + 0.1),
        layout="constrained",
    )
    left, right = fig.subfigures(1, 2, width_ratios=[query_cols, cols], wspace=0.02)
    _draw_map(left.subplots(), query, query_title, frame=QUERY_COLOR)
    axes = right.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < k:
            _draw_map(ax, neighbours[i], titles[i])
        else:
            _blank(ax, "no neighbours" if k == 0 else "")
    return save_figure(fig, path)
