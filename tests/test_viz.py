"""Tests for fabml.viz: wafer rendering, every figure writes a real PNG, the HTML report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fabml
from fabml.errors import DataError
from fabml.viz import (
    ReportSection,
    category_colors,
    plot_cluster_gallery,
    plot_embedding_scatter,
    plot_per_class_bars,
    plot_search_results,
    plot_training_curves,
    plot_trend,
    plot_wafer_grid,
    render_wafer,
    write_html_report,
)
from fabml.viz.style import NOISE_COLOR, PALETTE, WAFER_RGB
from fabml.viz.wafer import QUERY_COLOR, _cluster_order


def _disc(n: int, fail: tuple[int, int] | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    m = (np.hypot(yy - c, xx - c) <= n / 2).astype(np.uint8)
    if fail is not None:
        m[fail] = 2
    return m


def _png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 50 and im.size[1] > 50
        assert round(im.info["dpi"][0]) == 110
        return im.size


def _has_colour(path: Path, rgb: tuple[int, int, int], tol: int = 8) -> bool:
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(px - np.array(rgb)).max(axis=1) <= tol).any())


# ---- render_wafer -------------------------------------------------------------------


def test_render_wafer_colours_each_code() -> None:
    dies = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    rgb = render_wafer(dies)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # no die: white
    assert tuple(rgb[0, 1]) == tuple(WAFER_RGB[1])  # good: light grey-green
    assert rgb[0, 1, 1] > rgb[0, 1, 0] and rgb[0, 1].min() > 180
    assert tuple(rgb[0, 2]) == tuple(WAFER_RGB[2])  # failed: dark red
    assert rgb[0, 2, 0] > 150 and rgb[0, 2, 1] < 60 and rgb[0, 2, 2] < 60
    np.testing.assert_array_equal(rgb[1], rgb[0, ::-1])


def test_render_wafer_pooling_keeps_a_single_failed_die() -> None:
    dies = _disc(301, fail=(150, 150))
    rgb = render_wafer(dies, max_side=50)
    assert max(rgb.shape[:2]) <= 50  # ceil(301 / 50) = 7 -> 43 x 43
    assert rgb.shape[:2] == (43, 43)
    red = (rgb == WAFER_RGB[2]).all(axis=-1)
    assert red.sum() == 1  # the one failed die survives as exactly one pixel


@pytest.mark.parametrize(
    ("dies", "match"),
    [
        (np.zeros(5, np.uint8), "2-D"),
        (np.array([[0, 3]]), r"found \[3\]"),
        (np.zeros((0, 4)), "2-D"),
    ],
)
def test_render_wafer_rejects_bad_maps(dies: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        render_wafer(dies)


# ---- wafer galleries -----------------------------------------------------------------


def test_plot_wafer_grid_writes_png_and_width_follows_ncols(tmp_path: Path) -> None:
    maps = [_disc(n, fail=(n // 2, n // 2)) for n in (20, 33, 250, 41, 26)]
    titles = [f"W{i}\nCenter" for i in range(5)]
    wide = plot_wafer_grid(maps, titles, tmp_path / "a" / "grid.png", ncols=5, suptitle="five")
    narrow = plot_wafer_grid(maps, titles, tmp_path / "grid2.png", ncols=2)
    assert wide == tmp_path / "a" / "grid.png"
    (w1, h1), (w2, h2) = _png(wide), _png(narrow)
    assert w1 > 2 * w2 and h2 > 2 * h1  # 1 row of 5 vs 3 rows of 2
    assert _has_colour(wide, tuple(WAFER_RGB[2]))
    _png(plot_wafer_grid([], [], tmp_path / "empty.png"))
    with pytest.raises(ValueError, match="2 maps but 1 titles"):
        plot_wafer_grid(maps[:2], ["x"], tmp_path / "bad.png")


def test_cluster_order_puts_noise_last() -> None:
    assert _cluster_order([-1, 10, 2, 0]) == [0, 2, 10, -1]
    assert _cluster_order(["noise", "b", "a"]) == ["a", "b", "noise"]


def test_plot_cluster_gallery_one_row_per_cluster(tmp_path: Path) -> None:
    m = _disc(24, fail=(3, 12))
    two = plot_cluster_gallery({0: [m] * 3, -1: [m]}, tmp_path / "g2.png", per_cluster=4,
                               sizes={0: 412, -1: 9})
    four = plot_cluster_gallery({0: [m] * 3, 1: [m] * 5, 7: [], -1: [m]}, tmp_path / "g4.png",
                                per_cluster=4)
    (w2, h2), (w4, h4) = _png(two), _png(four)
    assert w2 == w4 and 1.7 < h4 / h2 < 2.3
    with pytest.raises(ValueError, match="no clusters"):
        plot_cluster_gallery({}, tmp_path / "none.png")


def test_plot_search_results_frames_the_query(tmp_path: Path) -> None:
    q = _disc(30, fail=(15, 15))
    out = plot_search_results(q, [q, _disc(40)], [0.93, 0.5], tmp_path / "s.png",
                              neighbour_titles=["W1 Center", "W2 none"])
    _png(out)
    frame = tuple(int(QUERY_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    assert _has_colour(out, frame)
    many = plot_search_results(q, [q] * 12, list(np.linspace(1, 0.5, 12)), tmp_path / "s12.png",
                               ncols=6)
    assert _png(many)[1] > _png(out)[1]  # 12 neighbours wrap onto two rows
    with pytest.raises(ValueError, match="2 neighbours but 1 scores"):
        plot_search_results(q, [q, q], [0.9], tmp_path / "bad.png")


# ---- charts --------------------------------------------------------------------------


def test_category_colors_stable_across_subsets() -> None:
    full = category_colors([-1, 0, 1, 2, 3])
    part = category_colors([3, 1])
    assert full[3] == part[3] == PALETTE[3] and full[1] == part[1]
    assert full[-1] == NOISE_COLOR
    assert len(set(PALETTE)) == len(PALETTE) >= 40 and NOISE_COLOR not in PALETTE
    names = category_colors(["b", "a", "noise"])
    assert names["a"] == PALETTE[0] and names["b"] == PALETTE[1] and names["noise"] == NOISE_COLOR
    floats = category_colors([-1.0, 10.0, 2.0])  # cluster ids read back from a float column
    assert floats[10.0] == PALETTE[10] and floats[-1.0] == NOISE_COLOR


def test_plot_embedding_scatter_clusters_labels_and_many_categories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(3000, 2))
    clusters = rng.integers(-1, 5, 3000)
    _png(plot_embedding_scatter(xy, clusters, tmp_path / "c.png", "clusters"))
    names = np.array(["Center", "Donut", None, float("nan")], dtype=object)
    labels = names[rng.integers(0, 4, 3000)]
    _png(plot_embedding_scatter(xy, list(labels), tmp_path / "l.png", "labels", label_name="label"))
    out = plot_embedding_scatter(xy, rng.integers(0, 50, 3000), tmp_path / "m.png", "50 clusters")
    _png(out)
    assert _has_colour(out, tuple(round(255 * c) for c in PALETTE[0]), tol=3)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        plot_embedding_scatter(np.zeros((4, 3)), [0] * 4, tmp_path / "bad.png", "x")
    with pytest.raises(ValueError, match="4 points but 3 labels"):
        plot_embedding_scatter(np.zeros((4, 2)), [0] * 3, tmp_path / "bad.png", "x")


def test_plot_training_curves(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    pd.DataFrame({
        "epoch": [1, 2, 3, 4],
        "loss": [2.0, 1.2, 0.8, 0.7],
        "lr": [1e-4, 1e-5, 1e-6, 1e-7],
        "val_knn_acc": [np.nan, 0.6, np.nan, 0.8],
        "note": ["a", "b", "c", "d"],
    }).to_csv(csv, index=False)
    w_all = _png(plot_training_curves(csv, tmp_path / "all.png"))[0]
    w_one = _png(plot_training_curves(csv, tmp_path / "one.png", keys=["loss"]))[0]
    assert w_all > 2 * w_one  # 3 subplots side by side vs 1
    with pytest.raises(DataError, match=r"no numeric column\(s\) \['note'\]"):
        plot_training_curves(csv, tmp_path / "x.png", keys=["note"])
    with pytest.raises(DataError, match="metrics file not found"):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
    (tmp_path / "empty.csv").write_text("epoch,loss\n")
    with pytest.raises(DataError, match="has no rows"):
        plot_training_curves(tmp_path / "empty.csv", tmp_path / "x.png")


def test_plot_trend_bars_and_area(tmp_path: Path) -> None:
    shares = pd.DataFrame(
        [[0.1, 0.5, 0.4], [0.2, 0.3, 0.5], [0.0, 0.6, np.nan]],
        index=pd.Index(["2025-01", "2025-02", "2025-03"], name="month"),
        columns=[-1, 0, 1],
    )
    bar = plot_trend(shares, tmp_path / "t.png")
    _png(bar)
    assert _has_colour(bar, tuple(round(255 * c) for c in PALETTE[1]), tol=3)
    _png(plot_trend(shares, tmp_path / "a.png", kind="area"))
    with pytest.raises(ValueError, match=">= 0"):
        plot_trend(shares * -1, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="kind"):
        plot_trend(shares, tmp_path / "bad.png", kind="pie")


def test_plot_per_class_bars(tmp_path: Path) -> None:
    rows = [{"label": "Center", "recall": 0.93, "support": 120},
            {"label": "Scratch", "recall": 0.41, "support": 12},
            {"label": "Donut", "recall": float("nan"), "support": 0}]
    _png(plot_per_class_bars(rows, tmp_path / "b.png", "kNN recall per class"))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['support'\]"):
        plot_per_class_bars([{"label": "x", "recall": 1.0}], tmp_path / "bad.png", "t")


# ---- HTML report ---------------------------------------------------------------------


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 10, 10)).save(path)
    return path


def test_report_escapes_text_and_renders_tables_and_relative_images(tmp_path: Path) -> None:
    inside = _image(tmp_path / "run" / "figures" / "umap plot.png")
    outside = _image(tmp_path / "other" / "g.png")
    frame = pd.DataFrame({"share": [0.25, 0.75]}, index=pd.Index([3, -1], name="cluster"))
    sections = [
        ReportSection("Clusters <all>", text="a < b & c\n\nnext line", table=frame,
                      images=[inside, outside]),
        ReportSection("Metrics", table=[{"metric": "knn_macro_acc", "value": 0.8512345},
                                        {"metric": "n_clusters", "value": 9, "note": "<b>"}]),
    ]
    out = write_html_report(tmp_path / "run" / "report.html", "Run <1>", sections)
    page = out.read_text(encoding="utf-8")
    assert "<title>Run &lt;1&gt;</title>" in page
    assert "<h2>Clusters &lt;all&gt;</h2>" in page and "<h2>Metrics</h2>" in page
    assert "<p>a &lt; b &amp; c</p>" in page and "<p>next line</p>" in page
    assert "<th>cluster</th><th>share</th>" in page  # named index becomes a column
    assert '<td class="num">-1</td><td class="num">0.7500</td>' in page
    assert "<th>metric</th><th>value</th><th>note</th>" in page
    assert '<td class="num">0.8512</td>' in page and "<td>&lt;b&gt;</td>" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["figures/umap%20plot.png", "../other/g.png"]
    assert f"fabml {fabml.__version__}" in page and "generated 20" in page
    assert '<a href="#s2">Metrics</a>' in page
    assert "<b>" not in page


def test_report_embeds_images_as_data_uris(tmp_path: Path) -> None:
    img = _image(tmp_path / "f.png")
    out = write_html_report(tmp_path / "r.html", "t", [ReportSection("one", images=[img])],
                            embed_images=True)
    srcs = re.findall(r'<img src="([^"]+)"', out.read_text(encoding="utf-8"))
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == img.read_bytes()
    with pytest.raises(DataError, match="report image not found: .*nope.png"):
        missing = [ReportSection("x", images=[tmp_path / "nope.png"])]
        write_html_report(tmp_path / "r2.html", "t", missing)
