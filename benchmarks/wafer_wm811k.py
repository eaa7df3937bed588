"""Benchmark: learned wafer embeddings vs every model-free baseline on WM-811K (../shared/data/wm811k).

Protocol (issues 2 and 11): train on the four ``train_*`` files without labels, select the checkpoint on
``val_data`` (leave-one-out kNN macro accuracy on a fixed validation subset), report on ``test_data``
with the training maps as the labelled kNN reference / retrieval database. In the same run, on the same maps:

- ``baseline_pca``, ``baseline_raw``, ``baseline_wu2015``: the model-free embeddings of
  :mod:`fabml.wafer.baselines` (``fabml wafer embed --method``), fitted on the training maps without labels;
  wu2015 at its own map side (``baseline.wu_size``), read again from the original die grids.
- ``learned``: the job's default learned embedding as ``fabml wafer embed`` makes it with the CPU recipe
  (``configs/wafer_cpu.yaml``): its encoder with the embeddings averaged over the D4 orbit (``eval.tta_d4``),
  PCA-whitened when the recipe sets ``eval.whiten_dim`` (the number of directions chosen on ``val_data`` among
  :data:`fabml.wafer.whitening.DIMS`, 0 = none, the whitening fitted on the training maps without labels);
  ``method`` names its objective. When the recipe sets ``byol.aux_features`` (BYOL plus a label-free read-out of
  hand-crafted features of each map), ``learned_raw`` is the same encoder without D4 averaging (the raw-encoder
  figures of the targets).
- ``byol``: the seed's BYOL objective, the raw encoder: the recipe's own run when it has no auxiliary target, else
  a second run of the recipe with ``byol.aux_features=`` (off), in ``<out>_byol``, trained the same way.
- ``fused``: ``fabml wafer embed --method fused``: ``learned`` joined with the baseline ``baseline.fuse_with``
  (:mod:`fabml.wafer.fusion`), its weight chosen on ``val_data`` (kNN macro accuracy against the training maps,
  :func:`fabml.wafer.fusion.choose_weight`); reported on ``test_data`` at that weight only.

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
from fabml.wafer.baselines import BASELINES, build_baseline  # noqa: E402
from fabml.wafer.config import WaferConfig  # noqa: E402
from fabml.wafer.embedder import baseline_tensors, embed_fn, fit_fusion_baseline  # noqa: E402
from fabml.wafer.embedding import embed_tensors  # noqa: E402
from fabml.wafer.evaluation import SUMMARY_KEYS, evaluate_embeddings, metrics_markdown, outline_keys  # noqa: E402
from fabml.wafer.fusion import FusedEmbedder, choose_weight  # noqa: E402
from fabml.wafer.maps import grid_shapes, load_dataset, map_labels  # noqa: E402
from fabml.wafer.runs import load_trained  # noqa: E402
from fabml.wafer.whitening import Whitening, WhitenedEmbedder, choose_dim  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wm811k"
TRAIN_FILES = ["train_29_split", "train_20_split", "train_10_split", "train_1_split"]
PUBLISHED = "BYOL ResNet-18, 150 GPU epochs: kNN (k=5) macro accuracy 0.767 on test_data (faris-k/self-supervised-wafermaps)"
CPU_RECIPE = ROOT / "configs" / "wafer_cpu.yaml"
TRAIN_TIME = "benchmark_train_seconds.json"
"""Written into the run folder after training: the wall time, so a later ``--skip-train`` run reports it."""
METHODS = ("learned", "learned_raw", "fused", "byol", "baseline_pca", "baseline_raw", "baseline_wu2015")
KEYS = ("knn_macro_acc", "knn_accuracy", "defect_precision@5", "defect_map", "d4_same_cluster_rate", "d4_mean_cosine",
        "silhouette", "silhouette_space", "silhouette_embedding_space", "n_clusters", "noise_ratio",
        "largest_cluster_share", "dominant_cluster", "nmi", "ari", "shape_match@5", "shape_match_label_chance",
        "outline_match@5", "outline_match_label_chance", "embedding_dim", "embed_seconds")
BASELINE_METHODS = {
    "pca": "PCA (baseline.pca_dim components) of the resized failed-die maps, cosine kNN",
    "raw": "raw failed-die pixels, area-averaged to baseline.raw_size, cosine kNN",
    "wu2015": "Wu, Jang and Chen (2015) features: 13 region densities, Radon mean/std profiles, largest-region "
              "geometry; standardised, cosine kNN",
}
TARGETS = {"knn_macro_acc": 0.77, "margin_over_best_baseline": 0.10, "defect_precision_at_5": 0.80,
           "d4_same_cluster_rate (raw encoder)": 0.95, "shape_match@5 / label chance": 2.0, "silhouette": 0.5}


def pick(res: dict, n_embedded: int, extra: dict) -> dict:
    """The figures of one method in the issue's names (``defect_precision_at_5``, ``per_class_recall``...)."""
    out = {k: res.get(k) for k in KEYS}
    out["defect_precision_at_5"] = res.get("defect_precision@5")
    out["shape_match_at_5"] = res.get("shape_match@5")
    out["per_class"] = res.get("per_class")
    out["per_class_recall"] = {c["label"]: c["recall"] for c in res.get("per_class") or []}
    out["embed_samples_per_second"] = n_embedded / res["embed_seconds"] if res.get("embed_seconds") else None
    out.update(extra)
    return out


