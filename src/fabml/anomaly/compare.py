"""Fit several models on one split and put their metrics and costs in one table.

Each model is fitted and evaluated in its own spawned process, so its peak memory
(VmHWM) is its own and one model's failure does not stop the others. The ablation runner
(:mod:`fabml.anomaly.ablation`) uses the same child process, with an extra measurement.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue as queue_module
import traceback
from pathlib import Path
from typing import Any, Callable

from fabml.anomaly.config import AnomalyConfig
from fabml.config import from_dict, to_dict
from fabml.console import table_lines

METRICS = ("image_auroc", "pixel_auroc", "aupro", "box_hit_rate", "f1_max", "f1_all_anomalous", "anomalous_share",
           "f1_at_threshold")
"""Evaluation figures each row carries (:func:`fabml.metrics.anomaly.anomaly_metrics`): F1-max stands beside
the F1 of calling every test image anomalous and the anomalous share, so a flattering F1 shows."""
COLUMNS = (*METRICS, "fit_seconds", "infer_ms_per_image", "model_mb", "peak_rss_mb")


ExtraMeasure = Callable[[str], dict[str, Any]]


def _fit_and_evaluate(cfg_dict: dict[str, Any], run_dir: str, queue: Any, extra: ExtraMeasure | None = None,
                      figures: bool = True) -> None:
    """Child process: fit, evaluate (+ ``extra(run_dir)``'s entries), send one row (or the error line) back."""
    try:
        from fabml.anomaly.pipeline import evaluate, fit
        from fabml.engine.hardware import peak_rss_mb

        cfg = from_dict(AnomalyConfig, cfg_dict)
        report = fit(cfg, run_dir, fresh=True)
        fit_rss = peak_rss_mb()
        evaluation = evaluate(run_dir, figures=figures)
        metrics = evaluation.metrics
        row = {key: metrics.get(key) for key in (*METRICS, "region_recall")}
        row.update(
            fit_seconds=report.fit_seconds,
            calibration_seconds=report.calibration_seconds,
            infer_ms_per_image=evaluation.infer_ms_per_image,
            model_mb=(Path(run_dir) / "model.pt").stat().st_size / 2**20,
            peak_rss_mb=peak_rss_mb(),
            fit_peak_rss_mb=fit_rss,
            threshold=report.messages[0] if report.messages else "",
            notes=metrics.get("notes", []),
            per_type=evaluation.per_type,
        )
        if extra is not None:
            row.update(extra(run_dir))
        queue.put(row)
    except Exception as err:  # report any failure as one line for the table; the other models go on
        queue.put({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})


def run_in_child(cfg: AnomalyConfig, run_dir: Path, extra: ExtraMeasure | None = None,
                 figures: bool = True) -> dict[str, Any]:
    """Fit + evaluate ``cfg`` in a spawned process and return its row.

    ``extra``: a picklable function (module level, or a ``functools.partial`` of one) called in the child
    with the run folder after the evaluation; its entries are added to the row. ``figures``: whether the
    evaluation writes its PNG figures (``RUN/evaluation/``).
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_fit_and_evaluate, args=(to_dict(cfg), str(run_dir), queue, extra, figures))
    process.start()
    while True:
        try:
            row = queue.get(timeout=5.0)
            break
        except queue_module.Empty:
            if not process.is_alive():  # killed (e.g. out of memory) before it could report
                row = {"error": f"the fit process exited with code {process.exitcode} before reporting "
                                "(killed, or out of memory?)"}
                break
    process.join()
    return row


def compare(base: AnomalyConfig, models: dict[str, dict[str, Any]], out_dir: str | Path) -> list[dict[str, Any]]:
    """Fit each model of ``models`` (name -> {"model": {...}, "train": {...}} overrides) on ``base``'s split.

    Writes ``out_dir/<name>/`` runs, ``compare.json`` and ``compare.md``; returns the rows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in models.items():
        data = to_dict(base)
        data["model"] = {"name": name, **overrides.get("model", {})}
        data["train"] = {**data.get("train", {}), **overrides.get("train", {})}
        cfg = from_dict(AnomalyConfig, data)
        row = {"model": name, **run_in_child(cfg, out_dir / name)}
        rows.append(row)
        (out_dir / "compare.json").write_text(json.dumps(rows, indent=2, default=str))
    (out_dir / "compare.md").write_text(compare_markdown(rows))
    return rows


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as one markdown table of :data:`COLUMNS` (3 decimals, never truncated); a failed
    model's row holds ``failed: <error>``."""
    return "\n".join(table_lines(["model", *COLUMNS], compare_rows(rows))) + "\n"


def compare_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The table rows of :func:`compare_markdown`: ``[model, *COLUMNS values]`` or ``[model, "failed: ..."]``."""
    return [[row["model"], f"failed: {row['error']}"] if "error" in row else [row["model"], *(row.get(k) for k in COLUMNS)]
            for row in rows]
