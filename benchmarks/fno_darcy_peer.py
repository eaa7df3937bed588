"""Peer run for benchmarks/surrogate_darcy.py: neuraloperator's (tensorised) FNO on the 16x16 Darcy data.

Runs in its OWN environment (neuraloperator is not a dependency of fabml). Install it once:

    python -m venv ../neuralop-env
    ../neuralop-env/bin/pip install torch==2.13.0 neuraloperator==1.0.2

and let the benchmark find it: ``NEURALOP_PYTHON=../neuralop-env/bin/python`` (the default path). The benchmark
calls this file as a subprocess with a JSON job file and reads the JSON result it writes:

    $NEURALOP_PYTHON benchmarks/fno_darcy_peer.py JOB.json RESULT.json

JOB.json: ``{"data": DIR, "train_indices": [...], "val_indices": [...], "epochs": E, "max_train_seconds": S,
"threads": K, "seed": 0}``: the same training cases and the same held-out 10% selection slice as fabml's runs
(indices into ``darcy_train_16.pt``); the figures are on ``darcy_test_16.pt``.

Recipe: neuraloperator's own small-Darcy example (``scripts/train_darcy.py`` / the "Training an FNO on Darcy
flow" tutorial): ``TFNO(n_modes=(16, 16), in_channels=1, out_channels=1, hidden_channels=32,
projection_channel_ratio=2, factorization="tucker", rank=0.42)``, AdamW lr 8e-3 weight decay 1e-4, cosine
annealing over the epochs, batch 32, H1 loss on the output normalised channel-wise (unit Gaussian fitted on the
training cases, as ``load_darcy_flow_small`` does), inputs the 0/1 coefficient field as float. The best epoch by
relative L2 on the selection slice (original units) is the one reported on the test set. Training stops at
``epochs`` or when ``max_train_seconds`` is spent, whichever comes first (the benchmark's CPU budget).

Relative L2 = mean over cases of ||pred - true|| / ||true|| (what fabml.metrics.regression.relative_l2 and
neuraloperator's ``LpLoss(d=2, p=2, reduction="mean")`` compute; the script checks they agree).
"""

from __future__ import annotations

import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch
from neuralop import H1Loss, LpLoss
from neuralop.models import TFNO


def rel_l2(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-case ||pred - true|| / ||true|| over all but the first axis -> [n]."""
    diff = (pred - true).flatten(1).norm(dim=1)
    return diff / true.flatten(1).norm(dim=1)


def main(job_path: str, result_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(int(job.get("threads", 2)))
    torch.manual_seed(int(job.get("seed", 0)))
    data = Path(job["data"])
    train = torch.load(data / "darcy_train_16.pt", weights_only=False)
    test = torch.load(data / "darcy_test_16.pt", weights_only=False)
    x_all = train["x"].unsqueeze(1).float()
    y_all = train["y"].unsqueeze(1).float()
    tr = torch.as_tensor(job["train_indices"], dtype=torch.long)
    va = torch.as_tensor(job["val_indices"], dtype=torch.long)
    x_tr, y_tr, x_va, y_va = x_all[tr], y_all[tr], x_all[va], y_all[va]
    x_te, y_te = test["x"].unsqueeze(1).float(), test["y"].unsqueeze(1).float()
    mean, std = y_tr.mean(), y_tr.std()  # channel-wise unit Gaussian encoder (one channel)

    model = TFNO(n_modes=(16, 16), in_channels=1, out_channels=1, hidden_channels=32,
                 projection_channel_ratio=2, factorization="tucker", rank=0.42)
    n_params = sum(p.numel() for p in model.parameters())
    epochs = int(job.get("epochs", 20))
    budget = float(job.get("max_train_seconds", 1200))
    batch = int(job.get("batch_size", 32))
    opt = torch.optim.AdamW(model.parameters(), lr=8e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    h1 = H1Loss(d=2)

    def predict(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]) * std + mean

    best, best_state, best_epoch, history = float("inf"), None, -1, []
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(int(job.get("seed", 0)))
    epochs_run = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=g)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = h1(model(x_tr[idx]), (y_tr[idx] - mean) / std)
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        epochs_run = epoch + 1
        val = float(rel_l2(predict(x_va), y_va).mean())
        history.append({"epoch": epochs_run, "train_h1": total / len(x_tr), "val_rel_l2": val,
                        "seconds": time.perf_counter() - t0})
        print(f"fno epoch {epochs_run}/{epochs}: train h1 {total / len(x_tr):.4f}  val rel L2 {val:.4f}  "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if val < best:
            best, best_epoch, best_state = val, epochs_run, copy.deepcopy(model.state_dict())
        if time.perf_counter() - t0 > budget:
            break
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    t1 = time.perf_counter()
    pred = predict(x_te)
    infer_ms = (time.perf_counter() - t1) / len(x_te) * 1000
    per_case = rel_l2(pred, y_te)
    lp = LpLoss(d=2, p=2, reduction="mean")(pred, y_te)  # neuraloperator's own figure
    result = {
        "model": "neuralop TFNO(n_modes=(16,16), hidden_channels=32, tucker rank 0.42)",
        "neuraloperator": __import__("neuralop").__version__, "torch": torch.__version__,
        "parameters": n_params, "rel_l2": float(per_case.mean()), "rel_l2_median": float(per_case.median()),
        "rel_l2_lploss": float(lp), "val_rel_l2": best, "best_epoch": best_epoch, "epochs_run": epochs_run,
        "epochs": epochs, "train_seconds": train_seconds, "inference_ms_per_case": infer_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
        "history": history, "per_case": per_case.tolist(),
    }
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: fno_darcy_peer.py JOB.json RESULT.json")
    main(sys.argv[1], sys.argv[2])
