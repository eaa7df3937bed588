"""The one run-folder layout: create/open check the job, run.json records the start, model.pt is the artefact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from fabml.engine.runs import RunFolder
from fabml.errors import DataError


@dataclass
class _Cfg:
    seed: int = 3
    sizes: list[int] = field(default_factory=lambda: [1, 2])


def test_create_writes_config_and_run_json_naming_the_job(tmp_path: Path) -> None:
    run = RunFolder.create(tmp_path / "run", "wafer", config=_Cfg(), seed=3)
    assert yaml.safe_load(run.config_path.read_text()) == {"seed": 3, "sizes": [1, 2]}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["job"] == "wafer" and info["seed"] == 3
    assert set(info["versions"]) == {"fabml", "torch", "numpy", "python"}
    assert isinstance(info["argv"], list) and info["started"]
    # the layout's paths
    assert run.latest_checkpoint == tmp_path / "run" / "checkpoints" / "latest.pt"
    assert run.best_checkpoint == tmp_path / "run" / "checkpoints" / "best.pt"
    assert run.artefact_path == tmp_path / "run" / "model.pt"
    assert run.metrics_path == tmp_path / "run" / "metrics.csv"
    assert run.figures == tmp_path / "run" / "figures"


def test_create_again_keeps_the_first_start_and_other_fields(tmp_path: Path) -> None:
    RunFolder.create(tmp_path, "wafer", seed=1)
    info = json.loads((tmp_path / "run.json").read_text())
    info["started"], info["hardware"] = "2020-01-01T00:00:00+00:00", "cpu"  # as a trainer would add
    (tmp_path / "run.json").write_text(json.dumps(info))
    RunFolder.create(tmp_path, "wafer", seed=1).update_info(note="resumed")
    again = json.loads((tmp_path / "run.json").read_text())
    assert again["started"] == "2020-01-01T00:00:00+00:00" and again["hardware"] == "cpu"
    assert again["note"] == "resumed" and again["job"] == "wafer"


def test_a_folder_holds_one_job(tmp_path: Path) -> None:
    RunFolder.create(tmp_path, "anomaly")
    with pytest.raises(DataError, match="holds a run of the anomaly job, not wafer") as err:
        RunFolder.create(tmp_path, "wafer")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"use `fabml anomaly \.\.\. --run"):
        RunFolder.open(tmp_path, "wafer")
    assert RunFolder.open(tmp_path, "anomaly").job == "anomaly"


def test_open_refuses_what_is_not_a_run_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found; create one with `fabml wafer train --out") as err:
        RunFolder.open(tmp_path / "missing", "wafer", command="fabml wafer train --out")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="is not a run of the wafer job"):
        RunFolder.open(tmp_path, "wafer")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(DataError, match="run.json is not valid JSON"):
        RunFolder.open(tmp_path, "wafer")


def test_old_folders_open_when_the_job_recognises_them(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("old")
    run = RunFolder.open(tmp_path, "wafer", legacy=lambda path: (path / "marker").is_file())
    assert run.legacy and run.job == "wafer"
    with pytest.raises(DataError, match="is not a run of the wafer job"):
        RunFolder.open(tmp_path, "wafer", legacy=lambda path: False)


def test_artefact_records_its_job_and_refuses_another(tmp_path: Path) -> None:
    run = RunFolder.create(tmp_path, "anomaly")
    path = run.save_artefact({"weights": torch.arange(3.0)})
    assert path == tmp_path / "model.pt" and not list(tmp_path.glob(".model.pt.*"))  # no temp file left
    state = RunFolder.open(tmp_path, "anomaly").load_artefact()
    assert state["job"] == "anomaly" and state["format"] == 1
    torch.testing.assert_close(state["weights"], torch.arange(3.0))
    with pytest.raises(DataError, match="written by the anomaly job, not wafer"):
        RunFolder(tmp_path, "wafer").load_artefact()
    # an old artefact (no job inside) loads
    torch.save({"weights": torch.ones(1)}, tmp_path / "model.pt")
    assert "job" not in RunFolder(tmp_path, "anomaly").load_artefact()


def test_only_the_main_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # a second torchrun rank, before the process group is joined
    run = RunFolder.create(tmp_path / "run", "wafer", config=_Cfg(), seed=0)
    assert run.save_artefact({"weights": torch.ones(1)}) is None
    run.update_info(note="x")
    assert not (tmp_path / "run").exists()


def test_artefacts_lists_layout_files_and_job_folders(tmp_path: Path) -> None:
    run = RunFolder.create(tmp_path, "wafer", config=_Cfg())
    run.save_artefact({"w": torch.ones(2)})
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "best.pt")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    (tmp_path / "split.csv").write_text("item\n")
    found = run.artefacts()
    assert list(found)[:4] == ["config.yaml", "run.json", "model.pt", "checkpoints/best.pt"]
    assert {"split.csv", "eval/"} <= set(found)
    assert "checkpoints/latest.pt" not in found and found["eval/"] == 2


def test_the_trainer_keeps_the_job_while_a_run_trains(tmp_path: Path) -> None:
    """run.json names the job from the start, also in a run killed before its job step could re-stamp it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _toy import SimulatedCrash, ToyMethod, toy_config, toy_dataset

    from fabml.engine.trainer import Trainer

    RunFolder.create(tmp_path, "wafer", seed=0)
    with pytest.raises(SimulatedCrash):
        Trainer(ToyMethod(crash_at_call=3), toy_config(epochs=2), tmp_path, toy_dataset()).fit(fresh=True)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["job"] == "wafer" and "train_config" in info and "hardware" in info
    assert RunFolder.open(tmp_path, "wafer").job == "wafer"
