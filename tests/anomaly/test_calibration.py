"""Calibration says what its image threshold will do: pass rate of good images, catch rate of defects, warnings.

Scores come from a stub model whose image score is the mean grey value of a constant image (or 0 for
every image), so every threshold, rate and warning below is computed by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fabml.anomaly.calibration import calibrate, threshold_check
from fabml.anomaly.config import AnomalyConfig, CalibrationConfig
from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput
from fabml.anomaly.pipeline import fit
from fabml.anomaly.threshold import ThresholdResult
from fabml.config import from_dict
from fabml.errors import ConfigError

SIZE = 32
CPU = torch.device("cpu")


class GreyLevelModel(AnomalyModel):
    """Anomaly map = ``gain`` x grey value, or ``|grey - the image's median|`` with ``deviation``; score = map max."""

    def __init__(self, gain: float = 1.0, deviation: bool = False) -> None:
        super().__init__((SIZE, SIZE), 1)
        self.gain = gain
        self.deviation = deviation

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        self.check_input(images)
        if self.deviation:
            median = images.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
            return self.output((images - median).abs())
        return self.output(images * self.gain)


class ConstantImages(Dataset):
    """One ``[1, SIZE, SIZE]`` image per value, every pixel that value (float32), in the loader's batch format."""

    def __init__(self, values: list[float], label: int = 0) -> None:
        self.values = values
        self.label = label

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": torch.full((1, SIZE, SIZE), self.values[i]),
            "mask": torch.zeros(1, SIZE, SIZE),
            "label": torch.tensor(self.label),
            "index": torch.tensor(i),
        }


def _loader(values: list[float], label: int = 0) -> DataLoader:
    return DataLoader(ConstantImages(values, label), batch_size=8)


def _f32(x: float) -> float:
    return float(np.float32(x))


NORMALS = [i / 100 for i in range(25)]  # 0.00 ... 0.24
DEFECTS = [0.22, 0.3, 0.4, 0.5]  # F1-max against NORMALS: t = 0.30 (TP 3, FP 0: F1 6/7) beats 0.22 (F1 8/11)
SYNTHETIC_F1 = ThresholdResult(8.0, "f1", "synthetic", "threshold 8 from F1-max")


def _kinds(warnings: list[str]) -> set[str]:
    """Which of the three warnings are present, by the setting each one names."""
    kinds = {"few_normals": "min_normals", "low_pass": "min_pass_rate", "low_catch": "min_catch_rate"}
    found = {kind for kind, setting in kinds.items() for text in warnings if f"calibration.{setting}=" in text}
    assert len(found) == len(warnings), f"one warning per condition, got {warnings}"
    return found


def test_rates_are_the_shares_below_and_at_or_above_the_threshold() -> None:
    normals = np.arange(10.0)  # 0..9: 8 of them (0..7) lie below the threshold 8
    defects = np.array([4.0, 8.0, 9.0, 12.0])  # 3 of 4 at or above 8 (8 itself counts as caught)
    cfg = CalibrationConfig(min_normals=5, min_pass_rate=0.5, min_catch_rate=0.5)
    info, lines = threshold_check(normals, defects, SYNTHETIC_F1, "synthetic", cfg)
    assert info["good_pass_rate"] == 0.8 and info["defect_catch_rate"] == 0.75
    assert (info["n_normals"], info["n_defects"], info["defect_source"]) == (10, 4, "synthetic")
    assert info["warnings"] == []
    assert lines == [
        "expected pass rate of good images: 80.0% (8 of 10 held-out normal images score below the threshold 8)",
        "catch rate of synthetic-anomaly images: 75.0% (3 of 4 score at or above the threshold)",
    ]


@pytest.mark.parametrize(
    ("n_normals", "n_passing", "n_caught", "expected"),
    [
        (20, 18, 2, set()),  # exactly at every limit: 20 normals, pass 0.9, catch 0.5 -> no warning
        (19, 18, 2, {"few_normals"}),
        (20, 17, 2, {"low_pass"}),
        (20, 18, 1, {"low_catch"}),
        (5, 0, 0, {"few_normals", "low_pass", "low_catch"}),
    ],
)
def test_each_warning_appears_exactly_when_its_condition_holds(
    n_normals: int, n_passing: int, n_caught: int, expected: set[str]
) -> None:
    normals = np.r_[np.zeros(n_passing), np.full(n_normals - n_passing, 9.0)]  # threshold 8: 0 passes, 9 fails
    defects = np.r_[np.full(n_caught, 8.0), np.zeros(4 - n_caught)]  # 8 is caught, 0 passes
    info, lines = threshold_check(normals, defects, SYNTHETIC_F1, "synthetic", CalibrationConfig())
    assert _kinds(info["warnings"]) == expected
    assert info["good_pass_rate"] == n_passing / n_normals and info["defect_catch_rate"] == n_caught / 4
    assert lines[2:] == [f"warning: {text}" for text in info["warnings"]]


def test_warnings_say_what_to_change() -> None:
    normals = np.arange(10.0)  # pass 0.8 at threshold 8; 10 normals < 20
    info, _ = threshold_check(normals, np.array([9.0, 0.0, 0.0]), SYNTHETIC_F1, "synthetic", CalibrationConfig())
    few, low_pass, low_catch = info["warnings"]
    assert "data.val_fraction" in few
    assert "synthetic anomalies may not resemble" in low_pass
    assert "calibration.defect_dir" in low_pass and "calibration.synthetic=false" in low_pass
    assert "33.3% of the 3 synthetic-anomaly images" in low_catch

    quantile = ThresholdResult(8.0, "quantile", "normal", "threshold 8 = 80th percentile")
    info, _ = threshold_check(normals, None, quantile, "none", CalibrationConfig(quantile=0.8, min_normals=10))
    assert info["warnings"] == [
        "the threshold passes only 80.0% of held-out good images (below calibration.min_pass_rate=0.9); "
        "raise calibration.quantile (now 0.8)"
    ]
    real = ThresholdResult(8.0, "f1", "defective", "threshold 8 from F1-max")
    info, _ = threshold_check(normals, np.array([9.0]), real, "real", CalibrationConfig(min_normals=10))
    assert len(info["warnings"]) == 1 and "score like good ones" in info["warnings"][0]