def main() -> None:  # noqa: C901 (one linear script)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (recipe: 30)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs; the lr schedule anneals over them")
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
    if limit:
        train_src = train_src[:1]

    t = time.perf_counter()
    ref = load_dataset(train_src, cfg, limit=limit)
    test = load_dataset(test_src, cfg, limit=limit)
    load_seconds = time.perf_counter() - t
    labels = map_labels(ref.meta, "train"), map_labels(test.meta, "test")
    shapes = grid_shapes(ref), grid_shapes(test)
    outlines = {"ref_outlines": outline_keys(ref.tensors), "test_outlines": outline_keys(test.tensors)}
    n_embedded = len(ref) + len(test)
    print(f"loaded {len(ref)} train and {len(test)} test maps in {load_seconds:.0f} s", flush=True)

    results: dict = {}
    for name in BASELINES:  # model-free first, so the process's peak RSS at that point is theirs
        t = time.perf_counter()
        base = build_baseline(name, cfg.baseline, cfg.train.seed)
        ref_x = baseline_tensors(base, train_src, ref, cfg) if not limit else ref.tensors
        test_x = baseline_tensors(base, test_src, test, cfg) if not limit else test.tensors
        base.fit(ref_x, cfg.eval.embed_batch)
        fit_seconds = time.perf_counter() - t
        res = evaluate_embeddings(base, ref_x, labels[0], test_x, labels[1], cfg.eval, cfg.cluster, *shapes,
                                  **outlines)
        results[f"baseline_{name}"] = pick(res, n_embedded, {
            "method": BASELINE_METHODS[name], "input_size": base.input_size,
            "train_seconds": fit_seconds, "samples_per_second": n_embedded / (fit_seconds + res["embed_seconds"]),
            "samples_per_second_note": "maps read, fitted and embedded per second (no training)",
            "peak_rss_mb": peak_rss_mb(), "peak_rss_note": "benchmark process so far (all maps loaded)"})
        print(metrics_markdown({f"baseline_{name}": res}, SUMMARY_KEYS), flush=True)

    # the recipe's run ("learned", and its raw encoder "learned_raw"); when the recipe adds an auxiliary target, the
    # seed's BYOL objective ("byol") is a second run of the same recipe without it, in <out>_byol
    aux = cfg.byol.aux_features
    runs = {"learned": (args.out, overrides)}
    if aux:
        runs["byol"] = (args.out.with_name(args.out.name + "_byol"), overrides + ["byol.aux_features="])
    trained: dict[str, tuple] = {}
    for role, (folder, run_overrides) in runs.items():
        if not args.skip_train:
            t = time.perf_counter()
            train_with_torchrun(run_overrides, train_src, val_src, folder, args.nproc)
            train_seconds, seconds_source = time.perf_counter() - t, "wall time of the torchrun training command"
            (folder / TRAIN_TIME).write_text(json.dumps({"train_seconds": train_seconds}))
        elif (folder / TRAIN_TIME).is_file():  # --skip-train: the wall time the training invocation recorded
            train_seconds = float(json.loads((folder / TRAIN_TIME).read_text())["train_seconds"])
            seconds_source = f"wall time of the torchrun training command, as recorded in {TRAIN_TIME} when it ran"
        else:
            train_seconds = float(pd.read_csv(folder / "metrics.csv")["epoch_seconds"].sum())
            seconds_source = "sum of the run's epoch_seconds (--skip-train, no recorded wall time)"
        log = pd.read_csv(folder / "metrics.csv")
        run_cfg, method = load_trained(folder, "best")
        world = int(json.loads((folder / "run.json").read_text()).get("world_size", 1))
        shared = {"train_seconds": train_seconds, "train_seconds_source": seconds_source,
                  "epochs": int(log["epoch"].max()), "samples_per_second": float(log["samples_per_s"].median()),
                  "samples_per_second_note": f"training maps per second over all {world} DDP processes (median "
                                             "epoch, validation excluded)",
                  "epoch_seconds": float(log["epoch_seconds"].median()), "peak_rss_mb": float(log["peak_rss_mb"].max()),
                  "peak_rss_note": f"largest of the {args.nproc} DDP training processes", "run_folder": str(folder)}
        trained[role] = (folder, run_cfg, method, world, shared)
    trained.setdefault("byol", trained["learned"])

    _, run_cfg, method, world, _ = trained["learned"]
    learned_tta = run_cfg.eval.tta_d4
    # the learned embedding's whitening (eval.whiten_dim > 0 in the recipe): the directions chosen on val_data
    # (0 = none among them), fitted on the training maps without their labels, as `embed --method learned` does
    t = time.perf_counter()
    val = load_dataset(val_src, run_cfg, limit=limit)
    val_labels = map_labels(val.meta, "val")
    encoder_fn = embed_fn(run_cfg, method, learned_tta)
    ref_emb, val_emb = (embed_tensors(encoder_fn, data.tensors, run_cfg.eval.embed_batch) for data in (ref, val))
    whiten_dim, whiten_on_val = (choose_dim(ref_emb, labels[0], val_emb, val_labels, k=run_cfg.eval.knn_k)
                                 if run_cfg.eval.whiten_dim else (0, {}))
    whitening = Whitening(whiten_dim).fit(ref_emb) if whiten_dim else None
    learned_fn = WhitenedEmbedder(encoder_fn, whitening) if whitening else encoder_fn
    white = whitening.transform if whitening else (lambda emb: emb)
    whiten_seconds = time.perf_counter() - t
    print(f"whitening: kNN macro accuracy on val_data by eval.whiten_dim {whiten_on_val}; chosen {whiten_dim}",
          flush=True)
    whitened_text = (f" + PCA whitening to {whiten_dim} directions fitted on the training maps (eval.whiten_dim, "
                     "chosen on val_data)" if whitening else "")
    objective = "BYOL" + (f" + read-out of the {aux} features (byol.aux_features={aux}, byol.aux_weight="
                          f"{run_cfg.byol.aux_weight})" if aux else "")
    rows = [("learned", "learned", learned_tta, objective + (" + D4-averaged embeddings (eval.tta_d4)" if learned_tta
                                                             else ", raw encoder") + whitened_text),
            ("byol", "byol", False, "BYOL (the seed's objective, the same recipe without byol.aux_features), raw encoder"
             if aux else "BYOL, raw encoder")]
    if aux:
        rows.insert(1, ("learned_raw", "learned", False, objective + ", raw encoder"))
    for name, role, tta, text in rows:
        _, role_cfg, role_method, _, shared = trained[role]
        fn = learned_fn if name == "learned" else embed_fn(role_cfg, role_method, tta)
        res = evaluate_embeddings(fn, ref.tensors, labels[0], test.tensors, labels[1],
                                  role_cfg.eval, role_cfg.cluster, *shapes, **outlines)
        extra = {"whiten_dim": whiten_dim, "val_knn_macro_acc_by_whiten_dim": whiten_on_val,
                 "whiten_choose_seconds": whiten_seconds} if name == "learned" else {}
        results[name] = pick(res, n_embedded, {"method": text, **shared, **extra})
        print(metrics_markdown({name: res}, SUMMARY_KEYS), flush=True)

    # fused: the learned embedding joined with baseline.fuse_with, the weight chosen on val_data
    t = time.perf_counter()
    fitted = fit_fusion_baseline(run_cfg, ref)
    parts = {"ref": (white(ref_emb), fitted.embed(ref.tensors)), "val": (white(val_emb), fitted.embed(val.tensors))}
    weight, on_val = choose_weight(parts["ref"], labels[0], parts["val"], val_labels, k=run_cfg.eval.knn_k)
    choose_seconds = time.perf_counter() - t
    print(f"fused: kNN macro accuracy on val_data by weight {on_val}; chosen {weight}", flush=True)
    res = evaluate_embeddings(FusedEmbedder(learned_fn, fitted, weight), ref.tensors, labels[0], test.tensors,
                              labels[1], run_cfg.eval, run_cfg.cluster, *shapes, **outlines)
    results["fused"] = pick(res, n_embedded, {
        "method": f"learned (D4-averaged{', whitened' if whitening else ''}) joined with {run_cfg.baseline.fuse_with} "
                  f"at fusion_weight {weight} "
                  "(chosen on val_data), fabml.wafer.fusion",
        **trained["learned"][4], "fusion_weight": weight, "val_knn_macro_acc_by_weight": on_val,
        "fusion_choose_seconds": choose_seconds})
    print(metrics_markdown({"fused": res}, SUMMARY_KEYS), flush=True)

    results["targets"] = targets(results)
    results["settings"] = {"config": to_dict(run_cfg), "recipe": str(CPU_RECIPE.relative_to(ROOT)),
                           "overrides": overrides, "ddp_processes": world, "skip_train": args.skip_train, "train_files": TRAIN_FILES,
                           "n_train": len(ref), "n_test": len(test), "limit": args.limit,
                           "load_seconds": load_seconds,
                           "selection": "best val_data leave-one-out kNN macro accuracy (3,000-map subset)",
                           "published_reference": PUBLISHED}
    results["machine"] = machine()
    write_results(results, args.results)


