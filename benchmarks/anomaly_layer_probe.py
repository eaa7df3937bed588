"""How the CPU recipes of FastFlow and STFPM were chosen: which backbone layers and which image-score pooling
rank the magnetic-tile defects best, judged on the *selection half* of the test images only.

The magnetic-tile protocol (configs/anomaly_magnetic_tile.yaml) has no defective images outside its test split,
so a recipe choice needs some of them. The test images are cut in two halves by a fixed rule on the file name
(:func:`in_selection_half`: even SHA-1 of the base name); a recipe is chosen on the selection half and judged on
the report half, which nothing was chosen on. ``benchmarks/anomaly_magnetic_tile.py --cpu-recipes`` reports both.

    python benchmarks/anomaly_magnetic_tile.py --cpu-recipes fastflow      # a fitted run, e.g. layers [1, 2, 3]
    python benchmarks/anomaly_layer_probe.py runs/bench_magnetic_tile/fastflow_cpu15/fastflow

For a fitted FastFlow or STFPM run it scores the test images once and prints the image AUROC on each half (and
on all of them) for every non-empty subset of the model's layers, each map made by the model's own
``compute_anomaly_map`` from that subset (FastFlow: ``1 - mean exp(-0.5 mean_c z^2)``; STFPM: the product) and
pooled by ``max`` or by ``topk_mean`` of the top 1% of pixels; for an STFPM run fitted with ``standardise_map``,
also the standardised map of all its layers (what the run predicts) beside the raw one. Writes ``layer_probe.json``
beside the run.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fabml.anomaly.models.base import PoolingConfig, pool_anomaly_map  # noqa: E402
from fabml.anomaly.runs import load_fitted  # noqa: E402
from fabml.data.anomaly_data import read_split  # noqa: E402

POOLINGS = {"max": PoolingConfig(method="max"), "top1pct": PoolingConfig(method="topk_mean", topk_percent=1.0)}


def in_selection_half(path: str | Path) -> bool:
    """True for the test images recipes may be chosen on: even SHA-1 of the file's base name."""
    return int(hashlib.sha1(Path(path).name.encode()).hexdigest(), 16) % 2 == 0


def half_aurocs(labels: np.ndarray, scores: np.ndarray, paths: list[str]) -> dict[str, float]:
    """Image AUROC on the selection half, the report half and all images."""
    sel = np.array([in_selection_half(p) for p in paths])
    return {"selection_half": float(roc_auc_score(labels[sel], scores[sel])),
            "report_half": float(roc_auc_score(labels[~sel], scores[~sel])),
            "all": float(roc_auc_score(labels, scores))}


def subset_map(model: torch.nn.Module, name: str, images: torch.Tensor) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """Runs the model's networks on ``images`` once; the returned function gives the anomaly map ``[B, 1, H, W]``
    that the model's own ``compute_anomaly_map`` makes from a subset of its layers (indices into its layers)."""
    if name == "fastflow":
        features = model.feature_extractor(images)
        zs = [flow(norm(f))[0] for norm, flow, f in zip(model.norms, model.flows, features)]
        return lambda subset: model.compute_anomaly_map([zs[i] for i in subset])
    if name == "stfpm":  # the raw product: a fitted per-pixel standardisation belongs to all layers together
        teacher, student = model.features(images)
        return lambda subset: model.raw_anomaly_map([teacher[i] for i in subset], [student[i] for i in subset])
    raise SystemExit(f"the probe knows fastflow and stfpm runs, not {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a fitted fastflow or stfpm run folder")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    fitted = load_fitted(args.run)
    records = read_split(args.run / "split.csv").test
    layers = list(fitted.model.config.layers)
    subsets = [c for r in range(1, len(layers) + 1) for c in itertools.combinations(range(len(layers)), r)]
    scores: dict[str, list[float]] = {}
    labels: list[int] = []
    with torch.no_grad():
        for batch in DataLoader(fitted.dataset(records), batch_size=args.batch_size):
            map_of = subset_map(fitted.model, fitted.name, batch["image"])
            for subset in subsets:
                combined = map_of(subset)
                variants = {"": combined}
                if len(subset) == len(layers) and getattr(fitted.model, "position_norm", None) is not None \
                        and fitted.model.position_norm.fitted:  # STFPM's standardise_map, as the run predicts
                    variants[" standardised"] = fitted.model.position_norm(combined)
                for suffix, amap in variants.items():
                    for pooling, cfg in POOLINGS.items():
                        key = f"layers {[layers[i] for i in subset]}{suffix} {pooling}"
                        scores.setdefault(key, []).extend(pool_anomaly_map(amap, cfg).tolist())
            labels.extend(int(v) for v in batch["label"])
    paths = [r.path for r in records]
    result = {key: half_aurocs(np.array(labels), np.array(vals), paths) for key, vals in scores.items()}
    best = max(result, key=lambda k: result[k]["selection_half"])
    sel = np.array([in_selection_half(p) for p in paths])
    out = {"run": str(args.run), "model": fitted.name, "n_selection": int(sel.sum()), "n_report": int((~sel).sum()),
           "image_auroc": result, "chosen_on_selection_half": best}
    (args.run / "layer_probe.json").write_text(json.dumps(out, indent=2))
    print(f"{fitted.name}: {out['n_selection']} selection / {out['n_report']} report images")
    for key, r in sorted(result.items(), key=lambda kv: -kv[1]["selection_half"]):
        print(f"{key:28s} selection {r['selection_half']:.3f}  report {r['report_half']:.3f}  all {r['all']:.3f}")
    print(f"chosen on the selection half: {best}")


if __name__ == "__main__":
    main()
