"""``train --mode all`` under torchrun with 2 gloo processes: each rank trains on its half of the batches, one
writer for the split, model.pt and the latents, and the result loads and predicts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import N_CASES, make_tiny_data  # noqa: E402

from fabml.surrogate.pipeline import load_surrogate, predict_arrays  # noqa: E402


@pytest.mark.timeout(300)
def test_mode_all_under_torchrun_with_two_gloo_ranks(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = tmp_path / "run"
    script = Path(__file__).resolve().parent / "_ddp_surrogate_script.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(script), str(tmp_path / "data"), str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert done == {rank: {"epochs": 6, "trained": ["vae", "conditioner", "e2e"], "model_written": rank == 0}
                    for rank in (0, 1)}
    info = json.loads((run / "train" / "all" / "run.json").read_text())
    assert info["world_size"] == 2
    rows = pd.read_csv(run / "train" / "all" / "metrics.csv")
    assert list(rows["stage"]) == ["vae"] * 2 + ["conditioner"] * 2 + ["e2e"] * 2
    assert json.loads((run / "run.json").read_text())["job"] == "surrogate"
    assert np.load(run / "latent_vectors.npy").shape == (N_CASES, 32)
    loaded = load_surrogate(run)
    mean, _ = predict_arrays(loaded, pd.read_csv(data.params_csv).iloc[:3, 1:].to_numpy(np.float32))
    assert mean.shape == (3, 8, 32, 1) and np.isfinite(mean).all()