def targets(results: dict) -> dict:
    """Each target of issue 11 with the measured value and whether it is met."""
    best_base = max((m for m in METHODS if m.startswith("baseline_")), key=lambda m: results[m]["knn_macro_acc"])
    learned = results["learned"]
    margin = learned["knn_macro_acc"] - results[best_base]["knn_macro_acc"]
    raw = results["learned_raw" if "learned_raw" in results else "byol"]  # the learned run's raw encoder
    ratio = (learned["shape_match@5"] or 0) / max(learned["shape_match_label_chance"] or 1e-9, 1e-9)
    at_least = lambda v, bar: v is not None and v >= bar  # noqa: E731  (a figure that could not be computed fails)
    d4_raw = raw["d4_same_cluster_rate"]
    rows = {
        "knn_macro_acc": (learned["knn_macro_acc"], at_least(learned["knn_macro_acc"], 0.77)),
        "margin_over_best_baseline": (margin, at_least(margin, 0.10)),
        "defect_precision_at_5": (learned["defect_precision_at_5"], at_least(learned["defect_precision_at_5"], 0.80)),
        "d4_same_cluster_rate (raw encoder)": (d4_raw, at_least(d4_raw, 0.95)),
        "shape_match@5 / label chance": (ratio, ratio <= 2.0),
        "silhouette": (learned["silhouette"], at_least(learned["silhouette"], 0.5)),
    }
    out = {"best_baseline": best_base, **{k: {"value": v, "target": TARGETS[k], "met": bool(ok)}
                                          for k, (v, ok) in rows.items()}}
    if "fused" in results:  # not the target (that is the learned embedding alone): said beside it
        out["fused_margin_over_best_baseline (not a target)"] = {
            "value": results["fused"]["knn_macro_acc"] - results[best_base]["knn_macro_acc"], "target": "-",
            "met": results["fused"]["knn_macro_acc"] > results[best_base]["knn_macro_acc"]}
    return out


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
    methods = [m for m in METHODS if m in results]
    rows = ["knn_macro_acc", "knn_accuracy", "defect_precision_at_5", "defect_map", "d4_same_cluster_rate",
            "d4_mean_cosine", "silhouette", "silhouette_space", "n_clusters", "noise_ratio", "largest_cluster_share",
            "nmi", "ari", "shape_match@5", "shape_match_label_chance", "outline_match@5", "outline_match_label_chance",
            "embedding_dim", "train_seconds", "epochs", "samples_per_second", "embed_samples_per_second",
            "peak_rss_mb"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    lines = ["# WM-811K wafer-map embeddings: learned vs model-free baselines", "",
             f"Machine: {results['machine']}", "",
             "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {r} | " + " | ".join(fmt(results[m].get(r)) for m in methods) + " |" for r in rows]
    lines += ["", "Methods:", ""] + [f"- `{m}`: {results[m]['method']}" for m in methods]
    chosen = [f"`learned` eval.whiten_dim {results['learned'].get('val_knn_macro_acc_by_whiten_dim') or '-'}",
              f"`fused` fusion_weight {results['fused'].get('val_knn_macro_acc_by_weight') or '-'}"
              if "fused" in results else ""]
    lines += ["", "Chosen on val_data (kNN macro accuracy of val_data against the training maps, by setting):", ""]
    lines += [f"- {c}" for c in chosen if c]
    classes = sorted({c for m in methods for c in results[m]["per_class_recall"]})
    lines += ["", "Per-class kNN recall (k=5):", "", "| class | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    lines += [f"| {c} | " + " | ".join(fmt(results[m]["per_class_recall"].get(c)) for m in methods) + " |"
              for c in classes]
    tg = results["targets"]
    lines += ["", f"Targets (issue 11; best baseline: {tg['best_baseline']}):", "", "| target | value | bar | met |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {fmt(v['value'])} | {v['target']} | {'yes' if v['met'] else 'no'} |"
              for k, v in tg.items() if k != "best_baseline"]
    lines += ["", f"Published anchor: {PUBLISHED}", "", f"Settings: {results['settings']['recipe']} with", "", "```",
              json.dumps(results["settings"]["overrides"]), "```"]
    (folder / "wafer_wm811k.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder / 'wafer_wm811k.md'}")


if __name__ == "__main__":
    main()
