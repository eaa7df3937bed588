"""Short recipe probes on WM-811K: train with given overrides, print val_data kNN macro accuracy (raw and D4-averaged).

Used to choose the CPU recipe of configs/wafer_cpu.yaml before the 30-minute benchmark run, e.g.

    THREADS=1 TRAIN=train_20_split,train_10_split python benchmarks/wafer_recipe_probe.py /tmp/probe \\
        data.size=32 model.preset=tiny model.stem=small model.radial_channel=true train.epochs=3 train.lr=1e-3

TRAIN picks the training files (labels unused), THREADS the torch threads (two one-thread probes side by side
use a 2-core machine fully). The best epoch is chosen on a val_data subset; the printed figure is val_data's kNN
macro accuracy (k=5) against all four train files as references: a recipe is chosen on val_data, never on test_data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fabml.config import load_config  # noqa: E402
from fabml.metrics.classification import classification_report, knn_predict  # noqa: E402
from fabml.wafer.config import WaferConfig  # noqa: E402
from fabml.wafer.embedding import embed_tensors  # noqa: E402
from fabml.wafer.embedder import embed_fn  # noqa: E402
from fabml.wafer.maps import load_dataset, map_labels  # noqa: E402
from fabml.wafer.pipeline import train  # noqa: E402
from fabml.wafer.runs import load_trained  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wm811k"
ALL_TRAIN = "train_29_split,train_20_split,train_10_split,train_1_split"


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    files = lambda names: [str(DATA / f"{n}.pkl.xz") for n in names.split(",")]  # noqa: E731
    cfg = load_config(WaferConfig, None, overrides)
    cfg.train.monitor, cfg.train.monitor_mode = "val_knn_macro_acc", "max"
    train(cfg, files(os.environ.get("TRAIN", ALL_TRAIN)), out, fresh=True, val_data=str(DATA / "val_data.pkl.xz"))
    run_cfg, method = load_trained(out)
    ref = load_dataset(files(ALL_TRAIN), run_cfg, limit=0)
    val = load_dataset(str(DATA / "val_data.pkl.xz"), run_cfg, limit=0)
    for tta in (False, True):
        fn = embed_fn(run_cfg, method, tta)
        pred = knn_predict(embed_tensors(fn, ref.tensors), np.asarray(map_labels(ref.meta, "train")),
                           embed_tensors(fn, val.tensors), k=run_cfg.eval.knn_k)
        acc = classification_report(np.asarray(map_labels(val.meta, "val")), pred)["macro_acc"]
        print(f"tta_d4={tta}: val_data kNN macro accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
