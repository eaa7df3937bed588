"""Benchmark: ``draem_severity`` on magnetic-tile images, its five severity input modes and three fault probabilities.

Protocol (issue 10): the magnetic-tile split of ``benchmarks/anomaly_magnetic_tile.py`` (its ``data`` section:
fit on a fixed 70% of ``MT_Free``, 10% of that held out to calibrate; test on the other 30% and every defect
folder), 1 channel, trained with the CPU recipe ``configs/anomaly_severity_cpu.yaml`` (image size, widths, step
and time budget sized for 2 CPU cores). Runs through :func:`fabml.anomaly.ablation.ablation`, each training in
its own process, and reports per run:

- detection on the real defects: image AUROC, pixel AUROC, AUPRO;
- severity on 500 held-out synthetic faults of known severity pasted on the test normals: MAE, Spearman;
- the same on the calibration normals (``val_severity_spearman``): the best mode is chosen on this, never on
  the test split;
- on the real defects, Spearman between predicted severity and masked area x mean contrast (a proxy; no target);
- training seconds.

Stage 1 trains every ``severity_input_mode`` at the recipe's fault probability; stage 2 trains the best mode at
the other probabilities (0.3 and 0.8 beside the recipe's 0.5, whose run stage 1 already made).

Baseline (the simplest thing a user would try instead, :mod:`fabml.anomaly.severity_baseline`): hand-made
intensity statistics of each image (high percentiles, top-k% means and areas above thresholds, measured from the
image's median, raw and high-passed) fed to scikit-learn gradient-boosted trees, fitted on the recipe's
cut-paste faults (same generator and settings, probability included) pasted on the split's TRAINING normals only,
as many draws as the learned head's training saw (max_steps x batch_size), seed 1. It is scored on the very same
held-out faults (``held_out_fault_batches``: same images, fault seed 0) and real defects as the learned head;
its image AUROC uses the predicted severity as the anomaly score; it has no map (no pixel AUROC or AUPRO).

    python benchmarks/anomaly_severity.py                      # the committed run (about 2 hours on 2 cores)
    python benchmarks/anomaly_severity.py --baseline-only      # only the baseline (minutes), merged into the
        # results already written: the learned rows stay as they are (commit 259517f), the baseline row
        # records its own commit
    python benchmarks/anomaly_severity.py --size 64 --max-steps 2 --faults 20 --out /tmp/sev --results /tmp/sev
        # smoke run

Writes benchmarks/results/anomaly_severity.{md,json,png}. Data: Huang, Qiu, Yuan, "Surface defect saliency of
magnetic tile", The Visual Computer 2020.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fabml.anomaly.ablation import (  # noqa: E402
    _spearman,
    ablation,
    held_out_fault_batches,
    real_defect_batches,
)
from fabml.anomaly.config import AnomalyConfig  # noqa: E402
from fabml.config import from_dict  # noqa: E402
from fabml.anomaly.models.registry import model_config  # noqa: E402
from fabml.anomaly.severity_baseline import fit_on_training_faults  # noqa: E402
from fabml.console import err, fmt, table_lines  # noqa: E402
from fabml.data.anomaly_data import AnomalyImageDataset, make_split  # noqa: E402
from fabml.metrics.anomaly import image_auroc  # noqa: E402
from fabml.viz.ablation import plot_ablation  # noqa: E402
from provenance import commit, machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"
RECIPE = ROOT / "configs" / "anomaly_severity_cpu.yaml"
MODES = ["discriminative_only", "with_original", "with_reconstruction", "with_error_map", "multi_modal"]
KEYS = ["image_auroc", "pixel_auroc", "aupro", "severity_mae", "severity_spearman", "val_severity_spearman",
        "real_severity_spearman", "train_seconds"]
TARGETS = {"image_auroc": 0.90, "severity_spearman": 0.90}
LEARNED_COMMIT = "259517f"  # produced the learned rows (modes, probability) before rows carried their own commit
BASELINE = "baseline (intensity features + gradient-boosted trees)"
BASELINE_REGRESSOR = "gbr"
BASELINE_SEED = 1
# higher is better for every compared figure except the MAE
COMPARED = {"severity_spearman": True, "val_severity_spearman": True, "severity_mae": False,
            "real_severity_spearman": True, "image_auroc": True}


def pick(row: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures of one ablation row (``fit_seconds`` is the training time)."""
    if "error" in row:
        return {"error": row["error"]}
    out = {k: row.get(k) for k in KEYS if k != "train_seconds"}
    out["train_seconds"] = row.get("fit_seconds")
    return out