def test_no_defective_images_means_no_catch_rate() -> None:
    quantile = ThresholdResult(30.0, "quantile", "normal", "threshold 30")
    info, lines = threshold_check(np.arange(30.0), None, quantile, "none", CalibrationConfig())
    assert info["defect_catch_rate"] is None and info["n_defects"] == 0 and info["defect_source"] == "none"
    assert info["good_pass_rate"] == 1.0 and info["warnings"] == []
    assert lines[1].startswith("catch rate of defective images: not measured")


def test_real_defective_images_set_the_threshold_and_the_catch_rate() -> None:
    """Synthetic calibration is on (the default), yet the threshold is the F1-max point of the real defects."""
    cal = calibrate(GreyLevelModel(), _loader(NORMALS), CalibrationConfig(), CPU, _loader(DEFECTS, label=1))
    assert cal.info["image_threshold"] == _f32(0.3) and cal.normalizer.image_threshold == _f32(0.3)
    assert cal.info["image_method"] == "f1" and "4 defective" in cal.messages[0]
    assert cal.info["defect_source"] == "real" and (cal.info["n_normals"], cal.info["n_defects"]) == (25, 4)
    assert cal.info["good_pass_rate"] == 1.0  # every normal (<= 0.24) lies below 0.30
    assert cal.info["defect_catch_rate"] == 0.75  # 0.3, 0.4, 0.5 caught; 0.22 passes
    assert cal.info["warnings"] == []
    assert cal.messages[2].startswith("expected pass rate of good images: 100.0% (25 of 25")
    assert cal.messages[3].startswith("catch rate of defective images: 75.0% (3 of 4")
    assert len(cal.messages) == 4


def test_quantile_threshold_with_real_defects_reports_their_catch_rate() -> None:
    cfg = CalibrationConfig(method="quantile", quantile=0.5)
    cal = calibrate(GreyLevelModel(), _loader(NORMALS), cfg, CPU, _loader(DEFECTS, label=1))
    assert cal.info["image_threshold"] == pytest.approx(0.12)  # the median of 0.00 ... 0.24
    assert cal.info["good_pass_rate"] == 12 / 25  # 0.00 ... 0.11
    assert cal.info["defect_catch_rate"] == 1.0
    assert _kinds(cal.info["warnings"]) == {"low_pass"}
    assert cal.messages[-1] == f"warning: {cal.info['warnings'][0]}"


def test_synthetic_anomalies_the_model_cannot_see_are_flagged() -> None:
    """A model that scores every image 0: F1-max puts the threshold at 0, so every good image would fail."""
    cal = calibrate(GreyLevelModel(gain=0.0), _loader(NORMALS[:10]), CalibrationConfig(), CPU)
    assert cal.info["defect_source"] == "synthetic" and cal.info["n_defects"] == 10
    assert cal.info["good_pass_rate"] == 0.0 and cal.info["defect_catch_rate"] == 1.0
    assert _kinds(cal.info["warnings"]) == {"few_normals", "low_pass"}
    warnings = [line for line in cal.messages if line.startswith("warning: ")]
    assert warnings == [f"warning: {text}" for text in cal.info["warnings"]]


def test_synthetic_anomalies_the_model_sees_raise_no_warning() -> None:
    """Constant good images score 0; a pasted anomaly breaks the constancy, so the threshold passes every good image."""
    cal = calibrate(GreyLevelModel(deviation=True), _loader(NORMALS[:20]), CalibrationConfig(), CPU)
    assert cal.info["image_method"] == "f1" and cal.info["defect_source"] == "synthetic"
    assert cal.info["good_pass_rate"] == 1.0 and cal.info["defect_catch_rate"] >= 0.5
    assert cal.info["warnings"] == []


@pytest.mark.parametrize("setting", ["min_normals=0", "min_pass_rate=1.5", "min_catch_rate=-0.1"])
def test_warning_limits_are_checked(setting: str) -> None:
    name, value = setting.split("=")
    with pytest.raises(ConfigError, match=f"calibration.{name}"):
        from_dict(AnomalyConfig, {"calibration": {name: float(value) if "." in value else int(value)}})


def test_fit_json_carries_the_rates_and_warnings(inspection_root: Path, tmp_path: Path) -> None:
    defects = tmp_path / "calibration_defects"
    defects.mkdir()
    for image in sorted((inspection_root / "Spot").glob("*.png"))[:3]:
        shutil.copy(image, defects / image.name)
    cfg = from_dict(AnomalyConfig, {
        "model": {"name": "padim", "backbone": "resnet18", "layers": [1, 2], "pretrained": False, "n_features": 32},
        "data": {"root": str(inspection_root), "image_size": [32, 32], "train_fraction": 0.75, "val_fraction": 0.25},
        "calibration": {"defect_dir": str(defects)},
        "batch_size": 8,
        "device": "cpu",
    })
    fit(cfg, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    calibration = report["calibration"]
    assert calibration["defect_source"] == "real" and calibration["n_defects"] == 3
    assert 0.0 <= calibration["good_pass_rate"] <= 1.0 and calibration["defect_catch_rate"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert any(line.startswith("expected pass rate of good images") for line in report["messages"])
    assert [line[len("warning: "):] for line in report["messages"] if line.startswith("warning: ")] == \
        calibration["warnings"]
