"""anomalib 2.7.0 PatchCore / PaDiM on a fabml split: the peer half of the anomaly benchmark.

Runs in anomalib's own environment (fabml is NOT importable there), called by
``benchmarks/anomaly_magnetic_tile.py``:

    /work/anomalib-env/bin/python benchmarks/anomalib_peer.py --split split.csv \\
        --model patchcore --backbone tf_efficientnet_lite0 --layers 2 3 \\
        --weights .../efficientnet-lite0-57934424.pth --image-size 256 --out result.json \\
        [--coreset-ratio 0.1] [--n-features 100] [--batch-size 32] [--threads N] [--seed 0]
    /work/anomalib-env/bin/python benchmarks/anomalib_peer.py --self-check   # metric checks only

Mode "anomalib torch_model + own loop": anomalib's ``PatchcoreModel`` / ``PadimModel`` (feature
extractor, 3x3 pooling, k-center-greedy coreset, Gaussian fit, anomaly-map generators, scoring)
driven by the few lines its Lightning modules run: forward in train mode over the training batches
(embeddings collected by the model), then ``subsample_embedding(ratio)`` (PatchCore) or ``fit()``
(PaDiM), then forward in eval mode. The Lightning Engine is not used: its pre-processor would
re-normalise with ImageNet statistics, its post-processor and evaluator only rescale scores (AUROC,
AUPRO and F1-max are invariant to that), and it adds trainer start-up time that is not the
algorithm's cost.

Inputs, identical to fabml's side: Pillow decode -> RGB (grey repeated to 3 channels) -> bilinear
resize to image-size -> [0, 1] -> (x - 0.5) / 0.5 (the EfficientNet-Lite weights expect [-1, 1]).
Masks: Pillow bilinear resize, > 127 is defect; normal images get an all-zero mask. The split's
"val" images are not used (no metric here needs a threshold).

Split file (written by fabml): split.csv with the columns item (absolute path), part (train / val /
test), group, stratum, label (0 normal / 1 defect), defect_type, mask_path (empty when none); an older
run's split.json ({"train": [{"path", "label", "defect_type", "mask_path"}, ...], "val", "test"}) too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if "--progress" not in sys.argv:  # tqdm reads TQDM_DISABLE when imported (torch imports it)
    os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

MODE = "anomalib torch_model + own loop"
BUDGET_MODE = "anomalib KCenterGreedy timed for a budget, fit time extrapolated"
FPR_LIMIT = 0.3
# Keys of the full timm classifier that a features_only model does not hold.
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def _define_torchvision_schemas() -> None:
    """Let ``import torchvision`` work with its CUDA wheel beside a CPU torch.

    The compiled torchvision ops do not load there, and the import fails on
    ``operator torchvision::nms does not exist``; defining the two schemas (no kernel)
    is enough. A no-op where the real ops exist. Same as fabml/__init__.py.
    """
    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    for op in ("torchvision::nms", "torchvision::qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(op, "")
            continue
        except RuntimeError:
            pass
        try:
            torch.library.define(op, schema)
        except RuntimeError:
            pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


# ---- data -------------------------------------------------------------------------------


def load_split(path: Path) -> dict[str, list[dict]]:
    """Read the split (fabml's split.csv, or an older run's split.json) and check that train / test
    exist and every path is a file."""
    if path.suffix == ".csv":  # columns item, part, group, stratum, label, defect_type, mask_path
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        split = {part: [{"path": r["item"], "label": int(r["label"]), "defect_type": r["defect_type"],
                         "mask_path": r["mask_path"] or None} for r in rows if r["part"] == part]
                 for part in ("train", "val", "test")}
    else:
        split = json.loads(path.read_text())
    for part in ("train", "test"):
        if not split.get(part):
            sys.exit(f"split {path}: '{part}' is missing or empty")
    for part in ("train", "test"):
        for item in split[part]:
            if not Path(item["path"]).is_file():
                sys.exit(f"split {path}: image not found: {item['path']}")
            mask = item.get("mask_path")
            if mask and not Path(mask).is_file():
                sys.exit(f"split {path}: mask not found: {mask}")
    if any(item["label"] != 0 for item in split["train"]):
        sys.exit(f"split {path}: 'train' holds defective images; fit on normal images only")
    return split


def load_image(path: str, size: int) -> np.ndarray:
    """[3, size, size] float32 in [-1, 1]: RGB (grey repeated), bilinear resize, (x - 0.5) / 0.5."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - 0.5) / 0.5