def best_mode(modes: dict[str, dict[str, Any]]) -> str:
    """The mode with the highest severity Spearman on the calibration normals' synthetic faults (not the test)."""
    def key(item: tuple[str, dict[str, Any]]) -> float:
        value = item[1].get("val_severity_spearman")
        return -math.inf if value is None or not math.isfinite(float(value)) else float(value)

    return max(modes.items(), key=key)[0]


def write_results(results: dict[str, Any], out: Path) -> None:
    """anomaly_severity.json (everything) and .md (two tables and the targets)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "anomaly_severity.json").write_text(json.dumps(results, indent=2, default=str))
    headers = ["mode", *KEYS]
    baseline = results.get("baseline")
    lines = ["# draem_severity on magnetic tile: severity input modes and fault probabilities", "",
             f"Machine: {json.dumps(results['machine'])}", "", f"Settings: {json.dumps(results['settings'])}", ""]
    if baseline and "machine" in baseline:
        lines += [f"The learned rows come from commit {results.get('learned_commit', LEARNED_COMMIT)} (machine "
                  f"above); the baseline row from commit {baseline.get('commit')}, on: "
                  f"{json.dumps(baseline['machine'])}", ""]
    lines += ["## Stage 1: severity input modes (fault probability "
              f"{results['settings']['recipe_probability']}), and the baseline", ""]
    body = [[mode, *(fmt(row.get(k)) for k in KEYS)] if "error" not in row else [mode, f"failed: {row['error']}"]
            for mode, row in results["modes"].items()]
    if baseline:
        body.append([BASELINE, *(fmt(baseline.get(k)) for k in KEYS)])
    lines += table_lines(headers, body)
    best = results.get("best_mode")
    lines += ["", f"Best mode, chosen on val_severity_spearman (synthetic faults on the calibration normals): {best}",
              "", "## Stage 2: fault probability for the best mode", ""]
    body = [[p, *(fmt(row.get(k)) for k in KEYS)] if "error" not in row else [p, f"failed: {row['error']}"]
            for p, row in results["probability"].items()]
    lines += table_lines(["probability", *KEYS], body)
    if baseline:
        lines += ["", "## Does the learned head beat the model-free baseline?", ""]
        lines += comparison_lines(results) + [""] + baseline_lines(baseline)
    lines += ["", "## Targets (2 CPU cores, at most 15 minutes of training per model)", ""]
    for line in results["targets"]:
        lines.append(f"- {line}")
    lines += ["", "real_severity_spearman: Spearman between predicted severity and masked area x mean contrast of "
              "each real defect (a proxy, reported without a target).", ""]
    (out / "anomaly_severity.md").write_text("\n".join(lines))
    write_figure(results, out / "anomaly_severity.png")


def learned_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every learned run that finished, labelled: the five modes and the best mode's other probabilities."""
    rows = {mode: row for mode, row in results["modes"].items() if "error" not in row}
    recipe_p = str(results["settings"]["recipe_probability"])
    best = results.get("best_mode")
    rows.update({f"{best} p={p}": row for p, row in results.get("probability", {}).items()
                 if p != recipe_p and "error" not in row})
    return rows


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """Plain sentences: the chosen best mode against the baseline, figure by figure, and how many learned runs
    beat the baseline on each figure."""
    base, best_name = results["baseline"], results.get("best_mode")
    best, rows = results["modes"].get(best_name, {}), learned_rows(results)
    lines = []
    for key, higher in COMPARED.items():
        b, v = base.get(key), best.get(key)
        if not _finite(b) or not _finite(v):
            lines.append(f"- {key}: not comparable (baseline {fmt(b)}, best mode {fmt(v)})")
            continue
        wins = [name for name, row in rows.items() if _finite(row.get(key))
                and (row[key] > b if higher else row[key] < b)]
        verdict = "beats" if (v > b if higher else v < b) else "does not beat"
        lines.append(f"- {key} ({'higher' if higher else 'lower'} is better): the best mode ({best_name}) "
                     f"{verdict} the baseline, {fmt(v)} against {fmt(b)} (difference {fmt(float(v) - float(b))}); "
                     f"{len(wins)} of {len(rows)} learned runs beat it"
                     + (f" ({', '.join(wins)})" if 0 < len(wins) < len(rows) else ""))
    return lines


