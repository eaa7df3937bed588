"""Figures of the retrieval job: the confusion matrix and the query gallery (PNG files).

Drawn on :class:`matplotlib.figure.Figure` (never pyplot), like every fabml figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fabml.data.images import load_image
from fabml.viz.style import save_figure, shorten

RIGHT, WRONG = "#1a9850", "#d73027"
THUMB = 96  # gallery thumbnail side (pixels)


@dataclass
class GalleryRow:
    """One query of the gallery: its image, true class and its nearest references (most similar first)."""

    query_path: str
    query_label: str
    predicted: str
    neighbour_paths: list[str]
    neighbour_labels: list[str]
    neighbour_scores: list[float]


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix ``[C, C]`` (rows: true class, columns: predicted), counts in the cells
    while the classes are few enough to read them (<= 20)."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(max(4.0, 0.28 * n + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(n)
    size = 8 if n <= 30 else 5
    names = [shorten(str(name), 18) for name in class_names]
    ax.set_xticks(ticks, names, rotation=90, fontsize=size)
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return save_figure(fig, path)


def _thumb(path: str) -> np.ndarray:
    return load_image(path, 3, (THUMB, THUMB))


def _frame(ax, colour: str) -> None:
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=colour, linewidth=4,
                           clip_on=False))


def plot_gallery(rows: Sequence[GalleryRow], path: str | Path, title: str = "") -> Path:
    """One row per query: the query (its class and the predicted class, framed green when right, red when
    wrong), then its nearest references with their cosine similarity, framed green when the reference
    has the query's class and red otherwise."""
    k = max((len(r.neighbour_paths) for r in rows), default=0)
    cols = 1 + k
    fig = Figure(figsize=(1.6 * cols, 1.9 * max(len(rows), 1)))
    for i, row in enumerate(rows):
        ax = fig.add_subplot(len(rows), cols, i * cols + 1)
        ax.imshow(_thumb(row.query_path))
        ax.set_axis_off()
        ax.set_title(shorten(f"query: {row.query_label}\npred: {row.predicted}", 22), fontsize=7)
        _frame(ax, RIGHT if row.predicted == row.query_label else WRONG)
        for j, (ref, label, score) in enumerate(zip(row.neighbour_paths, row.neighbour_labels, row.neighbour_scores)):
            ax = fig.add_subplot(len(rows), cols, i * cols + j + 2)
            ax.imshow(_thumb(ref))
            ax.set_axis_off()
            ax.set_title(shorten(f"{j + 1}. {label}\n{score:.3f}", 22), fontsize=7)
            _frame(ax, RIGHT if label == row.query_label else WRONG)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.75 / fig.get_figheight(), wspace=0.15,
                        hspace=0.45)
    return save_figure(fig, path)
