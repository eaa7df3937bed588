"""fit / predict / evaluate as plain functions the CLI, the benchmark and the tests call."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from fabml.anomaly.calibration import calibrate
from fabml.anomaly.config import AnomalyConfig
from fabml.anomaly.inference import ScoredSet, score_batches
from fabml.anomaly.inputs import ReferenceSource, check_reference_mode, image_records, paired_records
from fabml.anomaly.method import create_anomaly_method
from fabml.anomaly.models import create_anomaly_model
from fabml.anomaly.report import write_evaluation, write_predictions
from fabml.anomaly.runs import JOB, FittedModel, load_fitted, save_fitted
from fabml.anomaly.threshold import GRADE_NAMES, grade
from fabml.config import from_dict, to_dict
from fabml.data.anomaly_data import (
    AnomalyImageDataset,
    ImageRecord,
    detect_channels,
    discover_records,
    make_split,
    read_split,
    write_split,
)
from fabml.metrics.anomaly import anomaly_metrics, per_type_metrics
from fabml.engine.distributed import is_main_process, main_process_only
from fabml.engine.hardware import peak_rss_mb, resolve_device
from fabml.engine.runs import RunFolder
from fabml.engine.trainer import TrainConfig, Trainer, seed_everything
from fabml.errors import ConfigError, DataError

SPLIT_FILE = "split.csv"


@dataclass
class FitReport:
    """What ``fit`` did: timings, sizes, the calibration lines to print and the numbers behind them
    (``calibration``: thresholds, ``good_pass_rate``, ``defect_catch_rate``, ``warnings``...)."""

    run_dir: Path
    model: str
    split: str
    fit_seconds: float
    calibration_seconds: float
    peak_rss_mb: float
    messages: list[str] = field(default_factory=list)
    train_stats: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)


def model_settings(cfg: AnomalyConfig, image_size: tuple[int, int], channels: int) -> tuple[str, dict[str, Any]]:
    """The model name and its full settings (``image_size``/``in_chans`` from the data)."""
    settings = dict(cfg.model)
    name = str(settings.pop("name", "") or "")
    if not name:
        raise ConfigError("model.name is not set; choose a model, e.g. --model patchcore")
    for key in ("image_size", "in_chans"):
        if key in settings:
            raise ConfigError(f"model.{key} comes from the data settings; set data.image_size / data.channels instead")
    settings.update(image_size=list(image_size), in_chans=channels)
    return name, settings


def loader(records: list[ImageRecord], cfg: AnomalyConfig, size: tuple[int, int], channels: int,
           cache: bool = False) -> DataLoader:
    """An in-order loader over ``records`` for feature extraction, calibration and scoring; ``cache`` keeps
    the decoded (and, in reference mode, aligned) images for a loader that is read more than once."""
    dataset = AnomalyImageDataset(records, size, channels, cache=cache, align_max_angle=cfg.data.align_max_angle)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)


def train_config(method_defaults: dict[str, Any], overrides: dict[str, Any], cfg: AnomalyConfig) -> TrainConfig:
    """TrainConfig defaults <- the model's published settings <- the user's ``train`` section."""
    data = {"device": cfg.device, "seed": cfg.seed, "num_workers": cfg.num_workers, "drop_last": False}
    data.update(method_defaults)
    data.update(overrides)
    return from_dict(TrainConfig, data, where="train")


def fit(cfg: AnomalyConfig, run_dir: str | Path, resume: bool = False, fresh: bool = False) -> FitReport:
    """Fit ``cfg.model`` on the normal training images, calibrate on held-out normals, save ``model.pt``.

    Writes the run folder of :mod:`fabml.engine.runs` (config.yaml, run.json naming the job, model.pt) plus
    split.csv and fit.json. Under torchrun only the main process writes: a gradient model trains on every
    rank (DDP) and rank 0 calibrates and saves; a memory-bank model (PatchCore, PaDiM) fits on rank 0 only
    while the other ranks wait, and their report has no timings (``fit_seconds`` 0).
    """
    run_dir = Path(run_dir)
    split = make_split(cfg.data)
    size = (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    channels = cfg.data.channels or detect_channels(split.train)
    name, settings = model_settings(cfg, size, channels)
    seed_everything(cfg.seed)
    model = create_anomaly_model(name, **settings)
    check_reference_mode(name, model, split.train)
    if cfg.calibration.defect_dir and getattr(model, "pair_input", False):
        raise ConfigError("calibration.defect_dir holds single images, but the reference model scores pairs; leave "
                          "it empty (the threshold comes from the held-out good pairs and synthetic defects)")
    method = create_anomaly_method(name, model)
    trainer: Trainer | None = None
    if not method.memory_bank:
        train_cfg = train_config(method.default_train, cfg.train, cfg)
        dataset = AnomalyImageDataset(split.train, size, channels, cache=True, align_max_angle=cfg.data.align_max_angle)
        trainer = Trainer(method, train_cfg, run_dir, dataset, job_config=to_dict(cfg))
        # before config.yaml is overwritten: an existing checkpoint needs --resume/--fresh, or
        # train.auto_resume with unchanged settings
        resume = trainer.will_resume(resume, fresh)
    run = RunFolder.create(run_dir, JOB, config=cfg, seed=cfg.seed)
    if is_main_process():
        write_split(split, run_dir / SPLIT_FILE)
    device = resolve_device(cfg.device)

    def waiting_rank_report() -> FitReport:
        return FitReport(run_dir, name, split.summary(), 0.0, 0.0, peak_rss_mb())

    if trainer is None:
        def fit_on_main() -> FitReport:
            start = time.perf_counter()
            method.to(device)
            stats = dict(method.fit(loader(split.train, cfg, size, channels)))
            return _calibrate_and_save(run, cfg, split, method, model, name, settings, size, channels, device,
                                       stats, start)

        report = main_process_only(fit_on_main, what=f"the {name} fit")
        return report if report is not None else waiting_rank_report()

    start = time.perf_counter()
    stats: dict[str, float] = {}
    if not (resume and trainer.checkpoints.has_checkpoint()):  # a resumed run restores what prepare set
        stats.update(method.prepare(loader(split.train, cfg, size, channels)))
    result = trainer.fit(resume=resume, fresh=fresh)
    if not is_main_process():  # under torchrun: rank 0 calibrates and writes the run
        return waiting_rank_report()
    run.update_info()  # the trainer rewrites run.json on a fresh start: name the job again
    stats.update({"epochs": float(result.epochs_completed), "steps": float(result.global_step)})
    if result.history:
        stats["final_loss"] = float(result.history[-1].get("loss", float("nan")))
    method.to(device)
    return _calibrate_and_save(run, cfg, split, method, model, name, settings, size, channels, device, stats, start)


def _calibrate_and_save(run: RunFolder, cfg: AnomalyConfig, split: Any, method: Any, model: Any, name: str,
                        settings: dict[str, Any], size: tuple[int, int], channels: int, device: torch.device,
                        stats: dict[str, float], start: float) -> FitReport:
    """Finalise the fitted method, calibrate on the held-out normals, write model.pt and fit.json (main process)."""
    val_loader = loader(split.val, cfg, size, channels, cache=True)  # read by finalize, calibration, synthetic
    stats.update(method.finalize(val_loader))
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    defect_loader = None
    if cfg.calibration.defect_dir:
        defects = [replace(r, label=1, defect_type="defect") for r in
                   image_records([cfg.calibration.defect_dir], cfg.data.extensions)]
        defect_loader = loader(defects, cfg, size, channels)
    calibration = calibrate(model, val_loader, cfg.calibration, device, defect_loader)
    calibration_seconds = time.perf_counter() - start
    fitted = FittedModel(name, model, calibration.normalizer, cfg.grades, cfg, settings, calibration.info)
    save_fitted(run.root, fitted)
    report = FitReport(
        run_dir=run.root, model=name, split=split.summary(), fit_seconds=fit_seconds,
        calibration_seconds=calibration_seconds, peak_rss_mb=peak_rss_mb(),
        messages=calibration.messages, train_stats={k: float(v) for k, v in stats.items()},
        calibration=calibration.info,
    )
    (run.root / "fit.json").write_text(json.dumps({**report.__dict__, "run_dir": str(run.root)}, indent=2, default=str))
    return report


@dataclass
class Predictions:
    """Normalised outputs for a set of images (threshold at 0.5), plus the raw ones."""

    table: pd.DataFrame  # path, defect_type, label, raw_score, score, anomalous, grade, grade_name[, severity]
    scored: ScoredSet
    maps: np.ndarray | None  # [N, H, W] normalised maps in [0, 1]
    infer_ms_per_image: float


def run_predictions(fitted: FittedModel, records: list[ImageRecord], batch_size: int, device: torch.device,
                    keep_maps: bool = True) -> Predictions:
    """Score ``records`` with ``fitted``; times the loop after a one-batch warm-up."""
    check_reference_mode(fitted.name, fitted.model, records)
    dataset = fitted.dataset(records)
    data = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection are not inference time
        fitted.model(dataset[0]["image"][None].to(device))  # one image, not a whole batch read (and aligned) twice
    start = time.perf_counter()
    scored = score_batches(fitted.model, data, device, keep_maps=keep_maps, description="predicting")
    ms = 1000.0 * (time.perf_counter() - start) / max(1, len(records))
    norm = np.asarray(fitted.normalizer.normalize_scores(scored.scores))
    maps = np.asarray(fitted.normalizer.normalize_maps(scored.maps)) if keep_maps else None
    grades = np.asarray(grade(norm, fitted.grades.cuts))
    table = pd.DataFrame({
        "path": [records[i].path for i in scored.indices],
        "defect_type": [records[i].defect_type for i in scored.indices],
        "label": scored.labels,
        "raw_score": scored.scores,
        "score": norm,
        "anomalous": norm >= 0.5,
        "grade": grades,
        "grade_name": [GRADE_NAMES[g] for g in grades],
    })
    if scored.severities is not None:  # a model with a severity head: its prediction beside score and grade
        table["severity"] = scored.severities
    if maps is not None:
        table["defect_area_fraction"] = (maps >= 0.5).reshape(len(maps), -1).mean(axis=1)
    if dataset.alignments:  # reference mode: where each image sat relative to its reference
        table["reference"] = [records[i].reference for i in scored.indices]
        for column in dataset.alignments[int(scored.indices[0])]:
            table[column] = [dataset.alignments[int(i)][column] for i in scored.indices]
    return Predictions(table, scored, maps, ms)


def evaluation_records(run_dir: Path, fitted: FittedModel, data: str | None) -> list[ImageRecord]:
    """The run's own test split, or every image under ``data`` (a data root in the run's layout)."""
    if data is None:
        return read_split(run_dir / SPLIT_FILE).test
    data_cfg = replace(fitted.cfg.data, root=str(data))
    records = discover_records(data_cfg)
    if not records:
        raise DataError(f"no images found under {data}")
    return records


def predict(run_dir: str | Path, inputs: list[str], out_dir: str | Path, overlays: bool = True,
            save_maps: bool = False, references: ReferenceSource | None = None) -> Predictions:
    """Score images with a fitted run; writes predictions.csv (+ overlays.png, maps.npz).

    A reference-mode run pairs each image with its reference by ``references`` (or by the run's own
    reference settings); the table then also holds each image's reference and alignment."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    device = resolve_device("auto")
    fitted = load_fitted(run_dir, device)
    references = references or ReferenceSource()
    if getattr(fitted.model, "pair_input", False) or references.given:
        records = paired_records(fitted, inputs, references)
    else:
        if not inputs:
            raise ConfigError("no images given: pass image files or folders")
        records = image_records(inputs, fitted.cfg.data.extensions)
    result = run_predictions(fitted, records, fitted.cfg.batch_size, device)
    write_predictions(out_dir, fitted, records, result, overlays=overlays, save_maps=save_maps)
    return result