def baseline_lines(baseline: dict[str, Any]) -> list[str]:
    """How the baseline was made, in one paragraph."""
    return [f"Baseline: {baseline['method']} Fitted on {baseline['train_faults']} draws ({baseline['train_faulty']} "
            f"faulty) on {baseline['train_normals']} training normals in {fmt(baseline['train_seconds'])} s; "
            f"val_severity_mae {fmt(baseline.get('val_severity_mae'))}. It has no anomaly map (pixel AUROC and "
            "AUPRO n/a); its image AUROC scores each real test image by its predicted severity."]


def write_figure(results: dict[str, Any], path: Path) -> None:
    """One bar per learned run and one for the baseline, a panel per figure (:func:`plot_ablation`)."""
    rows = dict(learned_rows(results))
    if results.get("baseline"):
        rows["baseline"] = results["baseline"]
    keys = ["image_auroc", "severity_mae", "severity_spearman", "val_severity_spearman", "real_severity_spearman",
            "train_seconds"]

    def number(value: Any) -> float:
        return float(value) if _finite(value) else math.nan

    plot_ablation(list(rows), {k: [number(r.get(k)) for r in rows.values()] for k in keys}, path,
                  "draem_severity on magnetic tile, and the model-free baseline")


def target_lines(best: dict[str, Any]) -> list[str]:
    """One line per target: met, or missed by how much (best mode's row)."""
    lines = []
    for key, floor in TARGETS.items():
        value = best.get(key)
        if value is None or not math.isfinite(float(value)):
            lines.append(f"{key} >= {floor}: not measured")
        elif value >= floor:
            lines.append(f"{key} >= {floor}: met ({value:.3f})")
        else:
            lines.append(f"{key} >= {floor}: missed by {floor - value:.3f} ({value:.3f})")
    return lines


