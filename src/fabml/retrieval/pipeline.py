"""The retrieval job's steps as plain functions: split, train, index, evaluate, predict, export.

The CLI, the demo and the tests call these; each reads and writes the run folder of
:mod:`fabml.retrieval.runs` and returns what it computed. Progress lines go to stderr
(:data:`fabml.console.err`); results are returned for the caller to print.

Flow: ``split`` (ID-grouped train/val/test files, reused by every later step) -> ``train`` (ArcFace on
P×K batches, validation Recall@1 each epoch selects the best checkpoint; ``model.pt`` at the end) ->
``index`` (embed the train split into a vector index; calibrate the ``unknown`` threshold on the val
split; ``--add`` puts new images or classes in without retraining) -> ``evaluate`` (queries of a split
against the index) / ``predict`` (new images: top-k references, class or ``unknown``) -> ``export`` (ONNX).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from fabml.config import load_config, to_dict
from fabml.console import err, track
from fabml.data.retrieval_data import (
    RetrievalImageDataset,
    RetrievalRecord,
    RetrievalSplit,
    discover_records,
    make_retrieval_split,
    read_retrieval_split,
    split_paths,
)
from fabml.data.splits import PARTS
from fabml.engine.distributed import is_main_process, main_process_only
from fabml.engine.hardware import peak_rss_mb, resolve_device, resolve_num_workers
from fabml.engine.runs import CONFIG, RunFolder
from fabml.errors import ConfigError, DataError
from fabml.index import VectorIndex
from fabml.metrics.retrieval import label_retrieval_metrics, weighted_vote
from fabml.retrieval.config import RetrievalConfig, resolve_backbone
from fabml.retrieval.runs import (
    EVALUATION,
    INDEX,
    INDEX_FILE,
    JOB,
    PREDICTIONS,
    REFERENCES,
    SPLITS,
    THRESHOLD,
    build_method,
    load_trained,
    open_run,
    run_config,
    save_model,
)
from fabml.retrieval.threshold import UnknownThreshold, calibrate_unknown

UNKNOWN = "unknown"
EXPLICIT_KEYS = "train_settings_given"  # run.json: train settings the user gave (never replaced by auto settings)


# ----------------------------------------------------------------------------------------- config
def make_config(run_dir: str | Path, config: str | Path | None = None, overrides: Sequence[str] | None = None,
                data: str | Path | None = None, list_file: str | Path | None = None,
                skip_bad: bool = False) -> RetrievalConfig:
    """The settings of a step that starts or continues a run: defaults <- ``RUN/config.yaml`` (when the run
    has one and no ``config`` file is given) <- ``config`` <- ``overrides`` <- ``data`` / ``list_file`` /
    ``skip_bad``. So ``train --out RUN`` after ``split --data DIR --out RUN`` keeps the split's settings."""
    base = Path(run_dir) / CONFIG
    source = config if config is not None else (base if base.is_file() else None)
    cfg = load_config(RetrievalConfig, source, list(overrides or []))
    if data is not None and list_file is not None:
        raise ConfigError("pass either --data (class folders) or --list (a list file), not both")
    if data is not None:
        cfg.data.root, cfg.data.list_file = str(Path(data).resolve()), ""
    if list_file is not None:
        cfg.data.list_file, cfg.data.root = str(Path(list_file).resolve()), ""
    if skip_bad:
        cfg.data.skip_bad = True
    return cfg


# ------------------------------------------------------------------------------------------ split
@dataclass
class SplitReport:
    """What ``split`` wrote: the split, its folder and a per-class count table (class, train, val, test)."""

    split: RetrievalSplit
    folder: Path
    counts: pd.DataFrame


def split_counts(split: RetrievalSplit) -> pd.DataFrame:
    """Images per class and part (rows: classes in label order; columns train, val, test)."""
    rows = {name: {p: 0 for p in PARTS} for name in split.classes}
    for part in PARTS:
        for record in split.part(part):
            rows.setdefault(record.label, {p: 0 for p in PARTS})[part] += 1
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(PARTS))
    table.index.name = "class"
    return table.reset_index()


