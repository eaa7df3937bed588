"""`fabml anomaly fit` under torchrun: 2 gloo processes on CPU; only rank 0 writes the run.

Each rank runs the CLI inside a small wrapper that records every file write under the run folder
(``os.replace`` — how model.pt, run.json and checkpoints are written atomically —, ``Path.write_text``
and ``torch.save``) into ``writes/rank<R>.json``; the tests read those logs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src"

WRAPPER = '''
import atexit, json, os, pathlib, sys

RUN, LOG = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2])
writes = []


def record(path):
    try:
        path = pathlib.Path(path).resolve()
    except TypeError:  # a file object: torch.save into an open temp file (recorded at the rename)
        return
    if RUN == path or RUN in path.parents:
        writes.append(str(path.relative_to(RUN)))


real_replace, real_write_text = os.replace, pathlib.Path.write_text
import torch  # noqa: E402

real_save = torch.save


def replace(src, dst, *args, **kwargs):
    record(dst)
    return real_replace(src, dst, *args, **kwargs)


def write_text(self, *args, **kwargs):
    record(self)
    return real_write_text(self, *args, **kwargs)


def save(obj, f, *args, **kwargs):
    record(f)
    return real_save(obj, f, *args, **kwargs)


os.replace, pathlib.Path.write_text, torch.save = replace, write_text, save
LOG.mkdir(parents=True, exist_ok=True)
atexit.register(lambda: real_write_text(LOG / f"rank{os.environ['RANK']}.json", json.dumps(writes)))
sys.argv = ["fabml", *sys.argv[3:]]
from fabml.cli import main  # noqa: E402

main()
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fit_under_torchrun(tmp_path: Path, fit_args: list[str]) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """Run ``fabml anomaly fit ...`` on 2 gloo ranks; returns the process, the run folder and {rank: writes}."""
    run, logs = tmp_path / "run", tmp_path / "writes"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(wrapper), str(run), str(logs), "anomaly", "fit", "--out", str(run), *fit_args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    writes = {int(p.stem[4:]): json.loads(p.read_text()) for p in logs.glob("rank*.json")}
    assert set(writes) == {0, 1}, "both ranks ran the wrapper"
    return proc, run, writes


@pytest.mark.timeout(900)
def test_autoencoder_fits_under_torchrun_with_two_gloo_processes(inspection_root: Path, tmp_path: Path) -> None:
    _, run, writes = _fit_under_torchrun(tmp_path, [
        "--model", "autoencoder", "--data", str(inspection_root), "--image-size", "32",
        "--set", "model.channels=[8,16]", "--set", "train.epochs=2", "--set", "train.batch_size=4",
        "--set", "device=cpu", "--set", "data.val_fraction=0.25",
    ])
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and "batch 2/rank (global 4)" in info["hardware"]
    assert info["job"] == "anomaly"
    assert (run / "model.pt").is_file() and (run / "fit.json").is_file()
    assert writes[1] == [], f"rank 1 wrote {writes[1]}"
    assert writes[0].count("model.pt") == 1 and "config.yaml" in writes[0] and "split.csv" in writes[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", ["padim", "patchcore"])
def test_memory_bank_model_fits_once_on_rank_0(model: str, inspection_root: Path, tmp_path: Path) -> None:
    """Defect: every rank fitted the bank and wrote model.pt. Now rank 0 fits and writes, rank 1 waits."""
    _, run, writes = _fit_under_torchrun(tmp_path, [
        "--model", model, "--data", str(inspection_root), "--image-size", "32",
        "--set", "model.backbone=resnet18", "--set", "model.layers=[1,2]", "--set", "model.pretrained=false",
        "--set", "device=cpu", "--set", "data.val_fraction=0.25",
    ])
    assert writes[1] == [], f"rank 1 wrote {writes[1]}"
    assert writes[0].count("model.pt") == 1 and writes[0].count("fit.json") == 1
    assert json.loads((run / "run.json").read_text())["job"] == "anomaly"
    state = torch.load(run / "model.pt", weights_only=True)
    assert state["job"] == "anomaly" and state["name"] == model
