"""The fitted artefact of an anomaly run (``model.pt``): model weights, config and calibration.

One file holds everything ``predict``, ``evaluate`` and ``export`` need, written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fabml.anomaly.config import AnomalyConfig
from fabml.anomaly.models import create_anomaly_model
from fabml.anomaly.models.base import AnomalyModel
from fabml.anomaly.threshold import GradeConfig, ScoreNormalizer
from fabml.config import from_dict, to_dict
from fabml.engine.checkpoint import load_checkpoint, save_checkpoint
from fabml.errors import ConfigError

ARTEFACT = "model.pt"


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


def save_fitted(run_dir: Path, fitted: FittedModel) -> Path:
    """Write ``run_dir/model.pt`` atomically."""
    state = {
        "name": fitted.name,
        "model_settings": fitted.model_settings,
        "state_dict": {k: v.detach().cpu() for k, v in fitted.model.state_dict().items()},
        "normalizer": fitted.normalizer.to_dict(),
        "grades": to_dict(fitted.grades),
        "config": to_dict(fitted.cfg),
        "calibration": fitted.calibration,
    }
    return save_checkpoint(state, Path(run_dir) / ARTEFACT)


def load_fitted(run_dir: str | Path, device: torch.device | str = "cpu") -> FittedModel:
    """Rebuild the fitted model of ``run_dir`` (eval mode, on ``device``)."""
    path = Path(run_dir) / ARTEFACT
    if not path.is_file():
        raise ConfigError(f"no fitted model at {path}: run `fabml anomaly fit ... --run {run_dir}` first")
    state = load_checkpoint(path)
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
