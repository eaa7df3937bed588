"""``fabml retrieval split | train | index | evaluate | predict | export`` through the real CLI on tiny generated
shapes; results are read from the files each command writes. Bad inputs end in one ``error:`` line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fabml.cli import app

@pytest.fixture(scope="module")
def tiny(tiny_settings: list[str]) -> list[str]:
    return tiny_settings + ["data.class_names=[circle,square,triangle]"]


@pytest.fixture(scope="module")
def data(shapes: Path) -> Path:
    return shapes


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_split_train_index_evaluate_predict_export(data: Path, tiny: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    _invoke(["retrieval", "split", "--data", str(data), "--out", str(run), *_sets(tiny)])
    counts = {part: pd.read_csv(run / "splits" / f"{part}.csv") for part in ("train", "val", "test")}
    groups = [set(table["group"]) for table in counts.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])  # no ID in two splits
    assert sum(len(t) for t in counts.values()) == 3 * 6 * 2  # cross and ring are not in class_names

    _invoke(["retrieval", "train", "--out", str(run)])  # the settings come from the run's config.yaml
    assert len(pd.read_csv(run / "metrics.csv")) == 2 and (run / "model.pt").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["job"] == "retrieval" and "epochs" in info["train_settings_given"]

    _invoke(["retrieval", "index", "--run", str(run)])
    refs = pd.read_csv(run / "index" / "references.csv")
    assert len(refs) == len(counts["train"]) and set(refs["label"]) == {"circle", "square", "triangle"}

    _invoke(["retrieval", "evaluate", "--run", str(run), "--split", "val", "--no-figures"])
    written = json.loads((run / "evaluation" / "val" / "metrics.json").read_text())
    assert written["split"] == "val" and written["metrics"]["n_queries"] == len(counts["val"])
    assert 0.0 <= written["metrics"]["map_at_r"] <= 1.0

    _invoke(["retrieval", "predict", "--run", str(run), str(data / "cross"), "--top-k", "3"])
    table = pd.read_csv(run / "predictions" / "predictions.csv")
    assert len(table) == 12 and set(table["predicted"]) <= {"circle", "square", "triangle", "unknown"}
    assert pd.read_csv(run / "predictions" / "neighbours.csv")["rank"].max() == 3

    new = tmp_path / "new"
    shutil.copytree(data / "cross", new / "cross")
    _invoke(["retrieval", "index", "--run", str(run), "--add", str(new)])
    assert (pd.read_csv(run / "index" / "references.csv")["label"] == "cross").sum() == 12

    details = json.loads(_invoke(["info", "--run", str(run), "--json"]))
    assert details["job"] == "retrieval" and details["config"]["backbone"] == "test_efficientnet"

    pytest.importorskip("onnxruntime")
    _invoke(["retrieval", "export", "--run", str(run), "--samples", "2"])
    parity = json.loads((run / "model.parity.json").read_text())
    assert (run / "model.onnx").is_file() and parity["max_embedding_diff"] <= parity["tolerance"]


def test_skip_bad_leaves_out_a_corrupt_image_that_otherwise_stops_the_split(data: Path, tiny: list[str],
                                                                            tmp_path: Path, cli_error) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "circle" / "circle-99_0.png").write_bytes(b"not a png")
    line = cli_error(["retrieval", "split", "--data", str(copy), "--out", str(tmp_path / "a"), *_sets(tiny)])
    assert "circle-99_0.png" in line and "--skip-bad" in line
    _invoke(["retrieval", "split", "--data", str(copy), "--out", str(tmp_path / "b"), "--skip-bad", *_sets(tiny)])
    items = pd.concat([pd.read_csv(tmp_path / "b" / "splits" / f"{p}.csv") for p in ("train", "val", "test")])["item"]
    assert len(items) == 3 * 6 * 2 and not items.str.endswith("circle-99_0.png").any()




def test_bad_inputs_end_in_one_error_line(data: Path, tmp_path: Path, cli_error) -> None:
    line = cli_error(["retrieval", "split", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert "nope" in line
    typo = tmp_path / "typo"
    line = cli_error(["retrieval", "split", "--data", str(data), "--out", str(typo),
                                        "--set", "data.class_names=[circle,sqare]"])
    assert "sqare" in line and "square" in line  # the folders found are listed
    line = cli_error(["retrieval", "index", "--run", str(tmp_path / "missing")])
    assert "missing" in line
    line = cli_error(["retrieval", "split", "--data", str(data), "--list", str(tmp_path / "l.txt"),
                                        "--out", str(tmp_path / "r2")])
    assert "not both" in line
    listed = tmp_path / "list.txt"
    listed.write_text(f"{data / 'circle' / 'circle-00_0.png'}, circle\n{tmp_path / 'gone.png'}, circle\n")
    line = cli_error(["retrieval", "split", "--list", str(listed), "--out", str(tmp_path / "r3")])
    assert "gone.png" in line
