"""The fitted artefact of an anomaly run (``model.pt``): model weights, config and calibration.

One file holds everything ``predict``, ``evaluate`` and ``export`` need, written atomically. The run folder is the
shared layout of :mod:`fabml.engine.runs` (config.yaml, run.json naming the job, model.pt, checkpoints/ for
gradient models) plus ``split.csv``, ``fit.json``, ``evaluation/``, ``predictions/`` and ``model.onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from fabml.anomaly.config import AnomalyConfig
from fabml.anomaly.models import create_anomaly_model
from fabml.anomaly.models.base import AnomalyModel
from fabml.anomaly.threshold import GradeConfig, ScoreNormalizer
from fabml.config import from_dict, to_dict
from fabml.data.anomaly_data import AnomalyImageDataset, ImageRecord
from fabml.engine.runs import ARTEFACT, RunFolder, config_sections
from fabml.errors import ConfigError

JOB = "anomaly"


@dataclass
class FittedModel:
    """A model ready to score images, with its calibration and the config it was fitted with."""

    name: str
    model: AnomalyModel
    normalizer: ScoreNormalizer
    grades: GradeConfig
    cfg: AnomalyConfig
    model_settings: dict[str, Any]
    calibration: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.model.image_size

    @property
    def channels(self) -> int:
        return self.model.in_chans

    def dataset(self, records: list[ImageRecord]) -> AnomalyImageDataset:
        """``records`` as the fitted model reads them: its image size and channels, and in reference mode
        each image with its reference aligned within the run's ``data.align_max_angle``."""
        return AnomalyImageDataset(records, self.image_size, self.channels, align_max_angle=self.cfg.data.align_max_angle)


def build_method(cfg: AnomalyConfig, image_size: tuple[int, int] | None = None, channels: int | None = None):
    """The anomaly method of ``cfg.model`` (random weights) for images of ``image_size`` (default
    ``data.image_size``) with ``channels`` channels (default ``data.channels``; 0 = auto needs the data)."""
    from fabml.anomaly.method import create_anomaly_method
    from fabml.anomaly.pipeline import model_settings

    size = image_size or (int(cfg.data.image_size[0]), int(cfg.data.image_size[1]))
    channels = channels or cfg.data.channels
    if not channels:
        raise ConfigError("data.channels=0 (auto) is decided from the images: set data.channels to 1 or 3, "
                          "or pass channels=")
    name, settings = model_settings(cfg, size, channels)
    return create_anomaly_method(name, create_anomaly_model(name, **settings))


def is_legacy_run(path: Path) -> bool:
    """An anomaly run written before run.json named its job: a model.pt, or a config.yaml with anomaly settings."""
    sections = config_sections(path)
    if sections is not None:
        return "calibration" in sections and sections <= {f.name for f in fields(AnomalyConfig)}
    return (Path(path) / ARTEFACT).is_file()


def open_run(run_dir: str | Path) -> RunFolder:
    """The anomaly run in ``run_dir`` (old runs without a job in run.json included); one-line error otherwise."""
    return RunFolder.open(run_dir, JOB, legacy=is_legacy_run, command="fabml anomaly fit --model NAME --out")


def save_fitted(run_dir: Path, fitted: FittedModel) -> Path | None:
    """Write ``run_dir/model.pt`` atomically (main process only; None on the other ranks)."""
    state = {
        "name": fitted.name,
        "model_settings": fitted.model_settings,
        "state_dict": {k: v.detach().cpu() for k, v in fitted.model.state_dict().items()},
        "normalizer": fitted.normalizer.to_dict(),
        "grades": to_dict(fitted.grades),
        "config": to_dict(fitted.cfg),
        "calibration": fitted.calibration,
    }
    return RunFolder(run_dir, JOB).save_artefact(state)


def load_fitted(run_dir: str | Path, device: torch.device | str = "cpu") -> FittedModel:
    """Rebuild the fitted model of ``run_dir`` (eval mode, on ``device``); old run folders load too."""
    run = RunFolder(run_dir, JOB)
    if not run.has_artefact():
        if run.root.is_dir() and run.recorded_job() not in (None, JOB):
            open_run(run_dir)  # names the job the folder belongs to
        raise ConfigError(f"no fitted model at {run.artefact_path}: run `fabml anomaly fit --model NAME --out "
                          f"{run.root}` first")
    state = open_run(run_dir).load_artefact()
    settings = dict(state["model_settings"])
    # the weights come from the artefact: never look for backbone files again
    if "pretrained" in settings:
        settings["pretrained"] = False
    model = create_anomaly_model(state["name"], **settings)
    model.load_state_dict(state["state_dict"])
    model.to(device).eval()
    return FittedModel(
        name=state["name"],
        model=model,
        normalizer=ScoreNormalizer.from_dict(state["normalizer"]),
        grades=from_dict(GradeConfig, state["grades"]),
        cfg=from_dict(AnomalyConfig, state["config"]),
        model_settings=dict(state["model_settings"]),
        calibration=dict(state.get("calibration", {})),
    )


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``fabml info`` shows for an anomaly run (from config.yaml as a dict)."""
    model, data = config.get("model") or {}, config.get("data") or {}
    return {"model": model.get("name"), "backbone": model.get("backbone"), "image size": data.get("image_size"),
            "channels": data.get("channels"), "data": data.get("root") or data.get("normal_dir"),
            "calibration": (config.get("calibration") or {}).get("method")}