def split(cfg: RetrievalConfig, run_dir: str | Path, config_file: str | Path | None = None,
          overrides: Sequence[str] | None = None) -> SplitReport:
    """Split the data of ``cfg.data`` by object ID into ``RUN/splits`` (reused when it exists) and write
    ``RUN/config.yaml`` / ``run.json`` (with the train settings ``config_file`` / ``overrides`` give, which
    a later ``train`` keeps instead of the hardware's auto settings)."""
    run_dir = Path(run_dir)
    run = RunFolder.create(run_dir, JOB, config=cfg, seed=cfg.train.seed)
    run.update_info(**{EXPLICIT_KEYS: sorted(_given_train_keys(run, config_file, overrides))})
    folder = run.sub(SPLITS)
    result = make_retrieval_split(cfg.data, folder)
    return SplitReport(result, folder, split_counts(result))


def load_split(run_dir: str | Path) -> RetrievalSplit:
    """The run's split files (``RUN/splits``); a run without them is a one-line error."""
    folder = open_run(run_dir).sub(SPLITS)
    if not all(path.is_file() for path in split_paths(folder).values()):
        raise DataError(f"{folder} has no split files: run `fabml retrieval split --data DIR --out {run_dir}` first")
    return read_retrieval_split(folder)


# ------------------------------------------------------------------------------------- embedding
def class_codes(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """int64 [N]: position of each label in ``classes`` (-1 for a label not listed)."""
    position = {name: i for i, name in enumerate(classes)}
    return np.asarray([position.get(str(label), -1) for label in labels], dtype=np.int64)


@torch.no_grad()
def embed_records(model: torch.nn.Module, records: Sequence[RetrievalRecord], image_size: int,
                  batch_size: int = 64, num_workers: int = 0, what: str = "embedding",
                  fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """L2-normalised embeddings ``[N, D]`` float32 of ``records`` (no augmentation) with ``model.embed``
    (or ``fn(images)``, e.g. ``model.backbone`` for the pooled backbone features ``[N, C]``).

    The model stays on its device; it is put in eval mode for the pass and back in its mode afterwards.
    """
    fn = fn or model.embed
    if not records:
        raise DataError(f"{what}: no images to embed")
    device = next(model.parameters()).device
    dataset = RetrievalImageDataset(records, [], image_size, None)
    loader = DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False,
                        num_workers=max(0, int(num_workers)), pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    out = []
    for batch in track(loader, what, total=len(loader)):
        out.append(fn(batch["image"].to(device, non_blocking=True)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def _workers(cfg: RetrievalConfig) -> int:
    """Loader workers for embedding passes: ``train.num_workers`` (-1 = auto)."""
    return resolve_num_workers(cfg.train.num_workers)


def search_labels(index: VectorIndex, ref_codes: np.ndarray, query_emb: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores [Q,k'], ids [Q,k'], labels [Q,k'])`` of the k nearest references; missing neighbours
    (approximate index) have id -1 and label -1."""
    scores, ids = index.search(query_emb, k)
    labels = np.where(ids >= 0, ref_codes[np.clip(ids, 0, None)], -1)
    return scores, ids, labels


def retrieval_figures(index: VectorIndex, ref_codes: np.ndarray, query_emb: np.ndarray, query_codes: np.ndarray,
                      ks: Sequence[int], top_k: int) -> tuple[dict[str, float | int], np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """Recall@k, Precision@k, MAP@R, top-1 (nearest neighbour, weighted vote) of queries against an index;
    also returns the neighbour scores, ids and labels (``max(ks, top_k, largest R)`` columns)."""
    n_relevant = np.bincount(ref_codes[ref_codes >= 0], minlength=int(max(ref_codes.max(), query_codes.max())) + 1)
    r = np.where(query_codes >= 0, n_relevant[np.clip(query_codes, 0, None)], 0)
    k = int(min(len(index), max([*ks, top_k, int(r.max(initial=1))])))
    scores, ids, labels = search_labels(index, ref_codes, query_emb, k)
    return label_retrieval_metrics(labels, scores, query_codes, r, ks, top_k), scores, ids, labels


def make_validator(cfg: RetrievalConfig, split_: RetrievalSplit, embed_batch: int) -> Callable[[Any], dict[str, float]]:
    """Per-epoch selection metric: Recall@k (``eval.recall_k_values``) and MAP@R of the val split queried
    against the train split (both embedded with the current model, exact search): ``val_recall_at_1`` is
    the monitor of early stopping and of the best checkpoint.

    While the backbone is frozen (the warm-up epochs) its pooled features of both splits do not change: they
    are computed once and only the neck runs each epoch (``embed = normalise(neck(pooled))``, the same
    vectors); the cache is dropped as soon as the backbone trains."""
    if not split_.val:
        raise DataError("the val split is empty: validation Recall@1 needs validation images "
                        "(raise data.val_fraction or add images)")
    ref_codes = class_codes([r.label for r in split_.train], split_.classes)
    val_codes = class_codes([r.label for r in split_.val], split_.classes)
    size, workers = int(cfg.data.image_size), _workers(cfg)

    pooled: dict[str, np.ndarray] = {}  # the frozen backbone's features of each split

    def embed(model: Any, part: str) -> np.ndarray:
        records = split_.train if part == "train" else split_.val
        if any(p.requires_grad for p in model.backbone.parameters()):
            pooled.clear()
            return embed_records(model, records, size, embed_batch, workers, what=f"validation: {part} split")
        if part not in pooled:
            pooled[part] = embed_records(model, records, size, embed_batch, workers, fn=model.backbone,
                                         what=f"validation: {part} split (frozen backbone, once)")
        device, was_training = next(model.parameters()).device, model.training
        model.eval()
        with torch.no_grad():
            feats = torch.from_numpy(pooled[part]).to(device)
            out = torch.nn.functional.normalize(model.neck(feats).float(), dim=1).cpu().numpy()
        model.train(was_training)
        return out

    def validate(method: Any) -> dict[str, float]:
        model = method.model
        refs, queries = embed(model, "train"), embed(model, "val")
        index = VectorIndex(refs.shape[1])
        index.add(refs)
        figures, *_ = retrieval_figures(index, ref_codes, queries, val_codes, cfg.eval.recall_k_values, cfg.eval.top_k)
        out = {f"val_recall_at_{k}": float(figures[f"recall_at_{k}"]) for k in cfg.eval.recall_k_values}
        out["val_map_at_r"] = float(figures["map_at_r"])
        return out

    return validate


# ------------------------------------------------------------------------------------------ train
@dataclass
class TrainReport:
    """What ``train`` did: the trainer's result, the split, the batch, the auto settings line."""

    result: Any
    split: RetrievalSplit
    batch: str
    auto_settings: str
    model_path: Path | None
    peak_rss_mb: float


def _given_train_keys(run: RunFolder, config: str | Path | None, overrides: Sequence[str] | None) -> set[str]:
    from fabml.retrieval.hardware import explicit_train_keys

    given = explicit_train_keys(config, overrides)
    return given | set(run.read_info().get(EXPLICIT_KEYS, []))


def train(cfg: RetrievalConfig, run_dir: str | Path, fresh: bool = False, resume: bool = False,
          config_file: str | Path | None = None, overrides: Sequence[str] | None = None) -> TrainReport:
    """Train the embedding model with ArcFace on P×K batches of the train split (split first if needed).

    Auto settings by device (:mod:`fabml.retrieval.hardware`) fill ``precision``, ``num_workers`` and
    ``grad_accum_steps`` unless ``config_file``/``overrides`` (or an earlier start of this run) set them.
    Running again on the same folder continues from ``checkpoints/latest.pt`` when the settings are
    unchanged (``train.auto_resume``); changed settings are refused naming them, unless ``resume`` (continue
    with them) or ``fresh`` (start over). A new run loads the backbone's pretrained weights (the weights step).
    Writes ``model.pt`` from the best checkpoint (validation Recall@1) when training ends.
    """
    from fabml.data.retrieval_data import PKBatchSampler
    from fabml.engine.trainer import Trainer, seed_everything
    from fabml.retrieval.hardware import (
        apply_auto_settings,
        auto_train_settings,
        describe_auto_settings,
        device_props,
        enable_cudnn_benchmark,
    )
    from fabml.weights import load_pretrained

    run_dir = Path(run_dir)
    cfg.model.backbone = resolve_backbone(cfg.model)  # "auto" -> a timm name, recorded in config.yaml
    RunFolder.create(run_dir, JOB)  # refuses a folder of another job before anything is written
    run = RunFolder(run_dir, JOB)
    # rank 0 writes the split files (when the run has none) while the other ranks wait, then every rank reads them
    data_split = main_process_only(lambda: make_retrieval_split(cfg.data, run.sub(SPLITS)), "the split")
    data_split = data_split or make_retrieval_split(cfg.data, run.sub(SPLITS))
    given = _given_train_keys(run, config_file, overrides)
    props = device_props(resolve_device(cfg.train.device))
    settings = auto_train_settings(props)
    applied = apply_auto_settings(cfg.train, settings, given)
    auto_line = describe_auto_settings(props, settings, applied)
    enable_cudnn_benchmark(props)
    train_codes = class_codes([r.label for r in data_split.train], data_split.classes)
    if (train_codes < 0).any():
        raise DataError("the train split holds classes that classes.txt does not list: delete RUN/splits and split again")
    p = cfg.sampler.num_classes_per_batch
    n_classes = len(np.unique(train_codes))
    p_eff = n_classes if p is None else int(p)
    k = int(cfg.sampler.samples_per_class)
    cfg.train.batch_size = p_eff * k

    def sampler(rank: int, world_size: int) -> PKBatchSampler:
        return PKBatchSampler(train_codes, p, k, seed=cfg.train.seed, rank=rank, world_size=world_size)

    dataset = RetrievalImageDataset(data_split.train, data_split.classes, cfg.data.image_size,
                                    cfg.augment if cfg.augment.enabled else None)
    validate = make_validator(cfg, data_split, embed_batch=max(32, cfg.train.batch_size))
    seed_everything(cfg.train.seed)  # the initial weights too: the same config gives the same run
    method = build_method(cfg, len(data_split.classes))
    trainer = Trainer(method, cfg.train, run_dir, dataset, validate=validate, job_config=to_dict(cfg),
                      batch_sampler=sampler)
    # before config.yaml is overwritten: a checkpoint with other settings needs --resume or --fresh
    will_resume = trainer.will_resume(resume, fresh)
    run = RunFolder.create(run_dir, JOB, config=cfg, seed=cfg.train.seed)
    world = int(trainer.hardware.world_size)
    ranks = f" × {world} processes" if world > 1 else ""
    batch = (f"effective batch: P×K = {p_eff}×{k} = {p_eff * k} images{ranks} × {cfg.train.grad_accum_steps} "
             f"accumulation = {p_eff * k * world * cfg.train.grad_accum_steps} per optimizer step "
             f"({len(data_split.train)} training images, {n_classes} classes)")
    if is_main_process():
        run.update_info(**{EXPLICIT_KEYS: sorted(given)})
        run.artefact_path.unlink(missing_ok=True)  # rewritten from the best checkpoint when this training ends
        err.print(auto_line)
        err.print(batch)
    if not will_resume and cfg.model.pretrained:
        load_pretrained(method.model)
    result = trainer.fit(resume=will_resume, fresh=fresh)
    path = None
    if is_main_process():
        # the trainer rewrites run.json on a fresh start: name the job and the settings given again
        run.update_info(**{EXPLICIT_KEYS: sorted(given)})
        path = save_model(run, cfg, data_split.classes)
    return TrainReport(result, data_split, batch, auto_line, path, peak_rss_mb())


# ------------------------------------------------------------------------------------------ index
@dataclass
class IndexReport:
    """What ``index`` did: references in the index (before/after), what was added, the threshold."""

    folder: Path
    n_references: int
    added: int
    new_classes: list[str]
    threshold: UnknownThreshold | None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_references(run_dir: str | Path) -> tuple[VectorIndex, pd.DataFrame]:
    """The run's index and its ``references.csv`` (one row per vector, in id order: path, label)."""
    folder = open_run(run_dir).sub(INDEX)
    if not (folder / INDEX_FILE).is_file() or not (folder / REFERENCES).is_file():
        raise DataError(f"{folder / INDEX_FILE} not found: build the index with `fabml retrieval index --run {run_dir}`")
    index = VectorIndex.load(folder / INDEX_FILE)
    refs = pd.read_csv(folder / REFERENCES, dtype={"path": str, "label": str}, keep_default_na=False)
    if len(refs) != len(index):
        raise DataError(f"{folder / REFERENCES} lists {len(refs)} references but the index holds {len(index)}: "
                        f"rebuild it with `fabml retrieval index --run {run_dir}`")
    return index, refs


def read_threshold(run_dir: str | Path) -> UnknownThreshold | None:
    """The calibrated unknown threshold of the run's index (None when it could not be calibrated)."""
    path = open_run(run_dir).sub(INDEX) / THRESHOLD
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return UnknownThreshold.from_dict(data) if data.get("threshold") is not None else None


def _add_records(folder: Path, cfg: RetrievalConfig) -> list[RetrievalRecord]:
    """Images under ``folder``: class folders (``DIR/<class>/*``), or one class folder itself (class = its name)."""
    if not folder.is_dir():
        raise DataError(f"--add {folder}: folder not found")
    exts = {e.lower().lstrip(".") for e in cfg.data.extensions}
    direct = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower().lstrip(".") in exts]
    data_cfg = replace(cfg.data, root=str(folder), list_file="", class_names=[], group_by_id=False, skip_bad=cfg.data.skip_bad)
    if direct:
        data_cfg = replace(data_cfg, root=str(folder.parent), class_names=[folder.name])
    found = discover_records(data_cfg)
    for note in found.notes:
        err.print(f"note: {note}")
    return found.records


def build_index(run_dir: str | Path, add: str | Path | None = None, embed_batch: int = 64) -> IndexReport:
    """Embed the train split into ``RUN/index`` and calibrate the unknown threshold on the val split;
    with ``add`` (a folder of class folders, or one class folder), embed those images and add them to the
    existing index: new references and whole new classes, no retraining (the threshold stays)."""
    run_dir = Path(run_dir)
    cfg, model, classes = load_trained(run_dir, resolve_device(run_config(run_dir).train.device))
    folder = open_run(run_dir).sub(INDEX)
    size = int(cfg.data.image_size)
    if add is not None:
        index, refs = read_references(run_dir)
        records = _add_records(Path(add), cfg)
        known = set(refs["path"])
        skipped = [r.path for r in records if r.path in known]
        records = [r for r in records if r.path not in known]
        if not records:
            raise DataError(f"--add {add}: every image there is already in the index ({len(skipped)} images)")
        emb = embed_records(model, records, size, embed_batch, _workers(cfg), what="embedding new references")
        index.add(emb)
        old_classes = set(refs["label"])
        new_rows = pd.DataFrame({"path": [r.path for r in records], "label": [r.label for r in records]})
        refs = pd.concat([refs, new_rows], ignore_index=True)
        _write_index(folder, index, refs)
        new_classes = sorted(set(new_rows["label"]) - old_classes)
        notes = [f"the unknown threshold stays as calibrated ({THRESHOLD}); rebuild the index to recalibrate"]
        return IndexReport(folder, len(index), len(records), new_classes, read_threshold(run_dir), skipped, notes)
    data_split = load_split(run_dir)
    refs_emb = embed_records(model, data_split.train, size, embed_batch, _workers(cfg), what="embedding the train split")
    index = VectorIndex(refs_emb.shape[1], cfg.index)
    index.add(refs_emb)
    refs = pd.DataFrame({"path": [r.path for r in data_split.train], "label": [r.label for r in data_split.train]})
    _write_index(folder, index, refs)
    notes: list[str] = []
    threshold = None
    if data_split.val:
        val_emb = embed_records(model, data_split.val, size, embed_batch, _workers(cfg), what="embedding the val split")
        try:
            threshold = calibrate_unknown(
                val_emb, class_codes([r.label for r in data_split.val], classes), refs_emb,
                class_codes(refs["label"], classes), method=cfg.eval.unknown_method, far=cfg.eval.unknown_far,
                quantile=cfg.eval.unknown_quantile, heldout_class_fraction=cfg.eval.heldout_class_fraction,
                seed=cfg.data.split_seed)
            notes += threshold.notes
        except DataError as exc:
            notes.append(f"no unknown threshold ({exc}); predict names the nearest class for every image")
    else:
        notes.append("the val split is empty: no unknown threshold; predict names the nearest class for every image")
    payload = threshold.to_dict() if threshold else {"threshold": None, "notes": notes}
    (folder / THRESHOLD).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return IndexReport(folder, len(index), len(index), sorted(set(refs["label"])), threshold, [], notes)


def _write_index(folder: Path, index: VectorIndex, refs: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index.save(folder / INDEX_FILE)
    tmp = folder / (REFERENCES + ".tmp")
    refs.to_csv(tmp, index=False)
    tmp.replace(folder / REFERENCES)


def _reference_classes(classes: list[str], refs: pd.DataFrame) -> list[str]:
    """The training classes, then classes added to the index later (in order of first appearance)."""
    extra = [c for c in dict.fromkeys(refs["label"]) if c not in set(classes)]
    return list(classes) + extra


# --------------------------------------------------------------------------------------- evaluate
@dataclass
class EvalReport:
    """What ``evaluate`` computed and wrote (``metrics.json`` holds all of it)."""

    split: str
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    out_dir: Path
    unknown: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def query_records(cfg: RetrievalConfig, data: str | Path | None, list_file: str | Path | None) -> list[RetrievalRecord]:
    """Labelled images outside the run's split: class folders ``data`` or a list file (``path, label`` lines;
    paths relative to its folder); every image is its own group and no size is excluded."""
    if (data is None) == (list_file is None):
        raise ConfigError("pass either --data (class folders) or --list (a list file) to evaluate other images")
    source = replace(cfg.data, root=str(Path(data).resolve()) if data is not None else "",
                     list_file=str(Path(list_file).resolve()) if list_file is not None else "",
                     class_names=[], group_by_id=False, min_image_size=0)
    found = discover_records(source)
    for note in found.notes:
        err.print(f"note: {note}")
    return found.records


def evaluate(run_dir: str | Path, split_name: str = "test", out: str | Path | None = None,
             figures: bool = True, gallery_queries: int = 8, data: str | Path | None = None,
             list_file: str | Path | None = None) -> EvalReport:
    """Query the images of a split (or of ``data`` / ``list_file``: labelled images from elsewhere, e.g. a
    data set's own test list) against the run's index (``index`` first).

    Writes ``OUT/metrics.json`` (Recall@k for ``eval.recall_k_values``, Precision@k, MAP@R, top-1 by nearest
    neighbour and by similarity-weighted vote of ``eval.top_k``, the share called unknown at the
    calibrated threshold), ``per_class.csv``, ``confusion.png`` (weighted-vote predictions) and
    ``gallery.png``; OUT defaults to ``RUN/evaluation/<split>`` (``RUN/evaluation/list_<stem>`` for a list
    file, ``RUN/evaluation/data_<folder>`` for folders).
    """
    from fabml.retrieval.report import GalleryRow, plot_confusion, plot_gallery

    external = data is not None or list_file is not None
    if split_name not in ("val", "test"):
        raise ConfigError(f"--split {split_name!r} is unknown: use val or test")
    run_dir = Path(run_dir)
    index, refs = read_references(run_dir)
    cfg, model, classes = load_trained(run_dir, resolve_device(run_config(run_dir).train.device))
    if external:
        records = query_records(cfg, data, list_file)
        split_name = f"list_{Path(list_file).stem}" if list_file is not None else f"data_{Path(data).name}"
    else:
        records = load_split(run_dir).part(split_name)
    if not records:
        raise DataError(f"the {split_name} split of {run_dir} is empty: nothing to evaluate")
    out_dir = Path(out) if out is not None else open_run(run_dir).sub(EVALUATION) / split_name
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _reference_classes(classes, refs)
    ref_codes = class_codes(refs["label"], names)
    query_codes = class_codes([r.label for r in records], names)
    ks, top_k = [int(k) for k in cfg.eval.recall_k_values], int(cfg.eval.top_k)
    start = time.perf_counter()
    emb = embed_records(model, records, int(cfg.data.image_size), 64, _workers(cfg), what=f"embedding the {split_name} images")
    seconds = time.perf_counter() - start
    overall, scores, ids, labels = retrieval_figures(index, ref_codes, emb, query_codes, ks, top_k)
    vote = weighted_vote(labels, scores, top_k)
    threshold = read_threshold(run_dir)
    unknown = None
    if threshold is not None:
        rejected = threshold.is_unknown(scores[:, 0])
        unknown = {**threshold.to_dict(), "rejected_share": float(rejected.mean())}
    rows = []
    for code in sorted(set(query_codes.tolist())):
        mask = query_codes == code
        label = names[code] if code >= 0 else "?"
        part = label_retrieval_metrics(labels[mask], scores[mask], query_codes[mask],
                                       np.full(int(mask.sum()), int((ref_codes == code).sum()) if code >= 0 else 0),
                                       ks, top_k)
        rows.append({"class": label, "n_queries": int(mask.sum()), "n_references": int((ref_codes == code).sum()),
                     **{key: part[key] for key in part if key not in ("n_queries", "queries_without_relevant")}})
    per_class = pd.DataFrame(rows)
    per_class.to_csv(out_dir / "per_class.csv", index=False)
    notes = []
    if overall["queries_without_relevant"]:
        notes.append(f"{overall['queries_without_relevant']} {split_name} images of classes without references in the "
                     "index were not scored")
    metrics = {**overall, "embed_seconds": seconds, "images_per_second": len(records) / max(seconds, 1e-9)}
    payload = {"split": split_name, "run": str(run_dir), "n_references": len(index), "metrics": metrics,
               "unknown": unknown, "settings": {"recall_k_values": ks, "top_k": top_k, "index": to_dict(cfg.index)},
               "notes": notes}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2, default=float), encoding="utf-8")
    if figures and (query_codes >= 0).any():
        scored = query_codes >= 0
        used = sorted(set(query_codes[scored].tolist()) | set(vote[scored].tolist()) - {-1})
        position = {code: i for i, code in enumerate(used)}
        matrix = np.zeros((len(used), len(used)), dtype=np.int64)
        np.add.at(matrix, ([position[c] for c in query_codes[scored]], [position[c] for c in vote[scored]]), 1)
        plot_confusion(matrix, [names[c] for c in used], out_dir / "confusion.png",
                       title=f"{split_name}: weighted vote of the top {top_k}")
        wrong = [i for i in np.flatnonzero(scored) if vote[i] != query_codes[i]]
        right = [i for i in np.flatnonzero(scored) if vote[i] == query_codes[i]]
        half = gallery_queries // 2
        picks = wrong[:half] + right[: gallery_queries - min(len(wrong), half)]
        picks = (picks + wrong[half:])[:gallery_queries]
        shown = min(5, labels.shape[1])
        plot_gallery([GalleryRow(records[i].path, names[query_codes[i]], names[vote[i]] if vote[i] >= 0 else "?",
                                 [refs["path"].iloc[j] for j in ids[i, :shown]],
                                 [names[c] for c in labels[i, :shown]], [float(s) for s in scores[i, :shown]])
                      for i in picks], out_dir / "gallery.png",
                     title=f"{split_name} queries and their nearest references (green: same class)")
    return EvalReport(split_name, metrics, per_class, out_dir, unknown, notes)


# ---------------------------------------------------------------------------------------- predict
@dataclass
class Predictions:
    """``table``: one row per image (path, predicted, best_similarity, unknown, nearest_class, vote_class);
    ``neighbours``: one row per image and rank (path, rank, reference, label, similarity)."""

    table: pd.DataFrame
    neighbours: pd.DataFrame
    out_dir: Path
    threshold: UnknownThreshold | None


def image_inputs(inputs: Sequence[str | Path], extensions: Sequence[str]) -> list[str]:
    """Image files named in ``inputs`` and images under the folders named there (recursive, sorted)."""
    exts = {e.lower().lstrip(".") for e in extensions}
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in exts)
            if not found:
                raise DataError(f"{path} holds no image ({', '.join(sorted(exts))})")
            paths += [str(p.resolve()) for p in found]
        elif path.is_file():
            paths.append(str(path.resolve()))
        else:
            raise DataError(f"{path} not found: pass image files or folders of images")
    if not paths:
        raise DataError("no images given: pass image files or folders of images")
    return paths


def predict(run_dir: str | Path, inputs: Sequence[str | Path], out: str | Path | None = None,
            top_k: int | None = None) -> Predictions:
    """Classify images by their nearest references: the ``top_k`` references with cosine similarities,
    the class by similarity-weighted vote of the top_k, and ``unknown`` when the best similarity is below
    the calibrated threshold. Writes ``OUT/predictions.csv`` and ``OUT/neighbours.csv`` (OUT defaults to
    ``RUN/predictions``)."""
    run_dir = Path(run_dir)
    index, refs = read_references(run_dir)
    cfg, model, classes = load_trained(run_dir, resolve_device(run_config(run_dir).train.device))
    k = int(top_k if top_k is not None else cfg.eval.top_k)
    if k < 1:
        raise ConfigError(f"--top-k {k} must be >= 1")
    paths = image_inputs(inputs, cfg.data.extensions)
    records = [RetrievalRecord(p, "", p) for p in paths]
    emb = embed_records(model, records, int(cfg.data.image_size), 64, _workers(cfg), what="embedding the images")
    names = _reference_classes(classes, refs)
    ref_codes = class_codes(refs["label"], names)
    scores, ids, labels = search_labels(index, ref_codes, emb, k)
    vote = weighted_vote(labels, scores, k)
    threshold = read_threshold(run_dir)
    unknown = threshold.is_unknown(scores[:, 0]) if threshold is not None else np.zeros(len(paths), bool)
    vote_names = [names[c] if c >= 0 else UNKNOWN for c in vote]
    table = pd.DataFrame({
        "path": paths,
        "predicted": [UNKNOWN if u else v for u, v in zip(unknown, vote_names)],
        "best_similarity": scores[:, 0].astype(float),
        "unknown": unknown,
        "nearest_class": [names[c] if c >= 0 else UNKNOWN for c in labels[:, 0]],
        "vote_class": vote_names,
        "threshold": threshold.threshold if threshold is not None else float("nan"),
    })
    rows = [{"path": paths[i], "rank": r + 1, "reference": refs["path"].iloc[ids[i, r]], "label": names[labels[i, r]],
             "similarity": float(scores[i, r])}
            for i in range(len(paths)) for r in range(ids.shape[1]) if ids[i, r] >= 0]
    neighbours = pd.DataFrame(rows, columns=["path", "rank", "reference", "label", "similarity"])
    out_dir = Path(out) if out is not None else open_run(run_dir).sub(PREDICTIONS)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "predictions.csv", index=False)
    neighbours.to_csv(out_dir / "neighbours.csv", index=False)
    return Predictions(table, neighbours, out_dir, threshold)


# ----------------------------------------------------------------------------------------- export
def export(run_dir: str | Path, out: str | Path | None = None, n_samples: int = 4, tolerance: float = 1e-4):
    """ONNX of the embedding model with resize and scaling inside (:mod:`fabml.retrieval.export`), checked
    against torch on images of the run's test/val split; writes ``model.onnx`` and ``model.parity.json``."""
    from fabml.retrieval.export import export_onnx

    run_dir = Path(run_dir)
    cfg, model, _ = load_trained(run_dir, "cpu")
    data_split = load_split(run_dir)
    records = (data_split.test + data_split.val + data_split.train)[: max(1, int(n_samples))]
    size = int(cfg.data.image_size)
    # samples at another size than the model's, so that the check covers the resize inside the graph
    dataset = RetrievalImageDataset(records, [], size + 8, None)
    samples = torch.stack([dataset[i]["image"] for i in range(len(records))]) * 255.0
    return export_onnx(model, size, Path(out) if out else run_dir / "model.onnx", samples, tolerance)
