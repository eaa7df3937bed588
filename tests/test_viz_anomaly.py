"""Tests for fabml.viz.anomaly: overlays, ROC curves, score histograms, grade counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from PIL import Image

from fabml.errors import DataError
from fabml.viz.anomaly import (
    GRADE_CMAP,
    PRED_COLOR,
    THRESHOLD_COLOR,
    TRUE_COLOR,
    grade_table,
    plot_grade_counts,
    plot_overlays,
    plot_roc_curves,
    plot_score_histograms,
    roc_entries,
)
from fabml.viz.style import PALETTE


def _png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == 110
        return im.size


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _has_colour(path: Path, colour: str | tuple[float, float, float], tol: int = 10) -> bool:
    rgb = np.array([round(255 * c) for c in to_rgb(colour)])
    px = _pixels(path).reshape(-1, 3)
    return bool((np.abs(px - rgb).max(axis=1) <= tol).any())


def _sample(n: int, channels: int, size: int = 32) -> tuple[np.ndarray, ...]:
    """Images [N, C, H, W] with a bright square defect, maps, predicted and true masks."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0.3, 0.5, (n, channels, size, size))
    true = np.zeros((n, size, size), dtype=bool)
    true[:, 8:16, 10:20] = True
    images[:, :, true[0]] = 0.9
    maps = np.clip(rng.normal(0.2, 0.05, (n, size, size)) + 0.7 * true, 0.0, 1.0)
    pred = maps > 0.5
    return images, maps, pred, true


def test_overlays_three_channels_with_true_masks(tmp_path: Path) -> None:
    images, maps, pred, true = _sample(3, 3)
    out = plot_overlays(images, maps, pred, true, ["Free", "Crack", "Break"], tmp_path / "o.png")
    assert out == tmp_path / "o.png"
    _png(out)
    assert _has_colour(out, PRED_COLOR) and _has_colour(out, TRUE_COLOR)


def test_overlays_one_channel_without_true_masks_drops_a_column(tmp_path: Path) -> None:
    images, maps, pred, true = _sample(2, 1)
    with_true = plot_overlays(images, maps, pred, true, ["a", "b"], tmp_path / "with.png")
    # [N, 1, H, W] tensors and a [N, 1, H, W] map are accepted too
    without = plot_overlays(torch.from_numpy(images), torch.from_numpy(maps[:, None]),
                            torch.from_numpy(pred), None, ["a", "b"], tmp_path / "without.png")
    (w4, h4), (w3, h3) = _png(with_true), _png(without)
    assert h3 == h4 and 0.65 < w3 / w4 < 0.85  # 3 of 4 panel columns
    assert _has_colour(without, PRED_COLOR) and not _has_colour(without, TRUE_COLOR)


@pytest.mark.parametrize("channels", [1, 3])
def test_overlays_channel_layouts_draw_the_same_figure(tmp_path: Path, channels: int) -> None:
    images, maps, pred, true = _sample(2, channels)
    first = plot_overlays(images, maps, pred, true, ["a", "b"], tmp_path / "nchw.png")
    second = plot_overlays(images.transpose(0, 2, 3, 1), maps, pred, true, ["a", "b"],
                           tmp_path / "nhwc.png")
    np.testing.assert_array_equal(_pixels(first), _pixels(second))
    if channels == 1:  # [N, H, W] grey images as well
        third = plot_overlays(images[:, 0], maps, pred, true, ["a", "b"], tmp_path / "nhw.png")
        np.testing.assert_array_equal(_pixels(first), _pixels(third))


def test_overlays_respect_max_images_and_empty_masks(tmp_path: Path) -> None:
    images, maps, _, _ = _sample(20, 1)
    empty = np.zeros_like(maps, dtype=bool)  # no defect predicted: no contour, no warning
    four = plot_overlays(images[:4], maps[:4], empty[:4], None, ["x"] * 4, tmp_path / "4.png")
    capped = plot_overlays(images, maps, empty, None, ["x"] * 20, tmp_path / "20.png",
                           max_images=4)
    assert _png(capped)[1] < 1.2 * _png(four)[1]  # 4 rows (+ a title line), not 20
    assert not _has_colour(capped, PRED_COLOR)