def load_mask(item: dict, size: int) -> np.ndarray:
    """[size, size] bool: the item's mask (bilinear resize, > 127), all False without one."""
    if not item.get("mask_path"):
        return np.zeros((size, size), dtype=bool)
    with Image.open(item["mask_path"]) as im:
        grey = im.convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(grey) > 127


def batches(items: list[dict], batch_size: int, size: int, masks: bool = False):
    """Yield (tensor [B, 3, size, size], decode seconds, masks [B, size, size] bool or None) per batch.

    Decodes lazily; with ``masks`` each item's mask is decoded in the same loop, as fabml's
    dataset does for every test image (so both libraries' timed predict loops do the same work).
    """
    for start in range(0, len(items), batch_size):
        t0 = time.perf_counter()
        part = items[start : start + batch_size]
        x = np.stack([load_image(it["path"], size) for it in part])
        m = np.stack([load_mask(it, size) for it in part]) if masks else None
        yield torch.from_numpy(x), time.perf_counter() - t0, m


# ---- model ------------------------------------------------------------------------------


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """anomalib's torch model with random backbone weights (nothing downloads)."""
    layers: list[Any] = [int(x) if x.isdigit() else x for x in args.layers]
    if args.model == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        return PatchcoreModel(layers=layers, backbone=args.backbone, pre_trained=False,
                              num_neighbors=args.num_neighbors).float()
    from anomalib.models.image.padim.torch_model import PadimModel

    return PadimModel(backbone=args.backbone, layers=layers, pre_trained=False,
                      n_features=args.n_features)


def load_backbone_weights(model: torch.nn.Module, backbone: str, weights: Path) -> dict:
    """Load a checkpoint into anomalib's ``TimmFeatureExtractor`` model.

    The EfficientNet-Lite .pth uses its own key names; its tensors are matched in order,
    by shape, onto the full timm classifier (every key must match), and the full model's
    tensors are then copied by name into the ``features_only`` model, which must be
    filled completely (only the classifier head is left over). Exits on any mismatch.
    """
    import timm

    try:
        source = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors vary by file; one line is enough here
        sys.exit(f"weights {weights}: not a readable torch checkpoint ({type(exc).__name__})")
    if isinstance(source, dict) and isinstance(source.get("state_dict"), dict):
        source = source["state_dict"]
    full = timm.create_model(backbone, pretrained=False)
    target = full.state_dict()
    if len(source) != len(target):
        sys.exit(f"weights {weights}: {len(source)} tensors, timm {backbone} has {len(target)}")
    mismatched = [
        (sk, tk, tuple(sv.shape), tuple(tv.shape))
        for (sk, sv), (tk, tv) in zip(source.items(), target.items())
        if sv.shape != tv.shape
    ]
    if mismatched:
        sys.exit(f"weights {weights}: {len(mismatched)} shape mismatches in key order, "
                 f"first {mismatched[0]}")
    full.load_state_dict(dict(zip(target.keys(), source.values())), strict=True)

    features = model.feature_extractor.feature_extractor  # timm features_only model
    wanted = features.state_dict()
    have = full.state_dict()
    missing = [k for k in wanted if k not in have or have[k].shape != wanted[k].shape]
    if missing:
        sys.exit(f"weights {weights}: features_only model keys without a tensor: {missing[:5]}")
    features.load_state_dict({k: have[k] for k in wanted}, strict=True)
    left_over = [k for k in have if k not in wanted]
    unexpected = [k for k in left_over if not k.startswith(HEAD_PREFIXES)]
    return {"source_tensors": len(source), "matched_in_order": len(source), "shape_mismatches": 0,
            "loaded_into_features_only": len(wanted), "skipped_head_tensors": len(left_over),
            "skipped_non_head": unexpected}


