"""`fabml anomaly fit` of a gradient model under torchrun: 2 gloo processes on CPU, rank 0 writes the run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_autoencoder_fits_under_torchrun_with_two_gloo_processes(inspection_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "fabml", "anomaly", "fit", "--model", "autoencoder", "--data", str(inspection_root), "--out", str(run),
        "--image-size", "32", "--set", "model.channels=[8,16]", "--set", "train.epochs=2", "--set", "train.batch_size=4",
        "--set", "device=cpu", "--set", "data.val_fraction=0.25",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and "batch 2/rank (global 4)" in info["hardware"]
    assert (run / "model.pt").is_file() and (run / "fit.json").is_file()
    assert proc.stdout.count("fitted autoencoder") == 1  # only rank 0 reports the fit
