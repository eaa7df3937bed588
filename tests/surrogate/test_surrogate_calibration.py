"""``evaluate --calibrate``: the factor on a run's Monte-Carlo-dropout spread is fitted on the val split, saved in
``RUN/calibration.json`` and used by every later prediction; a bad request is a one-line error. (Ensembles:
tests/surrogate/test_surrogate_ensemble.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import make_tiny_data, tiny_config  # noqa: E402

from fabml.data.simulation_inputs import read_inputs  # noqa: E402
from fabml.errors import DataError  # noqa: E402
from fabml.surrogate.calibration import CALIBRATION_FILE, gaussian_coverage, read_spread_scale  # noqa: E402
from fabml.surrogate.evaluation import evaluate  # noqa: E402
from fabml.surrogate.pipeline import load_surrogate, predict_arrays, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    train(tiny_config(data, extra=["eval.samples=4"]), run, "all", fresh=True)  # dropout 0.3, the default
    return run


def test_gaussian_coverage() -> None:
    assert gaussian_coverage(1.0) == pytest.approx(0.6827, abs=1e-4)
    assert gaussian_coverage(2.0) == pytest.approx(0.9545, abs=1e-4)


def test_calibrate_a_dropout_spread_on_val(run: Path, cli_error) -> None:
    loaded = load_surrogate(run)
    params = read_inputs(loaded.cfg.data).params[:5].astype(np.float32)
    _, raw_std = predict_arrays(loaded, params, samples=4)
    report = evaluate(run, "val", figures=False, calibrate=True)
    c = report.calibration
    assert json.loads((run / CALIBRATION_FILE).read_text())["spread_scale"] == c["spread_scale"]
    assert c["samples"] == 4 and c["coverage_before"] == report.coverage
    assert c["target_coverage"] <= c["coverage_after"] <= c["target_coverage"] + 0.01
    metrics = json.loads((report.metrics_path).read_text())
    assert metrics["calibration"]["spread_scale"] == c["spread_scale"] and metrics["coverage"]["spread_scale"] == 1.0
    _, std = predict_arrays(load_surrogate(run), params, samples=4)
    np.testing.assert_allclose(std, raw_std * c["spread_scale"], rtol=1e-5)
    again = evaluate(run, "val", figures=False)
    assert again.coverage == pytest.approx(c["coverage_after"], abs=1e-9)  # seeded samples: the same spread
    assert json.loads(again.metrics_path.read_text())["coverage"]["spread_scale"] == c["spread_scale"]


def test_bad_calibrations_are_one_line_errors(run: Path, cli_error) -> None:
    assert "calibrate on --split val" in cli_error(["surrogate", "evaluate", "--run", str(run), "--calibrate"])
    line = cli_error(["surrogate", "evaluate", "--run", str(run), "--split", "val", "--samples", "1", "--calibrate"])
    assert "needs a spread" in line and not (run / CALIBRATION_FILE).exists()
    (run / CALIBRATION_FILE).write_text("{not json")
    assert "not a readable calibration" in cli_error(["surrogate", "evaluate", "--run", str(run), "--split", "val"])
    (run / CALIBRATION_FILE).write_text('{"spread_scale": -1}')
    with pytest.raises(DataError, match="must be a positive number"):
        read_spread_scale(run)
