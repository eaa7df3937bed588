"""Chart figures: embedding scatter, training curves, cluster-share trend, per-class bars.

Every function writes one PNG and returns its path. Categories (clusters, labels) use
the colours of :func:`fabml.viz.style.category_colors`, so cluster k looks the same in
every figure; noise (-1) and missing labels are light grey and drawn underneath.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fabml.errors import DataError
from fabml.viz.style import (
    NOISE_COLOR,
    OTHER_COLOR,
    category_colors,
    category_name,
    is_missing,
    is_noise,
    save_figure,
    shorten,
    sort_categories,
)

MISSING = "(missing)"
OTHER = "other"


def _legend_outside(ax: Axes, handles: list, labels: list[str], title: str) -> None:
    ncol = 1 if len(handles) <= 18 else 2
    ax.legend(
        handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0),
        fontsize=8, title_fontsize=9, ncol=ncol, frameon=False, borderaxespad=0.0,
    )


def plot_embedding_scatter(
    xy: np.ndarray,
    labels: Sequence[Hashable] | np.ndarray,
    path: str | Path,
    title: str,
    label_name: str = "cluster",
    max_categories: int = 30,
) -> Path:
    """2-D scatter of embeddings (e.g. UMAP / t-SNE output) coloured by category.

    Args:
        xy: [N, 2] coordinates.
        labels: N category labels (cluster ids or class names); -1 / "noise" is noise,
            None / NaN is missing; both are drawn first in light grey.
        label_name: legend title.
        max_categories: beyond this many categories the smallest are merged into "other".

    The legend lists every category with its count. Points are rasterized, so 50k+ points
    stay a small PNG.
    """
    pts = np.asarray(xy, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"plot_embedding_scatter: xy must have shape [N, 2], got {pts.shape}")
    series = pd.Series([MISSING if is_missing(v) else v for v in labels], dtype=object)
    if len(series) != len(pts):
        raise ValueError(f"plot_embedding_scatter: {len(pts)} points but {len(series)} labels")
    counts = series.value_counts(sort=True)
    background = [c for c in counts.index if c == MISSING or is_noise(c)]
    regular = [c for c in counts.index if c not in background]  # descending count
    merged: list[Hashable] = []
    if len(regular) > max_categories:
        regular, merged = regular[: max_categories - 1], regular[max_categories - 1 :]
    colours = category_colors(regular)

    n = len(pts)
    size = float(np.clip(20000.0 / max(n, 1), 1.0, 25.0))
    alpha = 0.9 if n <= 5000 else 0.7
    fig = Figure(figsize=(9.0, 6.5), layout="constrained")
    ax = fig.add_subplot()
    groups: list[tuple[str, np.ndarray, tuple[float, float, float]]] = []
    for cat in background:
        groups.append((category_name(cat), (series == cat).to_numpy(), NOISE_COLOR))
    if merged:
        groups.append((OTHER, series.isin(merged).to_numpy(), OTHER_COLOR))
    for cat in regular:  # largest first so that small categories stay visible on top
        groups.append((category_name(cat), (series == cat).to_numpy(), colours[cat]))
    for _, mask, colour in groups:
        ax.scatter(pts[mask, 0], pts[mask, 1], s=size, color=colour, alpha=alpha,
                   linewidths=0, rasterized=True)

    legend_order = [category_name(c) for c in sort_categories(regular)]
    legend_order += ([OTHER] if merged else []) + [category_name(c) for c in background]
    by_name = {name: (int(mask.sum()), colour) for name, mask, colour in groups}
    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=6, color=by_name[name][1])
        for name in legend_order
    ]
    texts = [f"{shorten(name, 22)} (n={by_name[name][0]})" for name in legend_order]
    if merged:
        texts[legend_order.index(OTHER)] = f"{OTHER}: {len(merged)} more (n={by_name[OTHER][0]})"
    _legend_outside(ax, handles, texts, label_name)
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    ax.tick_params(labelsize=8)
    return save_figure(fig, path)


def plot_training_curves(
    metrics_csv: str | Path, path: str | Path, keys: Sequence[str] | None = None
) -> Path:
    """One subplot per numeric column of a metrics.csv against epoch (or step, or row).

    Columns with gaps (validation every few epochs) are drawn with markers over the rows
    that have values. A positive column spanning >= 3 decades (e.g. lr) gets a log axis.
    """
    csv = Path(metrics_csv)
    if not csv.is_file():
        raise DataError(f"metrics file not found: {csv}")
    try:
        frame = pd.read_csv(csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read metrics file {csv}: {exc}".splitlines()[0]) from exc
    if frame.empty:
        raise DataError(f"metrics file {csv} has no rows")
    x_name = next((c for c in ("epoch", "step") if c in frame.columns), None)
    x = frame[x_name].to_numpy() if x_name else np.arange(1, len(frame) + 1)
    numeric = [c for c in frame.columns if c != x_name and pd.api.types.is_numeric_dtype(frame[c])]
    if keys is not None:
        unknown = [k for k in keys if k not in numeric]
        if unknown:
            raise DataError(f"metrics file {csv} has no numeric column(s) {unknown}; has {numeric}")
        numeric = list(keys)
    if not numeric:
        raise DataError(f"metrics file {csv} has no numeric columns to plot")

    cols = min(3, len(numeric))
    rows = math.ceil(len(numeric) / cols)
    fig = Figure(figsize=(4.0 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, numeric):
        y = frame[key].to_numpy(dtype=float)
        ok = np.isfinite(y)
        sparse = ok.sum() < len(y) or ok.sum() <= 20
        ax.plot(x[ok], y[ok], marker="o" if sparse else None, markersize=3, linewidth=1.5)
        pos = y[ok]
        if pos.size and (pos > 0).all() and pos.max() / pos.min() >= 1e3:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_name or "row", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(numeric) :]:
        ax.axis("off")
    fig.suptitle(f"training curves ({csv.name})", fontsize=11)
    return save_figure(fig, path)


def plot_trend(
    df: pd.DataFrame, path: str | Path, title: str = "cluster share per period", kind: str = "auto"
) -> Path:
    """Stacked shares of each cluster over time.

    Args:
        df: index = period (any printable type, in time order), columns = cluster ids,
            values = share of the period's maps in [0, 1] (NaN counts as 0).
        kind: "bar", "area" or "auto" (bars up to 40 periods, area beyond).
    """
    if kind not in ("auto", "bar", "area"):
        raise ValueError(f"plot_trend: kind must be 'auto', 'bar' or 'area', got {kind!r}")
    if df.empty:
        raise ValueError("plot_trend: the share table is empty")
    values = df.apply(pd.to_numeric, errors="raise").fillna(0.0)
    if (values.to_numpy() < 0).any():
        raise ValueError("plot_trend: shares must be >= 0")
    noise = [c for c in values.columns if is_noise(c)]
    order = noise + sort_categories([c for c in values.columns if not is_noise(c)])
    colours = category_colors(order)
    x = np.arange(len(values))
    use_bars = kind == "bar" or (kind == "auto" and len(values) <= 40)

    fig = Figure(figsize=(min(max(6.0, 0.35 * len(values) + 3.0), 16.0), 5.0), layout="constrained")
    ax = fig.add_subplot()
    stacks = [values[c].to_numpy(dtype=float) for c in order]
    names = [category_name(c) for c in order]
    if use_bars:
        bottom = np.zeros(len(values))
        for name, ys, c in zip(names, stacks, order):
            ax.bar(x, ys, bottom=bottom, width=0.85, color=colours[c], label=name, linewidth=0)
            bottom += ys
    else:
        ax.stackplot(x, *stacks, colors=[colours[c] for c in order], labels=names, linewidth=0)
    step = max(1, math.ceil(len(values) / 24))
    ax.set_xticks(x[::step])
    ax.set_xticklabels([shorten(str(p), 12) for p in values.index[::step]], rotation=45,
                       ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(values) - 0.4)
    top = float(values.sum(axis=1).max())
    ax.set_ylim(0, 1.0 if top <= 1.0 + 1e-6 else top * 1.02)
    ax.set_ylabel("share of maps")
    ax.set_xlabel(str(values.index.name or "period"))
    ax.set_title(title, fontsize=12)
    handles, labels = ax.get_legend_handles_labels()
    _legend_outside(ax, handles[::-1], labels[::-1], "cluster")  # legend top = stack top
    return save_figure(fig, path)


def plot_per_class_bars(
    per_class: Sequence[dict], path: str | Path, title: str, value_key: str = "recall"
) -> Path:
    """Horizontal bars of a per-class score (default recall), annotated "0.93 (n=120)".

    Args:
        per_class: dicts with "label", ``value_key`` (in [0, 1], NaN for an empty class)
            and "support" (number of items), drawn top to bottom in the given order.

    A dashed line marks the macro mean over classes with a finite value.
    """
    if not per_class:
        raise ValueError("plot_per_class_bars: no classes given")
    for row in per_class:
        missing = [k for k in ("label", value_key, "support") if k not in row]
        if missing:
            raise ValueError(f"plot_per_class_bars: row {row!r} lacks key(s) {missing}")
    names = [shorten(str(r["label"]), 24) for r in per_class]
    vals = np.array(
        [np.nan if r[value_key] is None else float(r[value_key]) for r in per_class], dtype=float
    )
    y = np.arange(len(per_class))
    fig = Figure(figsize=(7.5, 0.32 * len(per_class) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(y, np.nan_to_num(vals), color="#4c78a8", height=0.7, zorder=2)
    for yi, v, row in zip(y, vals, per_class):
        text = ("n/a" if np.isnan(v) else f"{v:.2f}") + f" (n={int(row['support'])})"
        # white box so the macro line never runs through the number
        ax.text(min(np.nan_to_num(v), 1.0) + 0.01, yi, text, va="center", fontsize=8, zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0, "alpha": 0.85})
    if np.isfinite(vals).any():
        macro = float(np.nanmean(vals))
        ax.axvline(macro, color="#e45756", linestyle="--", linewidth=1.2, zorder=3,
                   label=f"macro mean {macro:.3f}")
        # above the axes, right of the left-aligned title, so it never covers a bar
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
                  borderaxespad=0.2)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.22)  # room for the annotations right of a full bar
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel(value_key)
    ax.set_title(title, fontsize=12, loc="left")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)
