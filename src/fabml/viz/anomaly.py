"""Anomaly-detection figures: per-image overlays, ROC curves, score histograms, grade counts.

Every ``plot_*`` function writes one PNG and returns its path. Arrays may be numpy arrays
or CPU tensors. Defect types are coloured with :func:`fabml.viz.style.category_colors`,
so a type keeps its colour across the histogram and the grade chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from fabml.errors import DataError
from fabml.viz.style import category_colors, save_figure, shorten

PRED_COLOR = "#ff0000"  # predicted-mask contour
TRUE_COLOR = "#00ff00"  # ground-truth contour
THRESHOLD_COLOR = "#8b008b"  # dark magenta: in no palette, never antialiased text
HEAT_CMAP = "jet"
HEAT_ALPHA = 0.5
FILL_ALPHA = 0.25
CELL_IN = 1.9  # inches per overlay panel
GRADE_CMAP = "RdYlGn_r"  # grade 0 green ... grade 4 red


def _array(x: object, name: str) -> np.ndarray:
    """``x`` as a numpy array (CPU tensors included)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: cannot convert to an array ({exc})") from exc


def _as_nhwc(images: object) -> np.ndarray:
    """[N, H, W, C] float in [0, 1], C in {1, 3}, from [N,C,H,W], [N,H,W,C] or [N,H,W]."""
    arr = _array(images, "images").astype(np.float64)
    if arr.ndim == 3:
        return np.clip(arr[..., None], 0.0, 1.0)
    if arr.ndim != 4:
        raise DataError(f"images: expected [N, C, H, W] or [N, H, W, C], got shape {arr.shape}")
    if arr.shape[1] in (1, 3):  # the fabml convention wins when both axes could be channels
        arr = arr.transpose(0, 2, 3, 1)
    elif arr.shape[-1] not in (1, 3):
        raise DataError(f"images: need 1 or 3 channels first or last, got shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0)


def _as_nhw(x: object, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """[N, H, W] from [N, H, W] or [N, 1, H, W]; must match ``shape`` (N, H, W)."""
    arr = _array(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != shape:
        raise DataError(f"{name}: expected shape {list(shape)} (or [N, 1, H, W]) to match the "
                        f"images, got {list(arr.shape)}")
    return arr


def _show_image(ax: Axes, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")


def _draw_mask(ax: Axes, mask: np.ndarray, colour: str) -> None:
    """Translucent fill plus outline of a boolean mask (no outline for an empty/full mask)."""
    rgba = np.zeros((*mask.shape, 4))
    rgba[..., :3] = to_rgb(colour)
    rgba[..., 3] = FILL_ALPHA * mask
    ax.imshow(rgba, interpolation="nearest")
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.5)


def _clean(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlays(
    images: object,
    maps: object,
    pred_masks: object,
    true_masks: object | None,
    titles: Sequence[str],
    path: str | Path,
    max_images: int = 16,
) -> Path:
    """One row per image: image | anomaly-map overlay | predicted mask | true mask.

    Args:
        images: [N, C, H, W] or [N, H, W, C] (C = 1 or 3) or [N, H, W], floats in [0, 1].
        maps: [N, H, W] (or [N, 1, H, W]) anomaly maps normalised to [0, 1] (drawn with a
            fixed 0..1 colour scale, so rows are comparable; values outside are clipped).
        pred_masks: [N, H, W] bool predicted defect masks (red outline and fill).
        true_masks: [N, H, W] ground-truth masks (green), or None: the column is left out.
        titles: one row label per image (e.g. "Blowhole  score 0.83").
        max_images: only the first ``max_images`` rows are drawn (the figure title says so).
    """
    imgs = _as_nhwc(images)
    n, h, w = imgs.shape[:3]
    if n == 0:
        raise DataError("plot_overlays: no images given")
    heat = np.clip(_as_nhw(maps, "maps", (n, h, w)).astype(np.float64), 0.0, 1.0)
    pred = _as_nhw(pred_masks, "pred_masks", (n, h, w)).astype(bool)
    true = None if true_masks is None else _as_nhw(true_masks, "true_masks", (n, h, w)) > 0
    if len(titles) != n:
        raise DataError(f"plot_overlays: {n} images but {len(titles)} titles")
    if max_images < 1:
        raise DataError(f"plot_overlays: max_images must be >= 1, got {max_images}")

    rows = min(n, max_images)
    headers = ["image", "anomaly map", "predicted mask"] + ([] if true is None else ["true mask"])
    cols = len(headers)
    aspect = h / w
    fig = Figure(figsize=(cols * CELL_IN + 0.4, rows * CELL_IN * aspect + 0.5),
                 layout="constrained")
    if rows < n:
        fig.suptitle(f"first {rows} of {n} images", fontsize=10)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        ax_img, ax_heat, ax_pred = axes[r, :3]
        _show_image(ax_img, imgs[r])
        ax_img.set_ylabel(shorten(str(titles[r]), 28), fontsize=7.5)
        _show_image(ax_heat, imgs[r])
        ax_heat.imshow(heat[r], cmap=HEAT_CMAP, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA,
                       interpolation="bilinear")
        _show_image(ax_pred, imgs[r])
        _draw_mask(ax_pred, pred[r], PRED_COLOR)
        if true is not None:
            _show_image(axes[r, 3], imgs[r])
            _draw_mask(axes[r, 3], true[r], TRUE_COLOR)
        for ax in axes[r]:
            _clean(ax)
    for ax, header in zip(axes[0], headers):
        ax.set_title(header, fontsize=9)
    return save_figure(fig, path)


def roc_entries(
    curves: Mapping[str, tuple[object, object]],
) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """(name, FPR, TPR, AUROC) per curve; FPR/TPR empty and AUROC None with one class only.

    Args:
        curves: name -> (labels [N] with 1 = defect, scores [N], higher = more anomalous).
    """
    out = []
    for name, (labels, scores) in curves.items():
        y = _array(labels, f"labels of {name!r}").reshape(-1)
        s = _array(scores, f"scores of {name!r}").astype(np.float64).reshape(-1)
        if y.shape != s.shape:
            raise DataError(f"ROC {name!r}: {y.size} labels but {s.size} scores")
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"ROC {name!r}: labels must be 0 (normal) or 1 (defect)")
        if len(np.unique(y)) < 2:
            out.append((name, np.empty(0), np.empty(0), None))
            continue
        fpr, tpr, _ = roc_curve(y, s)
        out.append((name, fpr, tpr, float(roc_auc_score(y, s))))
    return out


def plot_roc_curves(
    curves: Mapping[str, tuple[object, object]], path: str | Path, title: str = "image ROC"
) -> Path:
    """Image-level ROC curves (one per model or per defect type), AUROC in the legend.

    Args:
        curves: name -> (labels [N] 0/1, scores [N]); a curve whose labels hold one class
            only has no ROC: its legend entry says "AUROC undefined (one class)".
    """
    if not curves:
        raise DataError("plot_roc_curves: no curves given")
    entries = roc_entries(curves)
    colours = category_colors([name for name, *_ in entries])
    fig = Figure(figsize=(6.2, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", linewidth=1, label="chance (0.500)")
    for name, fpr, tpr, auroc in entries:
        if auroc is None:
            ax.plot([], [], color=colours[name],
                    label=f"{shorten(name, 24)}: AUROC undefined (one class)")
        else:
            # straight segments: a tie between a normal and a defect score is a diagonal step
            ax.plot(fpr, tpr, color=colours[name], linewidth=1.8,
                    label=f"{shorten(name, 24)}: AUROC {auroc:.3f}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (normal images flagged)")
    ax.set_ylabel("true positive rate (defects found)")
    ax.set_title(title, fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_score_histograms(
    scores: object,
    types: Sequence[str],
    threshold: float | None,
    path: str | Path,
    title: str = "normalised anomaly scores by type",
    bins: int = 40,
    density: bool = True,
) -> Path:
    """Overlaid histograms of image scores, one colour per defect type, threshold line.

    Args:
        scores: [N] normalised image scores (the calibrated threshold maps to 0.5).
        types: N defect-type names (the normal type too, e.g. "Free" or "good").
        threshold: x position of the dashed decision line, or None for no line.
        density: each type's bars sum to 1 (share of that type's images), so a type with
            10 images stays visible next to 500 normal ones; False draws raw counts.
    """
    s = _array(scores, "scores").astype(np.float64).reshape(-1)
    if s.size == 0:
        raise DataError("plot_score_histograms: no scores given")
    if len(types) != s.size:
        raise DataError(f"plot_score_histograms: {s.size} scores but {len(types)} types")
    if not np.isfinite(s).all():
        raise DataError("plot_score_histograms: scores hold NaN or infinite values")
    names = np.array([str(t) for t in types], dtype=object)
    kinds, counts = np.unique(names, return_counts=True)
    order = [str(k) for k in kinds[np.argsort(-counts, kind="stable")]]  # largest drawn first
    colours = category_colors(order)
    span = [s.min(), s.max()] + ([threshold] if threshold is not None else [])
    edges = np.histogram_bin_edges(s, bins=bins, range=(min(span), max(span) + 1e-9))

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name in order:
        part = s[names == name]
        weights = np.full(part.size, 1.0 / part.size) if density else None
        ax.hist(part, bins=edges, weights=weights, histtype="stepfilled", alpha=0.35,
                color=colours[name])
        ax.hist(part, bins=edges, weights=weights, histtype="step", linewidth=1.4,
                color=colours[name], label=f"{shorten(name, 20)} (n={part.size})")
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.4,
                   label=f"threshold {threshold:.3f}")
    ax.set_xlabel("image score")
    ax.set_ylabel("share of the type's images" if density else "images")
    ax.set_title(title, fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0)
    return save_figure(fig, path)


def grade_table(
    grades: object, types: Sequence[str], n_grades: int = 5
) -> tuple[list[str], np.ndarray]:
    """(type names sorted, counts [n_types, n_grades]) from per-image grades 0..n_grades-1."""
    g = _array(grades, "grades").reshape(-1)
    if len(types) != g.size:
        raise DataError(f"plot_grade_counts: {g.size} grades but {len(types)} types")
    numeric = np.issubdtype(g.dtype, np.number) and not np.issubdtype(g.dtype, np.bool_)
    if g.size and not (numeric and np.isfinite(g).all() and (g == np.round(g)).all()
                       and g.min() >= 0 and g.max() < n_grades):
        raise DataError(f"plot_grade_counts: grades must be integers 0..{n_grades - 1}")
    names = sorted({str(t) for t in types})
    counts = np.zeros((len(names), n_grades), dtype=np.int64)
    index = {name: i for i, name in enumerate(names)}
    for t, grade in zip(types, g):
        counts[index[str(t)], int(grade)] += 1
    return names, counts


def plot_grade_counts(
    grades: object,
    types: Sequence[str],
    path: str | Path,
    title: str = "grades per type",
    n_grades: int = 5,
) -> Path:
    """Stacked bars per type: the share of its images at grade 0 (normal) .. 4 (severe).

    Bars are shares (each type sums to 1, so a few defects stay readable beside many
    normal images); segments wide enough are annotated with their image count, and the
    type label carries the total "(n=...)".

    Args:
        grades: [N] integer grades in 0..n_grades-1.
        types: N defect-type names.
    """
    names, counts = grade_table(grades, types, n_grades)
    if not names:
        raise DataError("plot_grade_counts: no grades given")
    cmap = colormaps[GRADE_CMAP]
    shades = [cmap(k / max(n_grades - 1, 1)) for k in range(n_grades)]
    totals = counts.sum(axis=1)
    shares = counts / totals[:, None]
    y = np.arange(len(names))
    fig = Figure(figsize=(7.5, 0.4 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    left = np.zeros(len(names))
    for k in range(n_grades):
        ax.barh(y, shares[:, k], left=left, color=shades[k], height=0.7, label=f"grade {k}")
        dark = k in (0, n_grades - 1)  # the colour map's ends are dark: white text
        for yi in range(len(names)):
            if shares[yi, k] >= 0.05:
                ax.text(left[yi] + shares[yi, k] / 2, yi, str(counts[yi, k]), ha="center",
                        va="center", fontsize=7, color="white" if dark else "black")
        left += shares[:, k]
    ax.set_yticks(y)
    ax.set_yticklabels([f"{shorten(n, 20)} (n={t})" for n, t in zip(names, totals)], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the type's images")
    ax.set_title(title, fontsize=12, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)