def measure_baseline(raw: dict[str, Any], n_faults: int, fault_seed: int = 0) -> dict[str, Any]:
    """The baseline's row: fitted on faults on the split's training normals, scored like the learned head."""
    cfg = from_dict(AnomalyConfig, raw)
    size = (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    channels = cfg.data.channels or 1
    settings = {k: v for k, v in raw["model"].items() if k != "name"}
    faults = model_config(raw["model"]["name"], {**settings, "image_size": list(size), "in_chans": channels}).faults
    train_cfg = raw.get("train", {})
    n_train = int(train_cfg["max_steps"]) * int(train_cfg["batch_size"])
    before, rev, where = os.getloadavg(), commit(), machine()
    split = make_split(cfg.data)
    dataset = AnomalyImageDataset(split.train, size, channels)
    start = time.perf_counter()
    train = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    err.print(f"baseline: {n_train} fault draws on {len(train)} training normals ...")
    model = fit_on_training_faults(train, faults, n_train, BASELINE_REGRESSOR, BASELINE_SEED)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {}
    for part, prefix in (("test", ""), ("val", "val_")):
        true, pred = [], []
        for batch in held_out_fault_batches(split, size, channels, faults, n_faults, fault_seed, 16, part):
            true.append(batch.severity.numpy())
            pred.append(model.predict_images(batch.images))
        t, p = np.concatenate(true), np.concatenate(pred)
        row.update({f"{prefix}severity_mae": float(np.abs(p - t).mean()),
                    f"{prefix}severity_spearman": _spearman(t, p), f"{prefix}severity_n": int(len(t))})
    proxy, pred = [], []
    for images, proxies in real_defect_batches(split, size, channels):
        proxy += proxies
        pred.append(model.predict_images(images))
    x, p = np.asarray(proxy), np.concatenate(pred)
    keep = np.isfinite(x)
    row.update(real_severity_spearman=_spearman(x[keep], p[keep]), real_severity_n=int(keep.sum()))
    test = AnomalyImageDataset(split.test, size, channels)
    scores = np.concatenate([model.predict_images(torch.stack([test[i]["image"] for i in
                                                                range(j, min(len(test), j + 16))]))
                             for j in range(0, len(test), 16)])
    row["image_auroc"] = image_auroc(np.array([r.label for r in split.test]), scores)
    row.update(pixel_auroc=None, aupro=None, train_seconds=seconds, train_faults=n_train,
               train_faulty=model.train_faulty, train_normals=len(train), regressor=BASELINE_REGRESSOR,
               seed=BASELINE_SEED, fault_probability=faults.probability, commit=rev,
               loadavg_before=[round(v, 2) for v in before], loadavg_after=[round(v, 2) for v in os.getloadavg()],
               method="per-image intensity statistics (fabml.anomaly.severity_baseline.severity_features: "
                      "quantiles, top-k% means and areas above thresholds of the image minus its median, raw and "
                      "high-passed; 32 features) -> StandardScaler -> scikit-learn HistGradientBoostingRegressor "
                      f"(seed {BASELINE_SEED}), clipped to [0, {faults.severity_max}]; trained on the recipe's "
                      f"CutPasteFaults (probability {faults.probability}) pasted on the training normals only.")
    return {**row, "machine": where}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="image size (default: the recipe's)")
    parser.add_argument("--max-steps", type=int, default=None, help="step budget per run (smoke runs)")
    parser.add_argument("--faults", type=int, default=500, help="held-out synthetic faults per run")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--probabilities", default="0.3,0.5,0.8")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_severity")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--baseline-only", action="store_true",
                        help="compute only the model-free baseline and merge it into the results already written")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: the benchmark needs ../shared/data/magnetic_tile beside the project")

    raw = yaml.safe_load(RECIPE.read_text())
    raw["data"]["root"] = str(DATA)
    if args.size:
        raw["data"]["image_size"] = [args.size, args.size]
    if args.max_steps is not None:
        raw.setdefault("train", {}).update(max_steps=args.max_steps, max_minutes=0.0)
    base = from_dict(AnomalyConfig, raw)
    recipe_p = float(base.model.get("faults", {}).get("probability", 0.5))
    if args.baseline_only:
        path = args.results / "anomaly_severity.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: --baseline-only merges into results already written; run the "
                             "full benchmark first")
        results = json.loads(path.read_text())
        results.setdefault("learned_commit", results["machine"].get("commit", LEARNED_COMMIT))
        results["baseline"] = measure_baseline(raw, args.faults)
        write_results(results, args.results)
        print((args.results / "anomaly_severity.md").read_text())
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    probabilities = [float(p) for p in args.probabilities.split(",") if p.strip()]

    rows = ablation(base, [("model.severity_input_mode", modes)], args.out / "modes", n_faults=args.faults)
    results: dict[str, Any] = {"modes": {r["model.severity_input_mode"]: pick(r) for r in rows}}
    best = best_mode(results["modes"])
    results["best_mode"] = best
    results["probability"] = {str(recipe_p): results["modes"][best]} if recipe_p in probabilities else {}
    others = [p for p in probabilities if p != recipe_p]
    if others:
        raw_best = {**raw, "model": {**raw["model"], "severity_input_mode": best}}
        rows = ablation(from_dict(AnomalyConfig, raw_best), [("model.faults.probability", others)],
                        args.out / "probability", n_faults=args.faults)
        results["probability"].update({str(r["model.faults.probability"]): pick(r) for r in rows})
    results["probability"] = dict(sorted(results["probability"].items(), key=lambda kv: float(kv[0])))
    results["targets"] = target_lines(results["modes"][best])
    results["settings"] = {"recipe": str(RECIPE.relative_to(ROOT)), "model": raw["model"],
                           "train": raw.get("train", {}), "image_size": raw["data"]["image_size"],
                           "recipe_probability": recipe_p, "held_out_faults": args.faults,
                           "data": "magnetic_tile (Huang, Qiu, Yuan, The Visual Computer 2020)"}
    results["machine"] = machine()
    results["learned_commit"] = results["machine"]["commit"]
    results["baseline"] = measure_baseline(raw, args.faults)
    write_results(results, args.results)
    print((args.results / "anomaly_severity.md").read_text())


if __name__ == "__main__":
    main()
