"""Benchmark: BYOL wafer embeddings vs a PCA baseline on WM-811K (../shared/data/wm811k).

Protocol (issue 2): train on the four ``train_*`` files without labels, select the checkpoint on
``val_data`` (leave-one-out kNN macro accuracy on a fixed validation subset), report on ``test_data``
with the training maps as the labelled kNN reference / retrieval database.

    python benchmarks/wafer_wm811k.py                 # the committed run (30 min training budget)
    python benchmarks/wafer_wm811k.py --minutes 2 --epochs 1 --limit 4000 --out /tmp/wm --results /tmp/wm  # smoke

Writes benchmarks/results/wafer_wm811k.{md,json}. Data: Wu, Jang and Chen, IEEE TSM 2015 (WM-811K),
as processed in faris-k/self-supervised-wafermaps (MIT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from provenance import machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from fabml.config import load_config, to_dict  # noqa: E402
from fabml.engine.hardware import peak_rss_mb  # noqa: E402
from fabml.wafer.config import WaferConfig  # noqa: E402
from fabml.wafer.embedding import PCABaseline  # noqa: E402
from fabml.wafer.evaluation import evaluate_embeddings  # noqa: E402
from fabml.wafer.pipeline import (  # noqa: E402
    SUMMARY_KEYS, embed_fn, map_labels, grid_shapes, load_dataset, metrics_markdown,
)
from fabml.wafer.runs import load_trained  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wm811k"
TRAIN_FILES = ["train_29_split", "train_20_split", "train_10_split", "train_1_split"]
PUBLISHED = "BYOL ResNet-18, 150 GPU epochs: kNN (k=5) macro accuracy 0.767 on test_data (faris-k/self-supervised-wafermaps)"
CPU_RECIPE = ROOT / "configs" / "wafer_cpu.yaml"  # tiny encoder, 32x32 maps, radial channel, 10 epochs in ~30 min




def pick(res: dict, extra: dict) -> dict:
    keys = ("knn_macro_acc", "knn_accuracy", "defect_precision@5", "defect_map", "d4_same_cluster_rate",
            "d4_mean_cosine", "silhouette", "silhouette_space", "silhouette_embedding_space", "n_clusters",
            "noise_ratio", "nmi", "ari", "shape_match@5", "shape_match_label_chance", "per_class")
    out = {k: res.get(k) for k in keys}
    out["defect_precision_at_5"] = res.get("defect_precision@5")
    out.update(extra)
    return out


def main() -> None:  # noqa: C901 (one linear script)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (recipe: 30)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs; the lr schedule anneals over them (recipe: 10, ~30 min on 2 CPU cores)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N maps of each split (smoke runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_wm811k")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the existing run in --out")
    parser.add_argument("--nproc", type=int, default=2,
                        help="training processes under torchrun (DDP, gloo on CPU); 2 one-thread processes "
                             "outrun one two-thread process on a 2-core machine")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: the benchmark needs ../shared/data/wm811k beside the project")

    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    overrides += [f"train.max_minutes={args.minutes}"] if args.minutes else []
    overrides += [f"data.limit={args.limit}"] if args.limit else []
    overrides += args.overrides
    cfg = load_config(WaferConfig, CPU_RECIPE, overrides)
    limit = args.limit or None
    train_src = [str(DATA / f"{name}.pkl.xz") for name in TRAIN_FILES]
    val_src, test_src = str(DATA / "val_data.pkl.xz"), str(DATA / "test_data.pkl.xz")

    t = time.perf_counter()
    ref = load_dataset(train_src, cfg, limit=limit)
    test = load_dataset(test_src, cfg, limit=limit)
    load_seconds = time.perf_counter() - t
    ref_labels, test_labels = map_labels(ref.meta, "train"), map_labels(test.meta, "test")
    shapes = [grid_shapes(ref), grid_shapes(test)]
    print(f"loaded {len(ref)} train and {len(test)} test maps in {load_seconds:.0f} s")

    results: dict = {}
    # Baseline first, so the process's peak RSS at that point is the baseline's.
    t = time.perf_counter()
    baseline = PCABaseline(dim=128, seed=cfg.train.seed).fit(ref.tensors)
    base_fit = time.perf_counter() - t
    res = evaluate_embeddings(baseline, ref.tensors, ref_labels, test.tensors, test_labels, cfg.eval, cfg.cluster,
                              shapes[0], shapes[1])
    results["baseline"] = pick(res, {"train_seconds": base_fit, "peak_rss_mb": peak_rss_mb(),
                                     "peak_rss_note": "benchmark process: all train and test maps loaded, PCA fit, evaluation",
                                     "eval_seconds": time.perf_counter() - t - base_fit,
                                     "method": "PCA (128 components) of the resized failed-die maps"})
    print(metrics_markdown({"baseline": res}, SUMMARY_KEYS))

    if not args.skip_train:
        t = time.perf_counter()
        train_files = train_src if not limit else train_src[:1]
        train_with_torchrun(overrides, train_files, val_src, args.out, args.nproc)
        train_seconds = time.perf_counter() - t
        epochs = len((args.out / "metrics.csv").read_text().strip().splitlines()) - 1
    else:
        train_seconds, epochs = None, None
    # The largest training process, as the trainer logged it per epoch (this process holds the eval data only).
    train_rss = float(pd.read_csv(args.out / "metrics.csv")["peak_rss_mb"].max()) if not args.skip_train else None
    run_cfg, method = load_trained(args.out, "best")
    t = time.perf_counter()
    for name, tta in (("byol", False), ("byol_tta_d4", True)):
        res = evaluate_embeddings(embed_fn(run_cfg, method, tta), ref.tensors, ref_labels, test.tensors, test_labels,
                                  run_cfg.eval, run_cfg.cluster, shapes[0], shapes[1])
        results[name] = pick(res, {"train_seconds": train_seconds, "epochs": epochs, "peak_rss_mb": train_rss,
                                   "peak_rss_note": f"largest of the {args.nproc} DDP training processes",
                                   "eval_seconds": time.perf_counter() - t})
        print(metrics_markdown({name: res}, SUMMARY_KEYS))
        t = time.perf_counter()

    results["settings"] = {"config": to_dict(run_cfg), "recipe": str(CPU_RECIPE.relative_to(ROOT)),
                           "overrides": overrides, "ddp_processes": args.nproc, "train_files": TRAIN_FILES,
                           "n_train": len(ref), "n_test": len(test), "limit": args.limit,
                           "selection": "best val_data leave-one-out kNN macro accuracy (3,000-map subset)",
                           "published_reference": PUBLISHED}
    results["machine"] = machine()
    write_results(results, args.results)


def train_with_torchrun(overrides: list[str], train_files: list[str], val_file: str, out: Path, nproc: int) -> None:
    """Train through the real CLI under torchrun (DDP); `--val` selects the checkpoint by kNN macro accuracy."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "fabml", "wafer", "train", "--data", ",".join(train_files), "--val", val_file,
           "--out", str(out), "--fresh", "--config", str(CPU_RECIPE)] + [arg for o in overrides for arg in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def write_results(results: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wafer_wm811k.json").write_text(json.dumps(results, indent=2, default=str))
    methods = [m for m in ("byol", "byol_tta_d4", "baseline") if m in results]
    rows = ["knn_macro_acc", "knn_accuracy", "defect_precision_at_5", "defect_map", "d4_same_cluster_rate",
            "d4_mean_cosine", "silhouette", "silhouette_space", "silhouette_embedding_space", "n_clusters",
            "noise_ratio", "nmi", "ari", "shape_match@5", "shape_match_label_chance", "train_seconds", "epochs",
            "peak_rss_mb"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    lines = ["# WM-811K wafer-map embeddings: BYOL vs PCA baseline", "",
             f"Machine: {results['machine']}", "",
             "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {r} | " + " | ".join(fmt(results[m].get(r)) for m in methods) + " |" for r in rows]
    lines += ["", "Per-class kNN recall (byol):", "", "| class | support | recall |", "|---|---|---|"]
    lines += [f"| {c['label']} | {c['support']} | {c['recall']:.3f} |" for c in results.get("byol", results["baseline"])["per_class"] or []]
    lines += ["", f"Published anchor: {PUBLISHED}", "", f"Settings: {results['settings']['recipe']} with", "", "```", json.dumps(results["settings"]["overrides"]), "```"]
    (folder / "wafer_wm811k.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder / 'wafer_wm811k.md'}")


if __name__ == "__main__":
    main()