@torch.no_grad()
def fit(model: torch.nn.Module, args: argparse.Namespace, train: list[dict]) -> dict:
    """Collect training embeddings in train mode, then coreset (PatchCore) / Gaussian (PaDiM)."""
    model.train()
    decode = 0.0
    t0 = time.perf_counter()
    for x, dt, _ in batches(train, args.batch_size, args.image_size):
        decode += dt
        model(x)  # train mode: the model stores the batch's embeddings
    t_extract = time.perf_counter()
    if args.model == "patchcore":
        rows = sum(len(e) for e in model.embedding_store)
        # k-center greedy costs O(rows * coreset rows * projected dims): hours on a CPU at scale
        print(f"coreset: {rows} embeddings x {model.embedding_store[0].shape[1]} -> "
              f"{int(rows * args.coreset_ratio)} rows (anomalib KCenterGreedy)", flush=True)
        with warnings.catch_warnings():  # 2.7.0 warns about the deprecated `embeddings` argument
            warnings.simplefilter("ignore", DeprecationWarning)  # even when it is not passed
            model.subsample_embedding(args.coreset_ratio)
        bank = {"memory_bank_rows": int(model.memory_bank.shape[0]),
                "memory_bank_dim": int(model.memory_bank.shape[1])}
    else:
        model.fit()
        bank = {"gaussian_mean_shape": list(model.gaussian.mean.shape)}
    t_end = time.perf_counter()
    model.eval()
    return {"fit_seconds": t_end - t0, "fit_decode_seconds": decode,
            "fit_extract_seconds": t_extract - t0 - decode, "fit_reduce_seconds": t_end - t_extract,
            **bank}


@torch.no_grad()
def predict(model: torch.nn.Module, args: argparse.Namespace, test: list[dict]) -> tuple:
    """(scores [N], maps [N, H, W] float32, masks [N, H, W] bool, timing dict) after one untimed warm-up batch.

    The timed loop decodes each test image *and its mask* (as fabml's timed loop does), runs the
    model and copies scores and maps to numpy.
    """
    model.eval()
    warm, _, _ = next(batches(test[: args.batch_size], args.batch_size, args.image_size))
    model(warm)
    scores, maps, masks = [], [], []
    decode = 0.0
    t0 = time.perf_counter()
    for x, dt, m in batches(test, args.batch_size, args.image_size, masks=True):
        decode += dt
        out = model(x)
        scores.append(out.pred_score.reshape(len(x)).float().numpy())
        maps.append(out.anomaly_map.reshape(len(x), *x.shape[-2:]).float().numpy())
        masks.append(m)
    wall = time.perf_counter() - t0
    n = len(test)
    timing = {"infer_ms_per_image": 1000 * wall / n, "infer_decode_ms_per_image": 1000 * decode / n}
    return np.concatenate(scores), np.concatenate(maps), np.concatenate(masks), timing