def test_overlays_reject_bad_inputs(tmp_path: Path) -> None:
    images, maps, pred, true = _sample(2, 3)
    out = tmp_path / "bad.png"
    with pytest.raises(DataError, match=r"maps: expected shape \[2, 32, 32\]"):
        plot_overlays(images, maps[:, :16], pred, true, ["a", "b"], out)
    with pytest.raises(DataError, match=r"true_masks: expected shape"):
        plot_overlays(images, maps, pred, true[:1], ["a", "b"], out)
    with pytest.raises(DataError, match="2 images but 1 titles"):
        plot_overlays(images, maps, pred, true, ["a"], out)
    with pytest.raises(DataError, match="1 or 3 channels"):
        plot_overlays(np.zeros((2, 2, 32, 32)), maps, pred, true, ["a", "b"], out)
    with pytest.raises(DataError, match="no images"):
        plot_overlays(np.zeros((0, 3, 8, 8)), np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), None,
                      [], out)
    assert not out.exists()


def test_roc_entries_match_hand_computed_values() -> None:
    entries = roc_entries({
        "patchcore": ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
        "perfect": (np.array([0, 1]), torch.tensor([0.2, 0.9])),
        "normals only": ([0, 0, 0], [0.1, 0.2, 0.3]),
    })
    (name, fpr, tpr, auroc), perfect, undefined = entries
    assert name == "patchcore" and auroc == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0 and np.all(np.diff(fpr) >= 0)
    assert perfect[3] == 1.0
    assert undefined[0] == "normals only" and undefined[3] is None and undefined[1].size == 0
    with pytest.raises(DataError, match="3 labels but 2 scores"):
        roc_entries({"x": ([0, 1, 1], [0.1, 0.2])})
    with pytest.raises(DataError, match="labels must be 0"):
        roc_entries({"x": ([0, 2], [0.1, 0.2])})


def test_plot_roc_curves_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    curves = {"patchcore": (labels, labels + rng.normal(0, 0.5, 60)),
              "padim": (labels, rng.normal(0, 1, 60)),
              "Free only": (np.zeros(5, int), rng.normal(0, 1, 5))}
    out = plot_roc_curves(curves, tmp_path / "roc.png", "image ROC")
    _png(out)
    assert _has_colour(out, PALETTE[2], tol=3)  # "patchcore" ranks third of the sorted names
    with pytest.raises(DataError, match="no curves"):
        plot_roc_curves({}, tmp_path / "x.png")


def test_plot_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scores = np.r_[rng.normal(0.3, 0.05, 50), rng.normal(0.7, 0.1, 8), [0.55, 0.6]]
    types = ["Free"] * 50 + ["Crack"] * 8 + ["Break"] * 2
    out = plot_score_histograms(scores, types, 0.5, tmp_path / "h.png")
    _png(out)
    assert _has_colour(out, THRESHOLD_COLOR, tol=3)
    # sorted names: Break, Crack, Free -> palette colours 0, 1, 2 (outlines drawn opaque)
    assert all(_has_colour(out, PALETTE[k], tol=3) for k in range(3))
    counts = plot_score_histograms(torch.tensor(scores), types, None, tmp_path / "c.png",
                                   density=False)
    _png(counts)
    assert not _has_colour(counts, THRESHOLD_COLOR, tol=3)
    _png(plot_score_histograms([0.5, 0.5], ["Free", "Free"], 0.5, tmp_path / "flat.png"))
    with pytest.raises(DataError, match="3 scores but 2 types"):
        plot_score_histograms([0.1, 0.2, 0.3], ["a", "b"], 0.5, tmp_path / "x.png")
    with pytest.raises(DataError, match="NaN"):
        plot_score_histograms([0.1, float("nan")], ["a", "b"], 0.5, tmp_path / "x.png")


def test_grade_table_and_plot(tmp_path: Path) -> None:
    grades = np.array([0, 0, 1, 4, 3, 3, 0])
    types = ["Free", "Free", "Free", "Crack", "Crack", "Crack", "Break"]
    names, counts = grade_table(grades, types)
    assert names == ["Break", "Crack", "Free"]
    np.testing.assert_array_equal(counts, [[1, 0, 0, 0, 0], [0, 0, 0, 2, 1], [2, 1, 0, 0, 0]])
    assert grade_table(torch.tensor([2.0]), ["a"])[1].tolist() == [[0, 0, 1, 0, 0]]
    out = plot_grade_counts(grades, types, tmp_path / "g.png")
    _png(out)
    assert _has_colour(out, colormaps[GRADE_CMAP](1.0)[:3], tol=3)  # grade 4 (Crack) drawn
    with pytest.raises(DataError, match=r"integers 0\.\.4"):
        grade_table([0, 5], ["a", "b"])
    with pytest.raises(DataError, match=r"integers 0\.\.4"):
        grade_table([0.5], ["a"])
    with pytest.raises(DataError, match="2 grades but 1 types"):
        plot_grade_counts([0, 1], ["a"], tmp_path / "x.png")
