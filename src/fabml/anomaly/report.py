"""Files a prediction or evaluation leaves behind: CSV, JSON, a markdown table and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fabml.anomaly.runs import FittedModel
from fabml.console import table_lines
from fabml.data.anomaly_data import ImageRecord
from fabml.viz.anomaly import plot_grade_counts, plot_overlays, plot_roc_curves, plot_score_histograms

if TYPE_CHECKING:
    from fabml.anomaly.pipeline import Predictions

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_all_anomalous", "anomalous_share",
               "f1_at_threshold", "box_hit_rate", "region_recall")
"""The summary rows of an evaluation, in order: F1-max sits beside ``f1_all_anomalous`` (the F1 of calling every
test image anomalous, ``2p / (1 + p)`` with ``p`` = ``anomalous_share``), so a flattering F1 shows."""


def pick_overlay_rows(table: Any, limit: int = 16) -> list[int]:
    """Row positions worth a look: per type the highest-scoring image, then misses and false alarms."""
    rows: list[int] = []
    for _, group in table.groupby("defect_type", sort=True):
        rows.append(int(group["score"].idxmax()))
    wrong = table[(table["anomalous"].astype(int) != table["label"].astype(int))]
    rows += [int(i) for i in wrong.sort_values("score", ascending=False).index if int(i) not in rows]
    rows += [int(i) for i in table.sort_values("score", ascending=False).index if int(i) not in rows]
    return rows[:limit]


def overlay_figure(path: Path, fitted: FittedModel, records: list[ImageRecord], result: "Predictions",
                   limit: int = 16) -> Path | None:
    """Image | map | predicted mask | true mask for the rows :func:`pick_overlay_rows` chooses."""
    if result.maps is None or not len(result.table):
        return None
    rows = pick_overlay_rows(result.table.reset_index(drop=True), limit)
    dataset = fitted.dataset(records)
    order = result.scored.indices
    items = [dataset[int(order[r])] for r in rows]
    # the test image alone: in reference mode the dataset stacks its aligned reference behind it
    images = np.stack([item["image"][: fitted.channels].numpy() for item in items])
    true = np.stack([item["mask"][0].numpy() for item in items])
    has_true = any(r.mask_path for r in records)
    table = result.table
    titles = [
        f"{table.loc[r, 'defect_type']} score {table.loc[r, 'score']:.2f} grade {table.loc[r, 'grade']}" for r in rows
    ]
    maps = result.maps[rows]
    return plot_overlays(images, maps, maps >= 0.5, true if has_true else None, titles, path, max_images=limit)


def write_predictions(out_dir: Path, fitted: FittedModel, records: list[ImageRecord], result: "Predictions",
                      overlays: bool = True, save_maps: bool = False) -> Path:
    """predictions.csv (+ overlays.png, + maps.npz).

    ``maps.npz`` holds ``maps``: float16 ``[N, H, W]`` normalised anomaly maps at the fitted image size
    (pixel threshold = 0.5; kept below 1, float16's largest value under 1 is 0.99951) and ``paths``:
    ``[N]`` the image of each map, in the row order of predictions.csv. Read it with
    ``np.load(path)["maps"]``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out_dir / "predictions.csv", index=False)
    if overlays:
        overlay_figure(out_dir / "overlays.png", fitted, records, result)
    if save_maps and result.maps is not None:
        below_one = np.nextafter(np.float16(1), np.float16(0))
        np.savez_compressed(out_dir / "maps.npz", maps=np.minimum(result.maps.astype(np.float16), below_one),
                            paths=np.asarray(result.table["path"], dtype=str))
    return out_dir / "predictions.csv"


def metrics_markdown(name: str, metrics: dict[str, Any], per_type: dict[str, dict[str, Any]]) -> str:
    """One summary table and one per-type table, as markdown (cells: 4 decimals, never truncated)."""
    keys = [k for k in METRIC_KEYS if k in metrics] + ["infer_ms_per_image", "n_images", "n_anomalous"]
    lines = [f"# Anomaly evaluation — {name}", ""]
    lines += table_lines(["metric", "value"], [[key, metrics.get(key)] for key in keys], digits=4)
    for note in metrics.get("notes", []):
        lines.append(f"\nNote: {note}")
    if per_type:
        columns = sorted({k for row in per_type.values() for k in row})
        lines += [""] + table_lines(["type", *columns], [[kind, *(row.get(k) for k in columns)]
                                                        for kind, row in per_type.items()], digits=4)
    return "\n".join(lines) + "\n"


def write_evaluation(out_dir: Path, fitted: FittedModel, records: list[ImageRecord], result: "Predictions",
                     metrics: dict[str, Any], per_type: dict[str, dict[str, Any]], figures: bool = True,
                     save_maps: bool = False) -> Path:
    """metrics.json, metrics.md, predictions.csv, (optionally) overlays, ROC, histogram and grade figures, and
    (``save_maps``) maps.npz as :func:`write_predictions` writes it."""
    write_predictions(out_dir, fitted, records, result, overlays=figures, save_maps=save_maps)
    (out_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "per_type": per_type}, indent=2, default=float))
    (out_dir / "metrics.md").write_text(metrics_markdown(fitted.name, metrics, per_type))
    if figures:
        table = result.table
        types = list(table["defect_type"])
        labels = table["label"].to_numpy()
        curves = {"all defects": (labels, table["raw_score"].to_numpy())}
        normal = labels == 0
        for kind in sorted(set(t for t, lab in zip(types, labels) if lab == 1)):
            keep = normal | (np.asarray(types) == kind)
            curves[kind] = (labels[keep], table["raw_score"].to_numpy()[keep])
        if normal.any() and (~normal).any():
            plot_roc_curves(curves, out_dir / "roc.png", f"{fitted.name}: image ROC by defect type")
        plot_score_histograms(table["score"].to_numpy(), types, 0.5, out_dir / "score_histogram.png")
        plot_grade_counts(table["grade"].to_numpy(), types, out_dir / "grades.png")
    return out_dir