@dataclass
class EvalReport:
    """Metrics of a fitted run on labelled test images."""

    metrics: dict[str, Any]
    per_type: dict[str, dict[str, Any]]
    infer_ms_per_image: float
    out_dir: Path
    predictions: Predictions


def evaluate(run_dir: str | Path, out_dir: str | Path | None = None, data: str | None = None,
             figures: bool = True, save_maps: bool = False) -> EvalReport:
    """Metrics on the run's test split or on ``data``; writes files and figures.

    Metrics (:func:`fabml.metrics.anomaly.anomaly_metrics`): image/pixel AUROC, AUPRO, F1-max, F1 at the
    calibrated threshold, the anomalous share of the test images and the F1 of calling every image
    anomalous (the floor F1 must beat), and with masks the box hit rate and the region recall at the
    calibrated pixel threshold (raw maps; the same as normalised map >= 0.5). ``save_maps`` keeps the
    normalised maps already computed: ``out_dir/maps.npz`` as :func:`predict` writes it.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "evaluation"
    device = resolve_device("auto")
    fitted = load_fitted(run_dir, device)
    records = evaluation_records(run_dir, fitted, data)
    result = run_predictions(fitted, records, fitted.cfg.batch_size, device)
    scored = result.scored
    has_masks = any(r.mask_path for r in records)
    metrics = anomaly_metrics(
        scored.labels, scored.scores,
        masks=scored.masks if has_masks else None, maps=scored.maps if has_masks else None,
        threshold=fitted.normalizer.image_threshold, pixel_threshold=fitted.normalizer.pixel_threshold,
    )
    types = list(result.table["defect_type"])
    per_type = per_type_metrics(
        types, scored.labels, scored.scores,
        masks=scored.masks if has_masks else None, maps=scored.maps if has_masks else None,
        normal_type=_normal_type(records), threshold=fitted.normalizer.image_threshold,
        pixel_threshold=fitted.normalizer.pixel_threshold,
    )
    metrics["infer_ms_per_image"] = result.infer_ms_per_image
    metrics["n_images"] = len(records)
    metrics["n_anomalous"] = int(scored.labels.sum())
    write_evaluation(out_dir, fitted, records, result, metrics, per_type, figures=figures, save_maps=save_maps)
    return EvalReport(metrics, per_type, result.infer_ms_per_image, out_dir, result)


def _normal_type(records: list[ImageRecord]) -> str | None:
    normal = {r.defect_type for r in records if r.label == 0}
    return next(iter(normal)) if len(normal) == 1 else None


def export(run_dir: str | Path, out: str | Path | None = None, n_samples: int = 4, tolerance: float = 1e-4):
    """Export the run to ONNX (pre-processing, scoring, normalisation inside) and check parity on sample images."""
    from fabml.anomaly.export import export_onnx

    run_dir = Path(run_dir)
    fitted = load_fitted(run_dir, "cpu")
    split = read_split(run_dir / SPLIT_FILE)
    records = (split.test + split.val)[: max(1, n_samples)]
    dataset = fitted.dataset(records)
    samples = torch.stack([dataset[i]["image"] for i in range(len(records))]) * 255.0
    return export_onnx(fitted, Path(out) if out else run_dir / "model.onnx", samples, tolerance)