@torch.no_grad()
def fit_coreset_budget(model: torch.nn.Module, args: argparse.Namespace,
                       train: list[dict]) -> tuple[dict, list[int]]:
    """PatchCore fit with anomalib's k-center greedy run for ``args.coreset_time_budget`` seconds.

    Embeddings are collected as in ``fit`` and stacked as ``subsample_embedding`` does; then
    anomalib's own ``KCenterGreedy`` (same ratio, same RNG state) does the projection step of
    ``select_coreset_idxs`` and its loop body, one iteration at a time, until the budget is
    spent (checked after every iteration; at least one runs). Every iteration is one pass
    over all rows whatever the number already selected, so the full coreset costs about
    ``projection + per_iteration * (coreset_size - 1)`` seconds. Nothing is predicted: the
    memory bank is never complete.

    Returns:
        (timing dict in seconds, coreset indices selected so far: the first iterations_run + 1)
    """
    from anomalib.models.components.sampling import KCenterGreedy

    model.train()
    decode = 0.0
    t0 = time.perf_counter()
    for x, dt, _ in batches(train, args.batch_size, args.image_size):
        decode += dt
        model(x)  # train mode: the model stores the batch's embeddings
    embedding = torch.vstack(model.embedding_store)  # as subsample_embedding does
    model.embedding_store.clear()
    t_embed = time.perf_counter()

    sampler = KCenterGreedy(embedding=embedding, sampling_ratio=args.coreset_ratio)
    sampler.model.fit(embedding)  # select_coreset_idxs, 2-D branch: projection, then start idx
    sampler.features = sampler.model.transform(embedding)
    sampler.reset_distances()
    idx = torch.randint(high=sampler.n_observations, size=(1,)).squeeze()
    selected = [idx]
    t_proj = time.perf_counter()
    print(f"coreset: {embedding.shape[0]} embeddings x {embedding.shape[1]} -> "
          f"{sampler.coreset_size} rows, projected to {sampler.features.shape[1]} dims; "
          f"timing k-center greedy for {args.coreset_time_budget:g} s", flush=True)

    for _ in range(sampler.coreset_size - 1):  # select_coreset_idxs' loop body, unchanged
        sampler.update_distances(cluster_center=idx)
        idx = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
        selected.append(idx)
        if time.perf_counter() - t_proj >= args.coreset_time_budget:
            break
    t_end = time.perf_counter()

    iterations = len(selected) - 1
    per_iteration = (t_end - t_proj) / iterations if iterations else 0.0
    embedding_s, projection_s = t_embed - t0, t_proj - t_embed
    coreset_s = projection_s + per_iteration * (sampler.coreset_size - 1)
    info = {"fit_seconds_extrapolated": embedding_s + coreset_s,
            "fit_seconds_measured": t_end - t0,
            "embedding_seconds": embedding_s, "fit_decode_seconds": decode,
            "projection_seconds": projection_s, "coreset_loop_seconds": t_end - t_proj,
            "per_iteration_seconds": per_iteration,
            "coreset_seconds_extrapolated": coreset_s,
            "coreset_iterations_run": iterations, "coreset_size": sampler.coreset_size,
            "n_embeddings": int(embedding.shape[0]), "embedding_dim": int(embedding.shape[1]),
            "projected_dims": int(sampler.features.shape[1])}
    return info, torch.stack(selected).tolist()


