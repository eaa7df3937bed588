"""Probe: does the learned embedding add to the Wu 2015 features on WM-811K? (issue 11, item 2, what would close it)

Takes a trained wafer run (by default the one ``benchmarks/wafer_wm811k.py`` trains, ``runs/bench_wm811k``), embeds
the four training files (the kNN reference), ``val_data`` and ``test_data`` with the run's default learned embedding
(D4-averaged when ``eval.tta_d4``) and with the Wu 2015 features (fitted on the training maps), and scores the
concatenation ``[sqrt(w) * learned, sqrt(1 - w) * wu2015]`` (both unit rows, so the cosine is the w-weighted mean of
the two cosines) by kNN macro accuracy (k=5). ``w`` is chosen on ``val_data``; ``test_data`` is reported for the chosen
``w`` only, beside w = 0 (Wu alone) and w = 1 (learned alone).

    python benchmarks/wafer_fusion_probe.py [RUN]

A probe, not a product path: it prints its figures and writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fabml.metrics.classification import classification_report, knn_predict  # noqa: E402
from fabml.wafer.baselines import build_baseline  # noqa: E402
from fabml.wafer.embedding import embed_tensors  # noqa: E402
from fabml.wafer.embedder import at_size, embed_fn  # noqa: E402
from fabml.wafer.maps import load_dataset, map_labels  # noqa: E402
from fabml.wafer.runs import load_trained  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wm811k"
TRAIN = [str(DATA / f"{n}.pkl.xz") for n in ("train_29_split", "train_20_split", "train_10_split", "train_1_split")]
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "bench_wm811k"
    cfg, method = load_trained(run)
    learned = embed_fn(cfg, method, cfg.eval.tta_d4)
    wu = build_baseline("wu2015", cfg.baseline, cfg.train.seed)
    parts = {"ref": TRAIN, "val": str(DATA / "val_data.pkl.xz"), "test": str(DATA / "test_data.pkl.xz")}
    emb, feats, labels = {}, {}, {}
    for name, source in parts.items():
        maps = load_dataset(source, cfg, limit=0)
        labels[name] = np.asarray(map_labels(maps.meta, name))
        emb[name] = embed_tensors(learned, maps.tensors, cfg.eval.embed_batch, progress=True)
        wu_maps = load_dataset(source, at_size(cfg, wu.input_size), limit=0).tensors
        if name == "ref":
            wu.fit(wu_maps, cfg.eval.embed_batch)
        feats[name] = wu.embed(wu_maps)

    def macro(part: str, w: float) -> float:
        fused = lambda p: np.hstack([np.sqrt(w) * emb[p], np.sqrt(1 - w) * feats[p]])  # noqa: E731
        pred = knn_predict(fused("ref"), labels["ref"], fused(part), k=cfg.eval.knn_k)
        return classification_report(labels[part], pred)["macro_acc"]

    on_val = {w: macro("val", w) for w in WEIGHTS}
    best = max(on_val, key=on_val.get)
    print(f"run {run} (learned = {'D4-averaged ' if cfg.eval.tta_d4 else ''}encoder), torch threads "
          f"{torch.get_num_threads()}")
    print("val kNN macro accuracy by w: " + ", ".join(f"{w:g}: {a:.4f}" for w, a in on_val.items()))
    print(f"chosen on val: w = {best:g}; test kNN macro accuracy: fused {macro('test', best):.4f}, "
          f"Wu 2015 alone {macro('test', 0.0):.4f}, learned alone {macro('test', 1.0):.4f}")


if __name__ == "__main__":
    main()
