"""``fabml surrogate train | predict | evaluate | import-legacy | import-darcy`` through the real CLI on
tiny generated cases; results are read from the files each command writes. Bad inputs end in one ``error:`` line."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import N_CASES, NODES, TIME_STEPS, TINY, make_tiny_data  # noqa: E402

from fabml.cli import app  # noqa: E402
from fabml.config import load_config  # noqa: E402
from fabml.surrogate.config import SurrogateConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).resolve().parent / "data"


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]




def test_train_predict_evaluate(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    _invoke(["surrogate", "train", "--mode", "vae", "--data", str(data.fields), "--inputs", str(data.params_csv),
             "--out", str(run), *_sets(TINY)])
    assert np.load(run / "latent_vectors.npy").shape == (N_CASES, 32)
    # the settings and the data come from the run's config.yaml
    _invoke(["surrogate", "train", "--mode", "conditioner", "--out", str(run)])
    _invoke(["surrogate", "train", "--mode", "e2e", "--out", str(run)])
    state = torch.load(run / "model.pt", weights_only=False)
    assert state["job"] == "surrogate" and state["trained"] == ["vae", "conditioner", "e2e"]
    assert load_config(SurrogateConfig, run / "config.yaml").mode == "e2e"

    new = tmp_path / "new.csv"
    pd.read_csv(data.params_csv).head(5).to_csv(new, index=False)
    _invoke(["surrogate", "predict", "--run", str(run), str(new), "--samples", "4"])
    mean, std = np.load(run / "predictions" / "fields.npy"), np.load(run / "predictions" / "fields_std.npy")
    assert mean.shape == std.shape == (5, TIME_STEPS, NODES, 1) and std.mean() > 0
    assert list(pd.read_csv(run / "predictions" / "cases.csv")["case_id"]) == [0, 1, 2, 3, 4]

    _invoke(["surrogate", "evaluate", "--run", str(run), "--split", "test", "--no-figures"])
    metrics = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    assert metrics["n_cases"] == 6 and metrics["rel_l2"]["mean"] > 0
    # `report` draws the training curves (~15 s on 2 loaded cores): tests/surrogate/test_surrogate_evaluation.py
    info = json.loads(_invoke(["info", "--run", str(run), "--json"]))
    assert info["job"] == "surrogate" and info["artefact"] and info["config"]["mode"] == "e2e"


def test_import_legacy_writes_a_loadable_config(tmp_path: Path) -> None:
    out = tmp_path / "legacy.yaml"
    printed = _invoke(["surrogate", "import-legacy", str(DATA / "condition.txt"), str(DATA / "preset.txt"),
                       "--out", str(out)])
    cfg = load_config(SurrogateConfig, out)
    assert cfg.train_vae.epochs == 500 and cfg.train_vae.batch_size == 8 and cfg.vae.recon_loss == "smoothl1"
    assert cfg.data.expected_shape == [120, 40, 2048, 1]
    assert "not mapped" in printed and "Stretch" in printed


def test_import_darcy_then_train_on_the_grid(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 8, 8, generator=g) > 0.5
    y = torch.randn(12, 8, 8, generator=g)
    torch.save({"x": x, "y": y}, tmp_path / "darcy_train_8.pt")
    out = tmp_path / "darcy"
    printed = _invoke(["surrogate", "import-darcy", str(tmp_path / "darcy_train_8.pt"), "--out", str(out)])
    fields = np.load(out / "fields.npy")
    assert fields.shape == (12, 1, 64, 1) and np.array_equal(fields[3, 0, :, 0], y[3].numpy().ravel())
    assert len(list((out / "inputs").glob("param_*.png"))) == 12
    assert "data.grid_shape=[8,8]" in printed
    tiny = [s for s in TINY if not s.startswith("data.image_size")] + ["data.val_fraction=0.2", "data.test_fraction=0.2"]
    sets = ["data.layout=grid", "data.grid_shape=[8,8]", "data.image_size=8", "conditioner.kind=cnn"]
    run = tmp_path / "run"
    _invoke(["surrogate", "train", "--mode", "all", "--data", str(out / "fields.npy"), "--inputs", str(out / "inputs"),
             "--out", str(run), *_sets(tiny + sets)])
    _invoke(["surrogate", "predict", "--run", str(run), str(out / "inputs")])
    assert np.load(run / "predictions" / "fields.npy").shape == (12, 1, 64, 1)


def test_bad_inputs_end_in_one_error_line(tmp_path: Path, cli_error) -> None:
    data = make_tiny_data(tmp_path / "data")
    legacy = tmp_path / "fields.pkl"
    legacy.write_bytes(pickle.dumps(np.load(data.fields)[..., 0]))
    line = cli_error(["surrogate", "train", "--mode", "vae", "--data", str(legacy), "--inputs",
                                        str(data.params_csv), "--out", str(tmp_path / "r1"), *_sets(TINY)])
    assert "--allow-pickle" in line
    line = cli_error(["surrogate", "train", "--mode", "conditioner", "--data", str(data.fields),
                                        "--inputs", str(data.params_csv), "--out", str(tmp_path / "r2"), *_sets(TINY)])
    assert "--mode vae" in line
    line = cli_error(["surrogate", "train", "--mode", "fit", "--data", str(data.fields),
                                        "--inputs", str(data.params_csv), "--out", str(tmp_path / "r3")])
    assert "fit" in line and "vae" in line
    line = cli_error(["surrogate", "predict", "--run", str(tmp_path / "missing"), str(data.params_csv)])
    assert "missing" in line
