"""DDP with 2 gloo processes on CPU via torchrun: identical weights, rank-0-only files, split batches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from fabml.engine.trainer import MEASURED_KEYS

SCRIPT = Path(__file__).resolve().parent / "_ddp_script.py"
SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_train_in_lockstep(tmp_path: Path) -> None:
    run_base, out_dir = tmp_path / "runs", tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(SCRIPT), str(run_base), str(out_dir),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0 = torch.load(out_dir / "rank0.pt", weights_only=False)
    r1 = torch.load(out_dir / "rank1.pt", weights_only=False)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["per_rank_batch"] == r1["per_rank_batch"] == 8  # global 16 / 2 ranks
    assert r0["total_steps"] == 2 * 4  # 64 samples / 2 ranks / 8 = 4 steps per epoch

    # Identical weights (DDP broadcast rank 0's init, gradients were averaged) incl. EMA and BN stats.
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key

    # The first layer, frozen in epoch 1, kept rank 0's initial weights; unfrozen in epoch 2 it trained
    # in lockstep on both ranks (the DDP wrapper was rebuilt for the new set of trainable parameters).
    assert torch.equal(r0["first_layer"][0], r0["init_first"]) and torch.equal(r1["first_layer"][0], r0["init_first"])
    assert not torch.equal(r0["first_layer"][1], r0["init_first"])
    assert torch.equal(r0["first_layer"][1], r1["first_layer"][1])

    # Every batch had 8 samples; in each epoch the ranks saw disjoint halves of the data.
    for rank in (r0, r1):
        assert all(len(b) == 8 for b in rank["seen"]) and len(rank["seen"]) == 8
    for epoch in range(2):
        part0 = {i for b in r0["seen"][4 * epoch: 4 * epoch + 4] for i in b}
        part1 = {i for b in r1["seen"][4 * epoch: 4 * epoch + 4] for i in b}
        assert not part0 & part1 and part0 | part1 == set(range(64))

    # Logged numbers are rank-averaged and validation ran on rank 0 only, broadcast to rank 1.
    strip = lambda h: [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in h]  # noqa: E731
    assert strip(r0["history"]) == strip(r1["history"])
    assert r0["validate_calls"] == 2 and r1["validate_calls"] == 0
    assert r0["best_epoch"] == r1["best_epoch"] == 2

    # Only rank 0 wrote anything.
    rank0_dir = run_base / "rank0"
    assert (rank0_dir / "checkpoints" / "latest.pt").is_file() and (rank0_dir / "run.json").is_file()
    assert len((rank0_dir / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    assert not (run_base / "rank1").exists()
    saved = torch.load(rank0_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2  # per-rank RNG states for exact resume
    assert "world size 2 | batch 8/rank (global 16)" in proc.stderr
