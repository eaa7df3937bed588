"""The job table drives the root CLI: `fabml --help`, `fabml demo --job`, `fabml info --run` on any job's run."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fabml.cli import app, main
from fabml.jobs import JOBS, callable_parts, detect_job, get_job, run_info
from fabml.errors import ConfigError, DataError

ROOT_COMMANDS = {"demo", "info", "version"}
WAFER_TINY = ["data.size=32", "model.preset=tiny", "model.stem=imagenet", "train.epochs=1", "train.batch_size=32",
              "train.num_workers=0", "train.lr=1e-3"]
PADIM = {"name": "padim", "backbone": "resnet18", "layers": [1, 2], "pretrained": False, "n_features": 32}


def _run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fabml", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _help_commands(text: str) -> list[str]:
    """Command names of click's plain help: the indented lines after ``Commands:``."""
    section = text.split("Commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+)", section, flags=re.MULTILINE)]


@pytest.fixture(scope="module")
def wafer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fabml.config import load_config
    from fabml.wafer.config import WaferConfig
    from fabml.wafer.pipeline import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("jobs") / "wafer_run"
    train(load_config(WaferConfig, None, WAFER_TINY), "synthetic:64:0", run)
    return run


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fabml.anomaly.config import AnomalyConfig
    from fabml.anomaly.pipeline import fit
    from fabml.config import from_dict
    from fabml.data.synthetic_inspection import make_inspection_set

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("jobs")
    data = make_inspection_set(base / "data")
    run = base / "anomaly_run"
    fit(from_dict(AnomalyConfig, {"model": PADIM, "device": "cpu", "batch_size": 8,
                                  "data": {"root": str(data), "image_size": [32, 32], "val_fraction": 0.25}}), run)
    return run


def test_every_entry_names_parts_that_exist() -> None:
    for job in JOBS.values():
        parts = callable_parts(job)
        assert dataclasses.is_dataclass(parts["config"]), job.name
        assert all(callable(part) for name, part in parts.items() if name != "app"), job.name
        demo_params = inspect.signature(parts["demo"]).parameters
        assert set(job.demo_options.values()) <= set(demo_params), job.name


def test_help_lists_exactly_the_table_jobs() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = _help_commands(result.output)
    assert set(listed) - ROOT_COMMANDS == set(JOBS)
    assert ROOT_COMMANDS <= set(listed)


