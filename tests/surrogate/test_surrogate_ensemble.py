"""Ensembles of surrogate runs (``fabml surrogate ensemble``): the prediction is the members' mean and the spread
their disagreement (checked against the members' own predictions), evaluate / predict / report take the ensemble
folder as a run, the folder moves with its members, and bad ensembles end in one ``error:`` line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import make_tiny_data, tiny_config  # noqa: E402

from fabml.cli import app  # noqa: E402
from fabml.data.simulation_dataset import read_case_split  # noqa: E402
from fabml.data.simulation_io import open_fields  # noqa: E402
from fabml.data.simulation_inputs import match_cases, read_inputs  # noqa: E402
from fabml.metrics.regression import relative_l2  # noqa: E402
from fabml.surrogate.ensemble import ENSEMBLE_FILE, load_ensemble, make_ensemble  # noqa: E402
from fabml.surrogate.evaluation import case_inputs, evaluate, reconstruct  # noqa: E402
from fabml.surrogate.pipeline import load_surrogate, predict_arrays, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three runs on one split (seeds 0, 1, 2; the third only its VAE), and one on another split."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("ensemble")
        data = make_tiny_data(root / "data")
        out = {"data": root / "data", "root": root}
        for name, seed, mode, extra in (("a", 0, "all", []), ("b", 1, "all", []), ("vae_only", 2, "vae", []),
                                        ("other_split", 3, "all", ["data.split_seed=7"])):
            run = root / "runs" / name
            train(tiny_config(data, extra=[f"seed={seed}", *extra]), run, mode, fresh=True)
            out[name] = run
        return out
    finally:
        torch.set_num_threads(old)


def _inputs_and_fields(ens_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_surrogate(ens_dir)
    source, inputs = open_fields(loaded.cfg.data), read_inputs(loaded.cfg.data)
    rows = match_cases(source, inputs)
    idx = read_case_split(loaded.split_dir)[split]
    return case_inputs(loaded, inputs, rows[idx]), np.stack([source.get(int(i)) for i in idx])


def test_prediction_is_the_members_mean_and_the_spread_their_disagreement(runs: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    ens = make_ensemble([runs["a"], runs["b"]], tmp_path / "ens")
    x, _ = _inputs_and_fields(tmp_path / "ens", "test")
    mean, std = predict_arrays(ens, x)
    members = [predict_arrays(load_surrogate(runs[k]), x)[0] for k in ("a", "b")]
    assert not np.allclose(members[0], members[1])  # two seeds, two models
    np.testing.assert_allclose(mean, (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, np.abs(members[0] - members[1]) / 2, rtol=1e-4, atol=1e-6)
    assert mean.shape == std.shape == members[0].shape


def test_spread_adds_the_members_dropout_variance(runs: dict[str, Path], tmp_path: Path) -> None:
    ens = make_ensemble([runs["a"], runs["b"]], tmp_path / "ens")  # members with dropout 0.3 (the default)
    x, _ = _inputs_and_fields(tmp_path / "ens", "test")
    mean, std = predict_arrays(ens, x, samples=4)
    outs = [predict_arrays(m, x, samples=4) for m in ens.members]
    mu = (outs[0][0] + outs[1][0]) / 2
    var = (outs[0][1] ** 2 + outs[1][1] ** 2) / 2 + ((outs[0][0] - mu) ** 2 + (outs[1][0] - mu) ** 2) / 2
    np.testing.assert_allclose(mean, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, np.sqrt(var), rtol=1e-4, atol=1e-6)
    assert (outs[0][1] > 0).any()


def test_evaluate_an_ensemble_writes_its_error_floor_and_coverage(runs: dict[str, Path], tmp_path: Path) -> None:
    ens_dir = tmp_path / "ens"
    make_ensemble([runs["a"], runs["b"]], ens_dir)
    report = evaluate(ens_dir, "test", figures=True)
    metrics = json.loads((ens_dir / "evaluation" / "test" / "metrics.json").read_text())
    x, true = _inputs_and_fields(ens_dir, "test")
    mean, _ = predict_arrays(load_surrogate(ens_dir), x)
    assert metrics["rel_l2"]["mean"] == pytest.approx(float(relative_l2(mean, true).mean()), rel=1e-4)
    recons = [reconstruct(load_surrogate(runs[k]), true)[0] for k in ("a", "b")]
    floor = relative_l2((recons[0] + recons[1]) / 2, true).mean()
    assert metrics["vae_floor"]["mean"] == pytest.approx(float(floor), rel=1e-4)
    assert metrics["members"] == [str(runs["a"]), str(runs["b"])]
    assert 0.0 <= metrics["coverage"]["value"] <= 1.0 and report.coverage == metrics["coverage"]["value"]
    assert (ens_dir / "evaluation" / "test" / "fields_best_median_worst.png").is_file()
    assert report.n_cases == len(read_case_split(runs["a"])["test"])


def test_cli_ensemble_predict_report_and_moving_the_tree(runs: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(runs["a"], tree / "runs" / "a")
    shutil.copytree(runs["b"], tree / "runs" / "b")
    ens_dir = tree / "ens"
    result = CliRunner().invoke(app, ["surrogate", "ensemble", str(tree / "runs" / "a"), str(tree / "runs" / "b"),
                                      "--out", str(ens_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads((ens_dir / ENSEMBLE_FILE).read_text())
    assert record["members"] == ["../runs/a", "../runs/b"] and record["seeds"] == [0, 1]
    info = CliRunner().invoke(app, ["info", "--run", str(ens_dir), "--json"])
    assert info.exit_code == 0, info.output
    details = json.loads(info.output)
    assert details["job"] == "surrogate" and details["kind"] == "ensemble" and details["artefact"] is None
    assert details["members"] == ["../runs/a", "../runs/b"] and {"run.json", ENSEMBLE_FILE} <= set(details["files"])
    again = CliRunner().invoke(app, ["surrogate", "ensemble", str(tree / "runs" / "b"), str(tree / "runs" / "a"),
                                     "--out", str(ens_dir)])  # an ensemble folder may be rewritten
    assert again.exit_code == 0, again.output
    assert json.loads((ens_dir / ENSEMBLE_FILE).read_text())["members"] == ["../runs/b", "../runs/a"]
    assert json.loads((ens_dir / "run.json").read_text())["members"] == ["../runs/b", "../runs/a"]
    CliRunner().invoke(app, ["surrogate", "ensemble", str(tree / "runs" / "a"), str(tree / "runs" / "b"),
                             "--out", str(ens_dir)])
    moved = tmp_path / "moved"
    shutil.move(str(tree), str(moved))  # the whole tree moves: relative member paths still resolve
    ens_dir = moved / "ens"
    params = runs["data"] / "params.csv"
    result = CliRunner().invoke(app, ["surrogate", "predict", "--run", str(ens_dir), str(params)])
    assert result.exit_code == 0, result.output
    fields = np.load(ens_dir / "predictions" / "fields.npy")
    std = np.load(ens_dir / "predictions" / "fields_std.npy")
    assert fields.shape == std.shape and (std > 0).any()
    assert load_ensemble(ens_dir).member_dirs == [moved / "runs" / "a", moved / "runs" / "b"]
    assert CliRunner().invoke(app, ["surrogate", "evaluate", "--run", str(ens_dir), "--no-figures"]).exit_code == 0
    result = CliRunner().invoke(app, ["surrogate", "report", "--run", str(ens_dir)])
    assert result.exit_code == 0, result.output
    html = (ens_dir / "report" / "index.html").read_text()
    assert "Ensemble" in html and (ens_dir / "figures" / "training_member1_all.png").is_file()


def test_equal_seeds_are_noted(runs: dict[str, Path], tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(runs["a"], twin)
    ens = make_ensemble([runs["a"], twin], tmp_path / "ens")
    assert len(ens.notes) == 1 and "share a seed" in ens.notes[0]




def test_bad_ensembles_are_one_line_errors(runs: dict[str, Path], tmp_path: Path, cli_error) -> None:
    a, b, out = str(runs["a"]), str(runs["b"]), str(tmp_path / "ens")
    cmd = ["surrogate", "ensemble"]
    assert "at least 2 member runs" in cli_error([*cmd, a, "--out", out])
    assert "more than once" in cli_error([*cmd, a, a, "--out", out])
    assert "no trained conditioner" in cli_error([*cmd, a, str(runs["vae_only"]), "--out", out])
    assert "split its cases differently" in cli_error([*cmd, a, str(runs["other_split"]), "--out", out])
    assert "is one of the member runs" in cli_error([*cmd, a, b, "--out", b])
    assert "holds a training run" in cli_error([*cmd, a, b, "--out", str(runs["vae_only"])])
    assert not (tmp_path / "ens").exists()  # nothing written by a refused ensemble
    lonely = tmp_path / "lonely"
    shutil.copytree(runs["a"], tmp_path / "m0")
    shutil.copytree(runs["b"], tmp_path / "m1")
    make_ensemble([tmp_path / "m0", tmp_path / "m1"], lonely)
    shutil.rmtree(tmp_path / "m1")
    line = cli_error(["surrogate", "evaluate", "--run", str(lonely)])
    assert "member run" in line and "not found" in line


def test_calibrating_an_ensemble_scales_the_spread_predict_and_evaluate_use(runs: dict[str, Path],
                                                                             tmp_path: Path, cli_error) -> None:
    ens_dir = tmp_path / "ens"
    make_ensemble([runs["a"], runs["b"]], ens_dir)
    x, _ = _inputs_and_fields(ens_dir, "test")
    _, raw_std = predict_arrays(load_surrogate(ens_dir), x)
    assert "calibrate on --split val" in cli_error(["surrogate", "evaluate", "--run", str(ens_dir), "--calibrate"])
    report = evaluate(ens_dir, "val", figures=False, calibrate=True)
    c = report.calibration
    record = json.loads((ens_dir / "calibration.json").read_text())
    assert record["spread_scale"] == c["spread_scale"] > 0 and record["split"] == "val"
    assert c["target_coverage"] == pytest.approx(0.9545, abs=1e-4)
    assert c["target_coverage"] <= c["coverage_after"] <= c["target_coverage"] + 0.01  # 6 val cases x 256 values
    assert c["coverage_before"] == report.coverage
    again = evaluate(ens_dir, "val", figures=False)  # the saved factor is applied from now on
    assert again.coverage == pytest.approx(c["coverage_after"], abs=1e-9)
    _, std = predict_arrays(load_surrogate(ens_dir), x)
    np.testing.assert_allclose(std, raw_std * c["spread_scale"], rtol=1e-5)