def write_budget_result(args: argparse.Namespace, split: dict, info: dict, setup: dict) -> None:
    """Write the ``--coreset-time-budget`` result JSON (no metrics: nothing was predicted)."""
    train, test = split["train"], split["test"]
    result = {
        "model": args.model,
        **{k: None for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")},
        "fit_seconds": info["fit_seconds_extrapolated"],
        "infer_ms_per_image": None,
        "peak_rss_mb": peak_rss_mb(),
        "n_train": len(train), "n_test": len(test),
        "n_test_defect": sum(1 for it in test if it["label"]),
        "mode": BUDGET_MODE,
        **{k: info[k] for k in ("fit_seconds_measured", "coreset_iterations_run", "coreset_size",
                                "per_iteration_seconds", "projection_seconds",
                                "embedding_seconds", "projected_dims", "n_embeddings")},
        "timing": {**info, **setup},
        "settings": {
            "backbone": args.backbone, "layers": args.layers, "image_size": args.image_size,
            "batch_size": args.batch_size, "seed": args.seed, "threads": torch.get_num_threads(),
            "weights": str(args.weights), "weight_loading": setup["weight_loading"],
            "coreset_ratio": args.coreset_ratio, "coreset_time_budget": args.coreset_time_budget,
            "preprocessing": "PIL RGB, bilinear resize, [0,1], (x-0.5)/0.5",
            "timing_rules": "fit_seconds = embedding_seconds (train loop incl. decoding and "
                            "vstack) + projection_seconds + per_iteration_seconds * "
                            "(coreset_size - 1); per_iteration_seconds = mean over the "
                            "iterations run; peak_rss_mb = VmHWM at the end",
            "split": str(args.split),
        },
        "versions": versions(),
        "notes": [
            f"anomalib's KCenterGreedy ran {info['coreset_iterations_run']} of "
            f"{info['coreset_size'] - 1} iterations in the {args.coreset_time_budget:g} s budget; "
            "fit_seconds is extrapolated from them (each iteration is one pass over all "
            f"{info['n_embeddings']} rows), fit_seconds_measured is what ran",
            "image and pixel metrics and inference time are null: the coreset (memory bank) was "
            "not completed, so the model was not run on the test set",
        ],
    }
    del result["timing"]["weight_loading"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"anomalib {result['versions']['anomalib']} patchcore ({BUDGET_MODE}): "
          f"{info['coreset_iterations_run']} / {info['coreset_size'] - 1} iterations at "
          f"{1000 * info['per_iteration_seconds']:.3f} ms; fit {result['fit_seconds']:.1f} s "
          f"extrapolated ({info['fit_seconds_measured']:.1f} s measured), "
          f"peak RSS {result['peak_rss_mb']:.0f} MiB")
    print(f"wrote {args.out}")


# ---- metrics ------------------------------------------------------------------------------


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Image AUROC (sklearn) and F1-max: the best F1 over all score thresholds."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    if len(np.unique(labels)) < 2:
        return {"image_auroc": None, "f1_max": None}
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {"image_auroc": float(roc_auc_score(labels, scores)), "f1_max": float(f1.max())}


def _trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the step-ordered curve (x ascending from 0) for x in [0, limit]."""
    keep = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:keep], y[:keep]
    if keep < len(x) and xs[-1] < limit:  # close the area with the interpolated point at limit
        frac = (limit - x[keep - 1]) / (x[keep] - x[keep - 1])
        xs = np.append(xs, limit)
        ys = np.append(ys, y[keep - 1] + frac * (y[keep] - y[keep - 1]))
    return float(np.trapezoid(ys, xs))


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = FPR_LIMIT) -> dict:
    """Exact pixel AUROC and AUPRO from one sort of all pixels.

    Args:
        maps: [N, H, W] anomaly maps (any scale). masks: [N, H, W] bool ground truth.

    Pixel AUROC: area under TPR(FPR) over all pixels of all images (equals sklearn's
    roc_auc_score; tied scores form one threshold). AUPRO (Bergmann et al., MVTec AD):
    every 8-connected defect region of every image is one unit; PRO(t) = mean over
    regions of the fraction of the region's pixels scoring >= t; FPR(t) = fraction of
    all defect-free pixels scoring >= t. AUPRO = area under PRO(FPR) for FPR in
    [0, fpr_limit], divided by fpr_limit, so it lies in [0, 1].
    """
    from scipy import ndimage

    truth = masks.reshape(-1)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return {"pixel_auroc": None, "aupro": None}
    # Per-pixel PRO weight: 1 / (number of regions * size of the pixel's region).
    weight = np.zeros(truth.size, dtype=np.float64)
    per_image = masks.shape[1] * masks.shape[2]
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        if count:
            sizes = np.bincount(labelled.ravel())
            regions.append((i, labelled, sizes))
    n_regions = sum(len(sizes) - 1 for _, _, sizes in regions)
    for i, labelled, sizes in regions:
        inverse = np.zeros(len(sizes), dtype=np.float64)
        inverse[1:] = 1.0 / (n_regions * sizes[1:])
        weight[i * per_image : (i + 1) * per_image] = inverse[labelled.ravel()]

    order = np.argsort(maps.reshape(-1), kind="stable")[::-1]  # descending score
    ranked = maps.reshape(-1)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    del ranked
    ordered_truth = truth[order]
    tp = np.cumsum(ordered_truth, dtype=np.int64)[last_of_tie]
    fpr = np.r_[0.0, ((last_of_tie + 1) - tp) / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    pro = np.r_[0.0, np.cumsum(weight[order])[last_of_tie]]
    return {"pixel_auroc": float(np.trapezoid(tpr, fpr)),
            "aupro": _trapezoid_to(fpr, np.minimum(pro, 1.0), fpr_limit) / fpr_limit,
            "n_defect_regions": n_regions}


def _pro_brute_force(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """AUPRO by an explicit loop over every distinct threshold (slow; for the self-check)."""
    from scipy import ndimage

    comps = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        comps += [(i, labelled == k) for k in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([pred[i][c].mean() for i, c in comps]))
    return _trapezoid_to(np.array(fprs), np.array(pros), limit) / limit


def self_check() -> None:
    """Compare the metrics with sklearn and a brute-force AUPRO on small random cases."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(5):
        masks = np.zeros((4, 12, 12), dtype=bool)
        masks[1, 2:5, 2:6] = True
        masks[1, 8:11, 9:11] = True
        masks[3, 4:9, 3:7] = True
        maps = rng.random((4, 12, 12)) + 0.6 * masks
        if trial % 2:
            maps = np.round(maps, 1)  # ties
        got = pixel_metrics(maps, masks)
        want_auroc = roc_auc_score(masks.ravel(), maps.ravel())
        want_pro = _pro_brute_force(maps, masks, FPR_LIMIT)
        assert abs(got["pixel_auroc"] - want_auroc) < 1e-12, (got, want_auroc)
        assert abs(got["aupro"] - want_pro) < 1e-12, (got, want_pro)
        assert got["n_defect_regions"] == 3
    perfect = pixel_metrics(masks.astype(float), masks)
    assert perfect["pixel_auroc"] == 1.0 and abs(perfect["aupro"] - 1.0) < 1e-12
    f1 = image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert abs(f1["image_auroc"] - 0.75) < 1e-12 and abs(f1["f1_max"] - 0.8) < 1e-12
    print("metric self-check passed (pixel AUROC = sklearn, AUPRO = brute force, F1-max by hand)")


# ---- main -----------------------------------------------------------------------------------


def versions() -> dict:
    import anomalib
    import scipy
    import sklearn
    import timm
    import torchvision

    return {"anomalib": anomalib.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", type=Path)
    p.add_argument("--model", choices=("patchcore", "padim"))
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--layers", nargs="+", default=["2", "3"], help="timm out_indices or names")
    p.add_argument("--weights", type=Path, help="backbone .pth (loaded by shape in key order)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--out", type=Path)
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--num-neighbors", type=int, default=9, help="PatchCore score re-weighting")
    p.add_argument("--n-features", type=int, default=100, help="PaDiM random channel subset")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="PaDiM channel subset, coreset start")
    p.add_argument("--progress", action="store_true", help="show anomalib's coreset progress bar")
    p.add_argument("--coreset-time-budget", type=float, default=0.0, metavar="SECONDS",
                   help="patchcore: run k-center greedy for this long, extrapolate the fit "
                        "time and skip prediction (0 = off: the full coreset)")
    p.add_argument("--self-check", action="store_true", help="check the metrics and exit")
    args = p.parse_args(argv)
    if not args.self_check:
        missing = [n for n in ("split", "model", "weights", "out") if getattr(args, n) is None]
        if missing:
            p.error("required: " + ", ".join("--" + m for m in missing))
        if not args.weights.is_file():
            p.error(f"--weights file not found: {args.weights}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.self_check:
        self_check()
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # PaDiM channel subset, coreset start point
    np.random.seed(args.seed)  # anomalib's SparseRandomProjection draws from numpy's global state
    split = load_split(args.split)
    train, test = split["train"], split["test"]
    _define_torchvision_schemas()
    with warnings.catch_warnings():  # anomalib's import-time deprecation notices
        warnings.simplefilter("ignore", FutureWarning)
        t_import = time.perf_counter()
        model = build_model(args)
        import_seconds = time.perf_counter() - t_import
    weight_report = load_backbone_weights(model, args.backbone, args.weights)
    rss_after_setup = peak_rss_mb()

    if args.coreset_time_budget > 0 and args.model == "patchcore":
        info, _ = fit_coreset_budget(model, args, train)
        write_budget_result(args, split, info, {
            "anomalib_import_and_build_seconds": import_seconds,
            "peak_rss_mb_after_import_and_build": rss_after_setup,
            "weight_loading": weight_report})
        return
    fit_info = fit(model, args, train)
    rss_after_fit = peak_rss_mb()
    scores, maps, masks, timing = predict(model, args, test)
    rss_after_predict = peak_rss_mb()

    labels = np.array([it["label"] for it in test])
    metrics = image_metrics(labels, scores)
    defect_without_mask = [it["path"] for it in test if it["label"] and not it.get("mask_path")]
    notes = []
    if defect_without_mask:
        notes.append(f"pixel metrics skipped: {len(defect_without_mask)} defective test images "
                     f"have no mask (first {defect_without_mask[0]})")
        metrics.update(pixel_auroc=None, aupro=None)
    else:
        metrics.update(pixel_metrics(maps, masks))
    if metrics["image_auroc"] is None:
        notes.append("image metrics undefined: the test set holds only one class")
    per_type = {}  # each defect type against all normal test images
    normal = labels == 0
    for kind in sorted({it["defect_type"] for it, y in zip(test, labels) if y}):
        sel = np.array([it["defect_type"] == kind for it in test]) | normal
        per_type[kind] = {"n": int((labels[sel] == 1).sum()),
                          "image_auroc": image_metrics(labels[sel], scores[sel])["image_auroc"]}

    result = {
        "model": args.model,
        **{k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")},
        "fit_seconds": fit_info["fit_seconds"],
        "infer_ms_per_image": timing["infer_ms_per_image"],
        "peak_rss_mb": rss_after_predict,
        "n_train": len(train), "n_test": len(test), "n_test_defect": int(labels.sum()),
        "mode": MODE,
        "timing": {**fit_info, **timing, "anomalib_import_and_build_seconds": import_seconds,
                   "peak_rss_mb_after_import_and_build": rss_after_setup,
                   "peak_rss_mb_after_fit": rss_after_fit,
                   "peak_rss_mb_final_incl_metrics": peak_rss_mb()},
        "per_type": per_type,
        "metrics_detail": {"n_defect_regions": metrics.get("n_defect_regions"),
                           "aupro_fpr_limit": FPR_LIMIT, "f1_max": "image level"},
        "settings": {
            "backbone": args.backbone, "layers": args.layers, "image_size": args.image_size,
            "batch_size": args.batch_size, "seed": args.seed, "threads": torch.get_num_threads(),
            "weights": str(args.weights), "weight_loading": weight_report,
            **({"coreset_ratio": args.coreset_ratio, "num_neighbors": args.num_neighbors}
               if args.model == "patchcore" else {"n_features": args.n_features}),
            "preprocessing": "PIL RGB, bilinear resize, [0,1], (x-0.5)/0.5",
            "masks": "PIL bilinear resize, > 127",
            "timing_rules": "fit_seconds and infer_ms_per_image are loop wall time including image "
                            "decoding (and, in predict, mask decoding, as fabml's loop does; decode "
                            "share in timing.*decode*); inference after one untimed warm-up batch; "
                            "peak_rss_mb = VmHWM after predict, before metrics",
            "loadavg_at_end": list(os.getloadavg()),
            "split": str(args.split),
        },
        "versions": versions(),
        "notes": notes,
        "per_image": [{"path": it["path"], "label": int(y), "defect_type": it["defect_type"],
                       "score": float(sc)} for it, y, sc in zip(test, labels, scores)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"anomalib {result['versions']['anomalib']} {args.model} ({MODE}): "
          f"image AUROC {fmt(result['image_auroc'])}, pixel AUROC {fmt(result['pixel_auroc'])}, "
          f"AUPRO {fmt(result['aupro'])}, F1-max {fmt(result['f1_max'])}; "
          f"fit {result['fit_seconds']:.1f} s, infer {result['infer_ms_per_image']:.1f} ms/image, "
          f"peak RSS {result['peak_rss_mb']:.0f} MiB; {len(train)} train / {len(test)} test")
    for note in notes:
        print("note:", note)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
