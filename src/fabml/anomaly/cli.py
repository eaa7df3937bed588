"""``fabml anomaly ...``: argument parsing and printing only; the work is in :mod:`fabml.anomaly.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fabml.anomaly.config import anomaly_config, compare_configs, parse_models
from fabml.console import print_table
from fabml.console import out as console

app = typer.Typer(help="Visual anomaly detection: fit on good images, score, threshold, grade, export.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/anomaly_*.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: --set model.coreset_ratio=0.05")]
RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run folder written by `fabml anomaly fit`.")]
DataOpt = Annotated[Optional[str], typer.Option(help="Data root: MT_<type>/ folders, or use --set data.normal_dir=...")]
SizeOpt = Annotated[Optional[int], typer.Option(help="Square image size (sets data.image_size).")]


@app.command()
def fit(
    model: Annotated[str, typer.Option(help="patchcore | padim | stfpm | fastflow | draem | draem_severity | efficient_ad | autoencoder | reference")],
    data: DataOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/anomaly/MODEL).")] = None,
    image_size: SizeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed gradient-model run exactly.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the run's checkpoints and start over.")] = False,
) -> None:
    """Fit MODEL on the normal training images, calibrate the threshold on held-out normals, save the run.

    \b
    Accepted data (masks and annotation files are matched to images by file stem):
    | data           | where                         | example              |
    |----------------|-------------------------------|----------------------|
    | type folders   | --data ROOT: ROOT/<type>/     | ROOT/Good/a.png      |
    | folders        | data.normal_dir, abnormal_dir | normal/ bad/<type>/  |
    | PNG masks      | beside, <type>/masks/,        | b.png beside b.jpg   |
    |                | ROOT/masks/<type>/, mask_dir  |                      |
    | VOC .xml       | where masks go, or            | <bndbox>, 1-based    |
    |                | data.annotation_path=DIR      |                      |
    | YOLO .txt      | same; classes.txt for names   | 0 0.22 0.55 0.25 0.5 |
    | box .txt       | same; pixels, x2 y2 exclusive | 2,3,7,8,scratch      |
    | COCO .json     | data.annotation_path=FILE     | bbox + segmentation  |
    | MATLAB .mat    | same; data.mask_variable=NAME | nonzero = defect     |
    | ref. pairs CSV | data.pairs_csv=FILE           | image,reference,label|
    | golden images  | data.reference_image=FILE, or | --model reference    |
    |                | data.reference_pattern + _dir | (golden template)    |
    data.annotations: auto|masks|voc|coco|yolo|boxes_txt|mat (auto: by suffix,
    .txt by content). A mask-like folder beside the type folders (masks/, gt/,
    labels/, or all-binary images) is read as masks, never as a defect type.
    """
    from fabml.anomaly.pipeline import fit as fit_run
    from fabml.engine.distributed import is_main_process

    cfg = anomaly_config(config, set_, model, data, image_size)
    run_dir = out or Path("runs/anomaly") / model
    report = fit_run(cfg, run_dir, resume=resume, fresh=fresh)
    if not is_main_process():
        return
    console.print(f"split: {report.split}")
    for line in report.messages:
        if not line.startswith("warning: "):  # calibration already printed its warnings on stderr
            console.print(line)
    console.print(f"fitted {report.model} in {report.fit_seconds:.1f} s (calibration {report.calibration_seconds:.1f} s, "
                  f"peak memory {report.peak_rss_mb:,.0f} MB) -> {run_dir / 'model.pt'}")


@app.command()
def predict(
    run: RunOpt,
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Image files and/or folders of images.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/predictions).")] = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="Also write normalised maps (maps.npz).")] = False,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Write overlays.png.")] = True,
    pairs: Annotated[Optional[str], typer.Option(help="Reference mode: CSV image,reference (instead of INPUTS).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference mode: one golden image for every input.")] = None,
    reference_dir: Annotated[Optional[str], typer.Option(help="Reference mode: folder of golden images.")] = None,
    reference_pattern: Annotated[Optional[str], typer.Option(
        help=r"Reference mode: regex on each image's stem; group 1 (or 'ref') = its golden image's stem, e.g. (.+)_\d+")] = None,
) -> None:
    """Score images: normalised score (threshold 0.5), pass/fail, 5-level grade, defect area (and severity, for a
    model with a severity head); writes predictions.csv.

    A reference-mode run (--model reference) compares each image with its own golden image, paired by --pairs,
    --reference or --reference-pattern with --reference-dir (default: the run's data.reference_* settings);
    predictions.csv then also names the reference and the alignment (offset, angle, residual_px).
    """
    from fabml.anomaly.inputs import ReferenceSource
    from fabml.anomaly.pipeline import predict as predict_run

    out = out or run / "predictions"
    source = ReferenceSource(pairs, reference, reference_pattern, reference_dir)
    result = predict_run(run, list(inputs or []), out, overlays=overlays, save_maps=save_maps, references=source)
    severity = "severity" in result.table.columns
    print_table(["image", "score", "decision", "grade", *(["severity"] if severity else [])],
                [[Path(row["path"]).name, row["score"], "FAIL" if row["anomalous"] else "pass",
                  f"{row['grade']} {row['grade_name']}", *([row["severity"]] if severity else [])]
                 for _, row in result.table.head(20).iterrows()])
    if len(result.table) > 20:
        console.print(f"(first 20 of {len(result.table)} images; all in predictions.csv)")
    n_fail = int(result.table["anomalous"].sum())
    console.print(f"{len(result.table)} images, {n_fail} anomalous; {result.infer_ms_per_image:.1f} ms/image -> "
                  f"{out / 'predictions.csv'}")


@app.command()
def evaluate(
    run: RunOpt,
    data: Annotated[Optional[str], typer.Option(help="Labelled data root to test on (default: the run's test split).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/evaluation).")] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write overlay, ROC, histogram, grade PNGs.")] = True,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="Also keep the normalised maps (OUT/maps.npz, "
                                            "rows in predictions.csv order).")] = False,
) -> None:
    """Image AUROC, pixel AUROC, AUPRO, F1-max beside the F1 of calling everything anomalous and the anomalous
    share, F1 at the calibrated threshold, box hit rate and region recall (with masks), per defect type."""
    from fabml.anomaly.pipeline import evaluate as evaluate_run
    from fabml.anomaly.report import METRIC_KEYS

    report = evaluate_run(run, out, data, figures=figures, save_maps=save_maps)
    keys = (*METRIC_KEYS, "infer_ms_per_image", "n_images")
    print_table(["metric", "value"], [[key, report.metrics.get(key)] for key in keys])
    if report.per_type:
        pixels = any("box_hit_rate" in row for row in report.per_type.values())
        print_table(["type", "n", "image AUROC", "flagged at threshold", *(["box hit rate"] if pixels else [])],
                    [[kind, row.get("count", ""), row.get("image_auroc"),
                      row.get("recall_at_threshold", row.get("false_positive_rate")),
                      *([row.get("box_hit_rate", "")] if pixels else [])]
                     for kind, row in report.per_type.items()])
    for note in report.metrics.get("notes", []):
        console.print(f"note: {note}")
    console.print(f"-> {report.out_dir}")


@app.command()
def export(
    run: RunOpt,
    out: Annotated[Optional[Path], typer.Option(help="ONNX file (default RUN/model.onnx).")] = None,
    samples: Annotated[int, typer.Option(help="Images used for the torch/ONNX parity check.")] = 4,
    tolerance: Annotated[float, typer.Option(help="Largest allowed torch/ONNX difference.")] = 1e-4,
) -> None:
    """Write one ONNX file (resize, scaling, model, scoring, normalisation inside) and check its parity (NAME.parity.json)."""
    from fabml.anomaly.pipeline import export as export_run

    report = export_run(run, out, samples, tolerance)
    console.print(f"wrote {report.path}")
    severity = "" if report.max_severity_diff is None else f", severity {report.max_severity_diff:.2e}"
    console.print(f"max |ONNX - torch|: score {report.max_score_diff:.2e}, map {report.max_map_diff:.2e}{severity} "
                  f"on {report.n_images} images -> {report.parity}")


@app.command()
def compare(
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = "patchcore,padim,stfpm,fastflow,draem,efficient_ad,autoencoder",
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for the runs and the table.")] = Path("runs/anomaly-compare"),
    image_size: SizeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fit several models on the same split; one table of metrics, fit time, ms/image, size and peak memory.

    Per-model settings go in the config file under ``per_model: {NAME: {model: {...}, train: {...}}}``.
    """
    from fabml.anomaly.compare import COLUMNS, compare as compare_runs, compare_rows

    base, per_model = compare_configs(parse_models(models), config, set_, data, image_size)
    rows = compare_runs(base, per_model, out)
    print_table(["model", *COLUMNS], compare_rows(rows))
    console.print(f"-> {out / 'compare.md'}")


@app.command()
def ablation(
    model: Annotated[str, typer.Option(help="The model every combination trains, e.g. draem_severity.")],
    grid: Annotated[list[str], typer.Option("--grid", "-g", help="An axis KEY=V1,V2 (repeat for more axes); a key "
                                            "without a config section is a model setting: severity_input_mode=a,b")],
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for the runs, the table and the figure.")] = Path("runs/anomaly-ablation"),
    image_size: SizeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    faults: Annotated[int, typer.Option(help="Held-out synthetic faults of known severity for MAE and Spearman.")] = 500,
    fault_seed: Annotated[int, typer.Option(help="Seed of the held-out synthetic faults.")] = 0,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Each run's evaluation figures too.")] = False,
) -> None:
    """Train every combination of the --grid axes on one split, each in its own process; one table and one figure.

    Detection metrics on the real test set, severity MAE and Spearman on held-out synthetic faults, training time:
    OUT/ablation.md, .csv, .json and ablation.png.
    """
    from fabml.anomaly.ablation import ablation as run_ablation, parse_grid, table_rows

    axes = parse_grid(grid)
    base = anomaly_config(config, set_, model, data, image_size)
    rows = run_ablation(base, axes, out, n_faults=faults, fault_seed=fault_seed, figures=figures)
    print_table(*table_rows(rows, [k for k, _ in axes]))
    console.print(f"-> {out / 'ablation.md'}, {out / 'ablation.png'}")
