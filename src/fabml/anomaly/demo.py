"""The anomaly half of ``fabml demo``: generated panel images, PatchCore, evaluation, prediction, ONNX."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from fabml.console import out as results_console
from fabml.anomaly.config import AnomalyConfig
from fabml.config import from_dict
from fabml.data.synthetic_inspection import make_inspection_set


def run_anomaly_demo(out: Path, console: Console | None = None) -> dict[str, Path]:
    """Generate 1-channel panel images with spot and scratch defects, fit PatchCore on the good ones
    (pretrained EfficientNet-Lite0, bundled), evaluate on held-out images, predict a folder, export ONNX."""
    from fabml.anomaly.pipeline import evaluate, export, fit, predict

    console = console or results_console
    out = Path(out)
    start = time.perf_counter()
    data = make_inspection_set(out / "data", n_normal=120, n_defect=20, size=128, seed=0,
                               defect_types=("Spot", "Scratch"))
    console.print("== fabml demo: anomaly detection on generated panel images ==")
    cfg = from_dict(AnomalyConfig, {"model": {"name": "patchcore"}, "data": {"root": str(data), "image_size": [128, 128]}})
    report = fit(cfg, out / "run", fresh=True)
    console.print(f"split: {report.split}")
    for line in report.messages:
        if not line.startswith("warning: "):  # calibration already printed its warnings on stderr
            console.print(line)
    console.print(f"fitted PatchCore in {report.fit_seconds:.1f} s")
    evaluation = evaluate(out / "run")
    m = evaluation.metrics
    console.print(f"image AUROC {m['image_auroc']:.3f}, pixel AUROC {m['pixel_auroc']:.3f}, AUPRO {m['aupro']:.3f}, "
                  f"F1 at the calibrated threshold {m['f1_at_threshold']:.3f}, {evaluation.infer_ms_per_image:.0f} ms/image")
    predictions = predict(out / "run", [str(data / "Scratch")], out / "predictions")
    console.print(f"{int(predictions.table['anomalous'].sum())} of {len(predictions.table)} scratch images flagged; "
                  f"grades {predictions.table['grade'].value_counts().sort_index().to_dict()}")
    exported = export(out / "run", out / "run" / "model.onnx")
    console.print(f"ONNX export: max |ONNX - torch| score difference {exported.max_score_diff:.1e}")
    paths = {"run": out / "run", "metrics": evaluation.out_dir / "metrics.md", "overlays": evaluation.out_dir / "overlays.png",
             "roc": evaluation.out_dir / "roc.png", "predictions": out / "predictions" / "predictions.csv",
             "onnx": exported.path}
    console.print(f"done in {time.perf_counter() - start:.0f} s. Outputs:")
    for name, path in paths.items():
        console.print(f"  {name:11s} {path}")
    return paths
