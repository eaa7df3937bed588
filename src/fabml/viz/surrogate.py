"""Surrogate figures: predicted vs true fields, latent maps, error per time step.

Every ``plot_*`` function writes one PNG and returns its path. Fields are ``[T, M, V]`` per case
(``[n, T, M, V]`` for several), in original units, numpy arrays or CPU tensors.

Layouts (``data.layout`` of the surrogate config):

- ``1d``: the nodes axis is a 1-D signal; each variable of a case is drawn as a ``T x M`` heat map
  (time down, node number across);
- ``grid``: the M nodes are a row-major ``[H, W]`` grid; each variable is drawn as an ``H x W`` image at
  one time step (the last one unless ``step`` says otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from fabml.errors import DataError
from fabml.viz.style import save_figure, shorten

FIELD_CMAP = "viridis"
ERROR_CMAP = "magma"
VALUE_CMAP = "viridis"


def _array(x: object, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: cannot convert to an array ({exc})") from exc


def _as_ntmv(x: object, name: str) -> np.ndarray:
    arr = _array(x, name)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(f"{name}: expected fields [n, T, M] or [n, T, M, V], got shape {list(arr.shape)}")
    return arr


def field_panels(field: np.ndarray, layout: str, grid_shape: Sequence[int] | None, step: int) -> list[np.ndarray]:
    """One 2-D panel per variable of one case ``[T, M, V]``: ``T x M`` (layout 1d) or ``H x W`` at ``step``
    (layout grid)."""
    t, m, v = field.shape
    if layout == "grid":
        if not grid_shape or len(grid_shape) != 2 or int(grid_shape[0]) * int(grid_shape[1]) != m:
            raise DataError(f"grid layout needs grid_shape [H, W] with H*W = {m} nodes, got {list(grid_shape or [])}")
        h, w = int(grid_shape[0]), int(grid_shape[1])
        return [field[step, :, k].reshape(h, w) for k in range(v)]
    if layout != "1d":
        raise DataError(f"layout '{layout}' is not known; use 1d or grid")
    return [field[:, :, k] for k in range(v)]


def plot_field_comparison(
    true: object,
    pred: object,
    path: str | Path,
    labels: Sequence[str],
    layout: str = "1d",
    grid_shape: Sequence[int] | None = None,
    variable_names: Sequence[str] | None = None,
    step: int = -1,
    title: str = "",
) -> Path:
    """Rows = (case, variable), columns = true | predicted | |predicted - true|.

    Args:
        true, pred: fields ``[n, T, M, V]`` (or ``[n, T, M]``) of the cases to show (e.g. best, median and
            worst), in original units.
        labels: one row label per case (e.g. ``"best: case 12, rel L2 0.031"``).
        layout / grid_shape: see the module docstring; ``step``: the time step a grid layout shows.

    True and predicted panels of a row share one colour scale (the truth's range widened to the
    prediction's); the error panel has its own scale from 0.
    """
    t_arr, p_arr = _as_ntmv(true, "true"), _as_ntmv(pred, "pred")
    if t_arr.shape != p_arr.shape:
        raise DataError(f"true has shape {list(t_arr.shape)} but pred has {list(p_arr.shape)}")
    n, steps, _, v = t_arr.shape
    if len(labels) != n:
        raise DataError(f"{n} cases but {len(labels)} labels")
    names = list(variable_names) if variable_names else [f"var {k}" for k in range(v)]
    step_idx = step % steps
    rows = n * v
    square = layout == "grid"
    cell_w, cell_h = (2.6, 2.4) if square else (3.6, 2.2)
    fig = Figure(figsize=(3 * cell_w + 0.8, rows * cell_h + 0.6), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(n):
        tp = field_panels(t_arr[i], layout, grid_shape, step_idx)
        pp = field_panels(p_arr[i], layout, grid_shape, step_idx)
        for k in range(v):
            r = i * v + k
            lo, hi = min(tp[k].min(), pp[k].min()), max(tp[k].max(), pp[k].max())
            err_img = np.abs(pp[k] - tp[k])
            aspect = "equal" if square else "auto"
            for c, (img, cmap, vmin, vmax) in enumerate(
                [(tp[k], FIELD_CMAP, lo, hi), (pp[k], FIELD_CMAP, lo, hi),
                 (err_img, ERROR_CMAP, 0.0, max(float(err_img.max()), 1e-12))]
            ):
                ax = axes[r, c]
                shown = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
                fig.colorbar(shown, ax=ax, shrink=0.8)
                ax.tick_params(labelsize=7)
                if not square:
                    ax.set_xlabel("node", fontsize=8)
                    ax.set_ylabel("time step", fontsize=8)
                else:
                    ax.set_xticks([])
                    ax.set_yticks([])
            heads = ["true", "predicted", "|error|"]
            for c in range(3):
                axes[r, c].set_title(f"{heads[c]} ({shorten(names[k], 16)})", fontsize=9)
            axes[r, 0].set_ylabel(shorten(labels[i], 40) + ("\n" if square else "\ntime step"), fontsize=8)
    if title or (square and steps > 1):
        extra = f" (time step {step_idx} of {steps})" if square and steps > 1 else ""
        fig.suptitle(f"{title}{extra}", fontsize=11)
    return save_figure(fig, path)


def plot_latent_scatter(
    xy: object,
    values: object,
    path: str | Path,
    title: str,
    value_name: str,
) -> Path:
    """2-D scatter of latent vectors (PCA / t-SNE coordinates ``[N, 2]``) coloured by a number per case
    (a design parameter, or the case's rel L2 error), with a colour bar. NaN values are drawn grey."""
    pts = _array(xy, "xy")
    vals = _array(values, "values").ravel()
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DataError(f"plot_latent_scatter: xy must have shape [N, 2], got {list(pts.shape)}")
    if len(vals) != len(pts):
        raise DataError(f"plot_latent_scatter: {len(pts)} points but {len(vals)} values")
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.add_subplot()
    size = float(np.clip(8000.0 / max(len(pts), 1), 4.0, 40.0))
    missing = ~np.isfinite(vals)
    if missing.any():
        ax.scatter(pts[missing, 0], pts[missing, 1], s=size, color=(0.8, 0.8, 0.8), linewidths=0)
    shown = ax.scatter(pts[~missing, 0], pts[~missing, 1], c=vals[~missing], s=size, cmap=VALUE_CMAP,
                       linewidths=0, rasterized=True)
    fig.colorbar(shown, ax=ax, label=value_name)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    ax.tick_params(labelsize=8)
    return save_figure(fig, path)


def plot_error_per_step(
    per_step: object,
    path: str | Path,
    title: str = "relative L2 error per time step",
    floor: object | None = None,
) -> Path:
    """Relative L2 per time step: the mean over cases (line), the 10-90% band over cases, and optionally the
    VAE reconstruction floor's mean (dashed).

    Args:
        per_step: ``[n, T]`` per-case, per-step rel L2 (NaN = undefined, left out).
        floor: ``[n, T]`` the same for the VAE's own reconstruction, or None.
    """
    arr = _array(per_step, "per_step")
    if arr.ndim != 2:
        raise DataError(f"per_step must be [n cases, T steps], got shape {list(arr.shape)}")
    steps = np.arange(arr.shape[1])
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()

    def draw(a: np.ndarray, label: str, style: str, band: bool) -> None:
        with np.errstate(all="ignore"):
            finite = np.isfinite(a).any(axis=0)
            mean = np.full(a.shape[1], np.nan)
            mean[finite] = np.nanmean(a[:, finite], axis=0)
            marker = "o" if a.shape[1] <= 30 else None
            ax.plot(steps, mean, style, label=label, marker=marker, markersize=3)
            if band and a.shape[0] > 1:
                lo = np.full(a.shape[1], np.nan)
                hi = np.full(a.shape[1], np.nan)
                lo[finite] = np.nanpercentile(a[:, finite], 10, axis=0)
                hi[finite] = np.nanpercentile(a[:, finite], 90, axis=0)
                ax.fill_between(steps, lo, hi, alpha=0.25, label="10-90% of cases")

    draw(arr, "surrogate (mean over cases)", "-", True)
    if floor is not None:
        draw(_array(floor, "floor"), "VAE reconstruction floor", "--", False)
    ax.set_xlabel("time step")
    ax.set_ylabel("relative L2")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