def test_help_imports_no_job() -> None:
    code = ("import sys\nfrom fabml.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in sys.modules if m.startswith(('fabml.wafer', 'fabml.anomaly'))])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_job_sub_app_loads_from_the_table() -> None:
    result = CliRunner().invoke(app, ["wafer", "--help"])
    assert result.exit_code == 0 and "train" in result.output


def test_demo_rejects_an_unknown_job_listing_the_table(monkeypatch, capsys) -> None:
    code, _, err = _run_main(monkeypatch, capsys, ["demo", "--job", "nope"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'nope' is unknown" in err
    for name in [*JOBS, "all"]:
        assert name in err
    with pytest.raises(ConfigError, match="wafer, anomaly"):
        get_job("nope")


def test_demo_runs_the_table_demo_function(monkeypatch, tmp_path: Path) -> None:
    """`fabml demo --job NAME` calls the entry's demo function with the options it declares."""
    _CALLS.clear()
    monkeypatch.setitem(JOBS, "wafer", dataclasses.replace(JOBS["wafer"], demo=f"{__name__}:_fake_demo"))
    result = CliRunner().invoke(app, ["demo", "--job", "wafer", "--out", str(tmp_path), "--maps", "7", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert _CALLS == [(tmp_path, {"n_maps": 7, "epochs": 2})]


_CALLS: list[tuple[Path, dict]] = []


def _fake_demo(out: Path, n_maps: int = 0, epochs: int = 0) -> dict[str, Path]:
    _CALLS.append((out, {"n_maps": n_maps, "epochs": epochs}))
    return {"run": out}


def test_info_on_a_wafer_run(wafer_run: Path, monkeypatch, capsys) -> None:
    code, out, _ = _run_main(monkeypatch, capsys, ["info", "--run", str(wafer_run), "--json"])
    assert code == 0
    details = json.loads(out)
    assert details["job"] == "wafer" and details["layout"] == "current"
    assert details["config"]["encoder"] == "tiny" and details["config"]["map size"] == 32
    assert {"config.yaml", "run.json", "model.pt", "checkpoints/best.pt", "metrics.csv"} <= set(details["files"])
    assert details["artefact"] == JOBS["wafer"].artefact
    code, out, _ = _run_main(monkeypatch, capsys, ["info", "--run", str(wafer_run)])
    assert code == 0 and "| job " in out and "wafer" in out


def test_info_on_an_anomaly_run(anomaly_run: Path, monkeypatch, capsys) -> None:
    code, out, _ = _run_main(monkeypatch, capsys, ["info", "--run", str(anomaly_run), "--json"])
    assert code == 0
    details = json.loads(out)
    assert details["job"] == "anomaly" and details["config"]["model"] == "padim"
    assert details["config"]["image size"] == [32, 32]
    assert {"config.yaml", "run.json", "model.pt"} <= set(details["files"])


def test_info_refuses_a_folder_that_is_not_a_run(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = _run_main(monkeypatch, capsys, ["info", "--run", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not a fabml run" in err
    code, _, err = _run_main(monkeypatch, capsys, ["info", "--run", str(tmp_path / "missing")])
    assert code == 2 and "not found" in err


def test_a_job_command_refuses_another_job_run(anomaly_run: Path, wafer_run: Path) -> None:
    from fabml.anomaly.runs import load_fitted
    from fabml.wafer.runs import load_trained

    with pytest.raises(DataError, match="holds a run of the anomaly job, not wafer"):
        load_trained(anomaly_run)
    with pytest.raises(DataError, match="holds a run of the wafer job, not anomaly"):
        load_fitted(wafer_run)


def _strip_to_old_layout(run: Path, dest: Path, keep: tuple[str, ...]) -> Path:
    """A copy of ``run`` with only ``keep`` files and no job in run.json (as runs were written before)."""
    import shutil

    shutil.copytree(run, dest)
    for path in dest.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if (dest / "run.json").is_file():
        info = json.loads((dest / "run.json").read_text())
        info.pop("job", None)
        (dest / "run.json").write_text(json.dumps(info))
    return dest


def test_old_run_folders_are_recognised(wafer_run: Path, anomaly_run: Path, tmp_path: Path) -> None:
    old_wafer = _strip_to_old_layout(wafer_run, tmp_path / "w", ("config.yaml", "run.json", "checkpoints"))
    old_anomaly = _strip_to_old_layout(anomaly_run, tmp_path / "a", ("model.pt",))
    assert detect_job(old_wafer).name == "wafer" and detect_job(old_anomaly).name == "anomaly"
    assert run_info(old_wafer)["layout"].startswith("old") and run_info(old_wafer)["artefact"] is None
    assert run_info(old_anomaly)["artefact"] == JOBS["anomaly"].artefact


def test_old_run_folders_load(wafer_run: Path, anomaly_run: Path, tmp_path: Path) -> None:
    """Wafer runs from before model.pt load from checkpoints/best.pt; anomaly runs of a bare old model.pt load."""
    from fabml.anomaly.runs import load_fitted
    from fabml.wafer.runs import load_trained

    old_wafer = _strip_to_old_layout(wafer_run, tmp_path / "w", ("config.yaml", "run.json", "checkpoints"))
    _, method = load_trained(old_wafer)
    best = torch.load(wafer_run / "checkpoints" / "best.pt", weights_only=True)["method"]
    for key, value in method.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
    _, current = load_trained(wafer_run)  # model.pt holds the best checkpoint's weights
    for key, value in current.state_dict().items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)

    old_anomaly = _strip_to_old_layout(anomaly_run, tmp_path / "a", ("model.pt",))
    state = torch.load(old_anomaly / "model.pt", weights_only=True)
    for key in ("job", "format"):
        state.pop(key)
    torch.save(state, old_anomaly / "model.pt")
    fitted = load_fitted(old_anomaly)
    assert fitted.name == "padim" and fitted.image_size == (32, 32)


def test_a_folder_of_no_job_gives_one_line(tmp_path: Path) -> None:
    from fabml.anomaly.runs import load_fitted
    from fabml.wafer.runs import load_trained

    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(DataError, match="is not a run of the wafer job") as err:
        load_trained(tmp_path)
    assert "\n" not in str(err.value) and "fabml wafer train" in str(err.value)
    with pytest.raises(ConfigError, match="no fitted model at .*fabml anomaly fit --model NAME --out"):
        load_fitted(tmp_path)


SPINE_NAMES = {"is_main_process", "main_process_only", "get_rank"}  # what a job may ask engine.distributed
TORCHRUN_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


def _ddp_knowledge(path: Path) -> list[str]:
    """Lines of ``path`` where a job reads torchrun's variables, uses torch.distributed/DDP, or asks the spine
    anything beyond :data:`SPINE_NAMES`."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            found.append(f"{where} imports torch.distributed")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("torch.distributed") or (
                    node.module in ("torch", "torch.nn.parallel") and
                    {a.name for a in node.names} & {"distributed", "DistributedDataParallel"}):
                found.append(f"{where} imports {node.module}")
            elif node.module == "fabml.engine.distributed" and {a.name for a in node.names} - SPINE_NAMES:
                found.append(f"{where} imports {[a.name for a in node.names]} from the spine")
        elif isinstance(node, ast.Attribute) and node.attr in ("distributed", "DistributedDataParallel"):
            found.append(f"{where} uses .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in TORCHRUN_VARS:
            found.append(f"{where} names the torchrun variable {node.value}")
    return found


@pytest.mark.parametrize("name", list(JOBS))
def test_jobs_do_not_know_ddp(name: str) -> None:
    """A job asks the spine whether it is the main process; it never reads RANK or touches torch.distributed."""
    import fabml

    folder = Path(fabml.__file__).parent / name
    found = [line for path in sorted(folder.rglob("*.py")) for line in _ddp_knowledge(path)]
    assert found == []


def test_wafer_steps_refuse_an_anomaly_run(anomaly_run: Path) -> None:
    from fabml.wafer.pipeline import assign, cluster, search

    for step in (lambda: cluster(anomaly_run), lambda: search(anomaly_run, "x"),
                 lambda: assign(anomaly_run, "synthetic:4")):
        with pytest.raises(DataError, match="holds a run of the anomaly job, not wafer"):
            step()
