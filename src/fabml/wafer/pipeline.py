"""The wafer job's steps as plain functions: train, cluster, assign, search, evaluate (embed: :mod:`fabml.wafer.embedder`).

The CLI and the tests call these; each reads and writes the run folder described in
:mod:`fabml.wafer.runs` and returns what it computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fabml.config import load_config, to_dict
from fabml.data.wafer_dataset import WaferTensorDataset
from fabml.data.wafer_io import load_wafer_maps
from fabml.engine.distributed import is_main_process
from fabml.engine.runs import RunFolder
from fabml.engine.trainer import Trainer, TrainResult, seed_everything
from fabml.console import err
from fabml.errors import DataError
from fabml.index import VectorIndex
from fabml.metrics.classification import classification_report, knn_predict
from fabml.viz import plot_cluster_gallery, plot_search_results, plot_trend
from fabml.wafer.clusters import ClusterModel, dominant_warning
from fabml.wafer.baselines import build_baseline
from fabml.wafer.config import WaferConfig
from fabml.wafer.embedding import embed_tensors, encoder_embed_fn
from fabml.wafer.evaluation import SUMMARY_KEYS, UNLABELLED_KEYS, metrics_markdown  # noqa: F401  (public here too)
from fabml.wafer.embedder import (
    aux_targets, baseline_tensors, check_fixed, embed_fn, fit_fusion_baseline, fusion_size_conflict, query_embedder,
)
from fabml.wafer.embedder import embed  # noqa: F401  (the embed step, public here beside the other steps)
from fabml.wafer.evaluation import outline_keys
from fabml.wafer.fusion import FusedEmbedder
from fabml.wafer.maps import grid_shapes, load_dataset, map_labels
from fabml.wafer.runs import (
    JOB,
    build_method,
    load_trained,
    meta_frame,
    open_run,
    read_embeddings,
    reload_maps,
    save_model,
)
from fabml.wafer.trend import cluster_trend
from fabml.wafer.whitening import check_dim, whitened


MIN_VAL_PER_CLASS = 30
"""Fewer validation maps than this in a class make its recall, and so the macro accuracy that selects the
best checkpoint, too noisy to rank epochs by (one map moves a class of 30 by 3 points)."""


def make_validator(cfg: WaferConfig, val: WaferTensorDataset):
    """Per-epoch selection metric: leave-one-out kNN macro accuracy within the labelled validation maps.

    ``eval.val_limit`` maps are drawn once (fixed seed); a warning goes to stderr, once, when a class has
    fewer than :data:`MIN_VAL_PER_CLASS` of them.
    """
    labels = np.asarray(map_labels(val.meta, "validation data"))
    n = len(val) if not cfg.eval.val_limit else min(cfg.eval.val_limit, len(val))
    pick = torch.from_numpy(np.random.default_rng(0).permutation(len(val))[:n])
    tensors, labels = val.tensors[pick], labels[pick.numpy()]
    small = small_classes(labels)
    if small and is_main_process():
        listed = ", ".join(f"{name} {count}" for name, count in small.items())
        err.print(f"warning: the validation subset ({n} maps) has fewer than {MIN_VAL_PER_CLASS} maps in "
                  f"{len(small)} class(es) ({listed}): checkpoint selection by val_knn_macro_acc is noisy; "
                  "raise eval.val_limit (0 = all) or give more labelled --val maps", markup=False, highlight=False)

    def validate(method) -> dict[str, float]:
        was_training = method.training
        encode = encoder_embed_fn(method.encoder, cfg.data.outline_channel, next(method.parameters()).device)
        emb = embed_tensors(encode, tensors, cfg.eval.embed_batch)
        method.train(was_training)
        pred = knn_predict(emb, labels, emb, k=cfg.eval.knn_k, exclude_self=True)
        return {"val_knn_macro_acc": classification_report(labels, pred)["macro_acc"]}

    return validate


def small_classes(labels: np.ndarray, minimum: int = MIN_VAL_PER_CLASS) -> dict[str, int]:
    """Classes with fewer than ``minimum`` maps among ``labels``: name -> count."""
    names, counts = np.unique(labels, return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts) if c < minimum}


def train(
    cfg: WaferConfig, data: str | list[str], run_dir: Path, resume: bool = False, fresh: bool = False,
    val_data: str | list[str] | None = None,
) -> TrainResult:
    """Train the BYOL encoder on (unlabelled) maps; writes the run folder of :mod:`fabml.engine.runs`.

    config.yaml and run.json (job ``wafer``) first, then checkpoints and metrics.csv per epoch, and
    ``model.pt`` (the best checkpoint's weights) when training ends. Under torchrun only rank 0 writes.
    """
    run_dir = Path(run_dir)
    dataset = load_dataset(data, cfg)
    validate = make_validator(cfg, load_dataset(val_data, cfg, limit=0)) if val_data else None
    seed_everything(cfg.train.seed)  # the initial weights too: the same config gives the same run
    method = build_method(cfg)
    if cfg.byol.aux_features:
        started = time.perf_counter()
        method.set_aux_targets(aux_targets(cfg, data, dataset))
        if is_main_process():
            err.print(f"auxiliary target: {cfg.byol.aux_features} features of {len(dataset)} maps "
                      f"({time.perf_counter() - started:.0f} s)", markup=False, highlight=False)
    trainer = Trainer(method, cfg.train, run_dir, dataset, validate=validate, job_config=to_dict(cfg))
    # before config.yaml is overwritten: an existing checkpoint needs --resume/--fresh, or train.auto_resume
    # with unchanged settings
    resume = trainer.will_resume(resume, fresh)
    run = RunFolder.create(run_dir, JOB, config=cfg, seed=cfg.train.seed)
    if is_main_process():
        run.artefact_path.unlink(missing_ok=True)  # rewritten from the best checkpoint when this training ends
    result = trainer.fit(resume=resume, fresh=fresh)
    if is_main_process():
        run.update_info()  # the trainer rewrites run.json on a fresh start: name the job again
        save_model(run, cfg)
    return result


@dataclass
class ClusterResult:
    labels: np.ndarray  # [N] cluster id per embedded map, -1 = noise
    table: pd.DataFrame  # metadata + cluster, novelty_score, is_novel
    folder: Path


def cluster(run_dir: Path, cfg: WaferConfig | None = None, per_cluster: int = 8) -> ClusterResult:
    """Fit HDBSCAN families on the run's embeddings; writes clusters.csv, the model, a gallery and a trend.

    ``cfg`` defaults to the run's own config (its ``cluster`` section is what is used).
    """
    run_dir = Path(run_dir)
    emb, meta, source = read_embeddings(run_dir)  # checks that run_dir is a wafer run
    cfg = cfg or load_config(WaferConfig, run_dir / "config.yaml")
    model = ClusterModel(cfg.cluster)
    labels = model.fit(emb)
    folder = run_dir / "clusters"
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "cluster_model.joblib")
    table = meta.copy()
    table["cluster"] = labels
    if (labels >= 0).any():
        score, flag, _ = model.novelty(emb)
        table["novelty_score"], table["is_novel"] = score, flag
    table.to_csv(folder / "clusters.csv", index=False)
    summary = {"n_maps": int(len(labels)), "n_clusters": int(labels.max() + 1), "noise_ratio": float((labels < 0).mean()),
               **model.dominance(), "clusters": model.summary() if (labels >= 0).any() else [],
               "settings": cfg.cluster.__dict__}
    if model.dominant:
        err.print("warning: " + dominant_warning(model.largest_share, model.n_clusters, model.selection_used, "cluster"))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _cluster_gallery(table, source, folder / "gallery.png", per_cluster)
    if table["date"].notna().any():
        trend = cluster_trend(table["date"].tolist(), labels.tolist(), period="W")
        trend.to_csv(folder / "trend.csv")
        plot_trend(trend, folder / "trend.png")
    return ClusterResult(labels, table, folder)


def _cluster_gallery(table: pd.DataFrame, source: str, path: Path, per_cluster: int) -> None:
    rng = np.random.default_rng(0)
    picks: dict[int, list[str]] = {}
    for cid, group in table.groupby("cluster"):
        ids = group["id"].tolist()
        picks[int(cid)] = [ids[i] for i in rng.choice(len(ids), min(per_cluster, len(ids)), replace=False)]
    maps = reload_maps(source, [i for ids in picks.values() for i in ids])
    sizes = table["cluster"].value_counts().to_dict()
    gallery = {("noise" if cid < 0 else cid): [maps[i].dies for i in ids if i in maps] for cid, ids in sorted(picks.items())}
    plot_cluster_gallery(gallery, path, per_cluster=per_cluster,
                         sizes={("noise" if k < 0 else k): v for k, v in sizes.items()})


def assign(run_dir: Path, data: str, out_csv: Path | None = None) -> pd.DataFrame:
    """Place new maps in the fitted families: cluster, novelty score and novel flag per map."""
    run_dir = open_run(run_dir).root
    model_path = run_dir / "clusters" / "cluster_model.joblib"
    if not model_path.is_file():
        raise DataError(f"{model_path} not found: run `fabml wafer cluster --run {run_dir}` first")
    cfg, fn = query_embedder(run_dir)
    dataset = load_dataset(data, cfg, limit=0)
    emb = embed_tensors(fn, dataset.tensors, cfg.eval.embed_batch)
    model = ClusterModel.load(model_path)
    score, flag, nearest = model.novelty(emb)
    table = meta_frame(dataset)
    table["cluster"], table["novelty_score"], table["is_novel"] = model.predict(emb), score, flag
    table["nearest_cluster"] = nearest
    out_csv = out_csv or run_dir / "clusters" / "assigned.csv"
    table.to_csv(out_csv, index=False)
    return table


def search(run_dir: Path, query: str, k: int = 10, figure: Path | None = None) -> tuple[pd.DataFrame, Path]:
    """The ``k`` embedded maps most similar to ``query`` (a map file, or the id of an embedded map).

    Returns the result table (rank, id, similarity, metadata) and the path of the figure
    (query left, neighbours right with their similarity).
    """
    run_dir = Path(run_dir)
    emb, meta, source = read_embeddings(run_dir)
    index = VectorIndex.load(run_dir / "embeddings" / "index.faiss")
    ids = meta["id"].astype(str).tolist()
    exclude_self = query in ids
    if exclude_self:  # an embedded map: its embedding is already stored, no model needed
        q_emb, qmap = emb[ids.index(query)][None], None
    else:
        if not Path(query).exists():
            raise DataError(f"query {query!r} is neither a map file nor the id of an embedded map")
        cfg, fn = query_embedder(run_dir)
        qmap = load_wafer_maps(query)[0]
        q_tensor = WaferTensorDataset([qmap], cfg.data.size).tensors
        q_emb = embed_tensors(fn, q_tensor, 1)
    scores, idx = index.search(q_emb.astype(np.float32), k + int(exclude_self))
    rows = [(i, s) for i, s in zip(idx[0], scores[0]) if i >= 0 and not (exclude_self and ids[i] == query)][:k]
    table = meta.iloc[[i for i, _ in rows]].copy()
    table.insert(0, "similarity", [float(s) for _, s in rows])
    table.insert(0, "rank", range(1, len(rows) + 1))
    # One pass over the source for the query (when embedded) and all neighbours.
    maps = reload_maps(source, table["id"].astype(str).tolist() + ([query] if exclude_self else []))
    qmap = qmap or maps[query]
    figure = figure or run_dir / "search" / f"search_{Path(str(qmap.meta.get('id', 'query'))).name.replace(':', '_')}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    titles = [f"{r.id}\n{r.label or ''}" for r in table.itertuples()]
    plot_search_results(qmap.dies, [maps[i].dies for i in table["id"]], table["similarity"].tolist(), figure,
                        query_title=f"query {qmap.meta.get('id', '')}", neighbour_titles=titles)
    return table.reset_index(drop=True), figure


def evaluate(
    run_dir: Path, reference: str | list[str] | None, test: str | list[str], baseline: bool = True,
    tta_d4: bool = False, checkpoint: str = "best", cfg: WaferConfig | None = None,
) -> dict[str, dict]:
    """Evaluate the run's encoder and, with ``baseline``, every baseline of ``baseline.methods`` on ``test`` maps.

    Each method is one entry of the results (``byol``, ``byol_tta_d4``, ``learned``, ``baseline_<name>``,
    ``fused``); ``learned`` is what ``embed --method learned`` makes when ``eval.whiten_dim`` > 0 (the encoder,
    D4-averaged when ``eval.tta_d4``, whitened with a whitening fitted on the reference maps); a
    baseline is fitted on the reference maps (on the test maps without labels), at its own map side when it has
    one (:func:`baseline_tensors`), and its fit time is ``fit_seconds``. ``fused`` is what ``embed --method
    fused`` makes (the encoder, D4-averaged when ``eval.tta_d4``, whitened when ``learned`` is, joined with ``baseline.fuse_with`` at
    ``baseline.fusion_weight``); it is left out, with a one-line note, when that baseline wants another map side.
    ``cfg``: the settings (default: the run's config.yaml); it may not change :data:`FIXED_BY_RUN`.

    With labels (test and ``reference``): kNN accuracy, label retrieval, clustering, D4 invariance and the
    outline-shortcut measure. Without labels (any test map unlabelled, or no reference): retrieval against
    the pseudo ground truth (D4 orbit, IoU > 0.7 after the best D4 alignment), clustering and D4 invariance.
    Writes ``eval/metrics.json`` (all figures per method), ``eval/metrics.md`` (summary table) and, with
    labels, ``eval/per_class_<method>.png``; returns the per-method figures.
    """
    import time

    from fabml.viz import plot_per_class_bars
    from fabml.wafer.evaluation import evaluate_embeddings, evaluate_unlabelled

    run_dir = Path(run_dir)
    run_cfg, method = load_trained(run_dir, checkpoint)
    cfg = cfg or run_cfg
    check_fixed(cfg, run_cfg, run_dir)
    tst = load_dataset(test, cfg, limit=0)
    labelled = reference is not None and all(m.get("label") is not None for m in tst.meta)
    ref = load_dataset(reference, cfg, limit=0) if labelled else None
    # name -> (embed function, reference tensors, test tensors): a baseline may want its own map side
    methods = {"byol": (embed_fn(run_cfg, method, False), ref.tensors if ref else None, tst.tensors)}
    if tta_d4:
        methods["byol_tta_d4"] = (embed_fn(run_cfg, method, True), *methods["byol"][1:])
    fit_seconds: dict[str, float] = {}
    for name in cfg.baseline.methods if baseline else []:
        t0 = time.perf_counter()
        base = build_baseline(name, cfg.baseline, cfg.train.seed)
        ref_x = baseline_tensors(base, reference, ref, cfg) if ref else None
        tst_x = baseline_tensors(base, test, tst, cfg)
        base.fit(ref_x if ref_x is not None else tst_x, cfg.eval.embed_batch)
        methods[f"baseline_{name}"] = (base, ref_x, tst_x)
        fit_seconds[f"baseline_{name}"] = time.perf_counter() - t0
    learned = embed_fn(run_cfg, method, cfg.eval.tta_d4)
    if check_dim(cfg.eval.whiten_dim):  # fitted on the reference maps (the test maps without labels)
        t0 = time.perf_counter()
        fit_x = ref.tensors if ref else tst.tensors
        learned = whitened(learned, embed_tensors(learned, fit_x, cfg.eval.embed_batch), cfg.eval.whiten_dim)
        methods["learned"] = (learned, ref.tensors if ref else None, tst.tensors)
        fit_seconds["learned"] = time.perf_counter() - t0
    conflict = fusion_size_conflict(cfg, cfg.data.size) if baseline else ""
    if conflict:
        err.print(f"note: fused not evaluated: {conflict}")
    elif baseline:
        t0 = time.perf_counter()
        fitted = fit_fusion_baseline(cfg, ref if ref else tst)
        fused = FusedEmbedder(learned, fitted, cfg.baseline.fusion_weight)
        methods["fused"] = (fused, ref.tensors if ref else None, tst.tensors)
        fit_seconds["fused"] = time.perf_counter() - t0
    out_dir = run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    # the die masks of the maps as read (not a baseline's own tensors): the outline-shortcut keys
    ref_outlines = outline_keys(ref.tensors) if labelled else None
    test_outlines = outline_keys(tst.tensors) if labelled else None
    for name, (fn, ref_x, tst_x) in methods.items():
        if not labelled:
            results[name] = evaluate_unlabelled(fn, tst_x, cfg.eval, cfg.cluster)
            _warn_dominant(name, results[name], cfg.cluster.dominant_share)
            if name in fit_seconds:
                results[name]["fit_seconds"] = fit_seconds[name]
            continue
        res = evaluate_embeddings(fn, ref_x, map_labels(ref.meta, "reference data"), tst_x,
                                  map_labels(tst.meta, "test data"), cfg.eval, cfg.cluster, grid_shapes(ref),
                                  grid_shapes(tst), progress=True, ref_outlines=ref_outlines,
                                  test_outlines=test_outlines)
        plot_per_class_bars(res["per_class"], out_dir / f"per_class_{name}.png",
                            title=f"kNN (k={cfg.eval.knn_k}) per class: {name}")
        res.pop("test_embeddings"), res.pop("test_clusters")
        _warn_dominant(name, res, cfg.cluster.dominant_share)
        if name in fit_seconds:
            res["fit_seconds"] = fit_seconds[name]
        results[name] = res
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out_dir / "metrics.md").write_text(metrics_markdown(results, SUMMARY_KEYS if labelled else UNLABELLED_KEYS))
    return results


def _warn_dominant(name: str, res: dict, threshold: float) -> None:
    """One stderr line when the evaluation's clustering of method ``name`` has a dominant cluster."""
    if res.get("dominant_cluster"):
        err.print("warning: " + dominant_warning(res["largest_cluster_share"], int(res.get("n_clusters", 0)),
                                                 str(res.get("cluster_selection_used")), f"evaluate {name}"))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
