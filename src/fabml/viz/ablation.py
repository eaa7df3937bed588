"""The ablation figure: one horizontal bar panel per metric, one bar per grid combination."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.figure import Figure

from fabml.errors import DataError
from fabml.viz.style import save_figure

# what each panel's axis means, and which way is better
METRIC_LABELS = {
    "image_auroc": "image AUROC (real test set) ↑",
    "pixel_auroc": "pixel AUROC ↑",
    "aupro": "AUPRO ↑",
    "severity_mae": "severity MAE (synthetic faults) ↓",
    "severity_spearman": "severity Spearman (synthetic faults) ↑",
    "fit_seconds": "training time, s ↓",
}


def plot_ablation(labels: Sequence[str], metrics: Mapping[str, Sequence[float]], path: str | Path,
                  title: str = "ablation") -> Path:
    """Bars of every metric (a panel each) for every combination (a bar each, labelled by ``labels``).

    metrics: ``{name: [value per combination]}``; a NaN value leaves its bar out (with "n/a" written in its place).
    An empty ``labels`` draws a figure that says no combination finished.
    """
    names = list(metrics)
    if any(len(metrics[m]) != len(labels) for m in names):
        raise DataError("plot_ablation: every metric needs one value per label")
    n = max(1, len(labels))
    columns = min(3, max(1, len(names)))
    grid_rows = max(1, -(-len(names) // columns))
    label_width = 0.07 * max((len(str(label)) for label in labels), default=10)
    fig = Figure(figsize=(label_width + 3.6 * columns, grid_rows * (0.35 * n + 1.4)))
    if not labels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no combination finished", ha="center", va="center")
        ax.set_axis_off()
        return save_figure(fig, path)
    for j, name in enumerate(names):
        ax = fig.add_subplot(grid_rows, columns, j + 1)
        values = [float(v) for v in metrics[name]]
        ys = list(range(len(labels)))
        ax.barh(ys, [0.0 if math.isnan(v) else v for v in values], color="#4c72b0")
        for y, v in zip(ys, values):
            ax.text(0.0 if math.isnan(v) else v, y, " n/a" if math.isnan(v) else f" {v:.3g}", va="center", fontsize=7)
        ax.set_yticks(ys, labels if j % columns == 0 else [""] * len(labels), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(METRIC_LABELS.get(name, name), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
