"""Seconds per training step on the CPU with NCHW against NHWC (``train.channels_last``) for two of fabml's models.

Why: ``train.channels_last: auto`` means NHWC on CUDA only; on a CPU the oneDNN convolutions may also run faster
on NHWC tensors. This script measures it on the machine it runs on, so a recipe can choose.

- ``darcy_cnn_e2e``: the surrogate job's e2e step of the Darcy benchmark's CNN recipe (benchmarks/surrogate_darcy.py
  defaults: VAE 64-32, CNN conditioner 32 wide with 3 full-resolution blocks, batch 32, D4 augmentation), through
  :func:`fabml.surrogate.pipeline.train` on ``../shared/data/darcy``; a short VAE and conditioner are trained first
  (their quality does not matter here). Figure: the mean ``epoch_seconds`` of e2e epochs 2-3 (28 steps each).
- ``stfpm_like_step``: a teacher (no gradient) and a student ``tf_efficientnet_lite0`` up to feature level 3, the
  STFPM loss on normalised features, Adam, batch 16 at 256 x 256, random weights (speed only). Figure: the mean of
  steps 3-6.

Each layout is measured twice, alternating, to show the machine's drift. Usage::

    python benchmarks/cpu_channels_last.py            # writes benchmarks/results/cpu_channels_last.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import fabml  # noqa: F401  (installs the torchvision shim before timm is imported)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def darcy_epoch_seconds(work: Path, channels_last: bool, threads: int) -> float:
    """Mean e2e epoch seconds (epochs 2-3) of the Darcy CNN recipe with the given layout."""
    import surrogate_darcy as sd
    from fabml.surrogate.pipeline import train

    torch.set_num_threads(threads)
    imported = sd.import_data(work)
    # the Darcy benchmark's recipe, with short VAE and conditioner steps (only the e2e epochs are timed)
    args = sd.build_parser().parse_args(["--vae-epochs", "2", "--cond-epochs", "1", "--e2e-epochs", "3",
                                         "--ema-decay", "0", "--channels-last", "false"])
    cfg = sd.base_config(imported["train"], args)
    base = work / "run_base"
    if not (base / "model.pt").is_file():
        train(cfg, base, "vae", fresh=True)
        train(cfg, base, "conditioner", fresh=True)
    run = work / f"run_e2e_{'nhwc' if channels_last else 'nchw'}"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(base, run)
    cfg.train_e2e.channels_last = channels_last
    history = train(cfg, run, "e2e", fresh=True).result.history
    return sum(row["epoch_seconds"] for row in history[1:]) / len(history[1:])


def stfpm_step_seconds(channels_last: bool, threads: int, steps: int = 6) -> float:
    """Mean seconds of steps 3..``steps`` of an STFPM-like training step (random weights)."""
    import timm

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(3,), pretrained=False).eval()
    student = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(3,), pretrained=False)
    optimizer = torch.optim.Adam(student.parameters(), 1e-4)
    images = torch.randn(16, 3, 256, 256)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            target = torch.nn.functional.normalize(teacher(images)[0], dim=1)
        pred = torch.nn.functional.normalize(student(images)[0], dim=1)
        loss = ((pred - target) ** 2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - t0)
    return sum(seconds[2:]) / len(seconds[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--darcy-threads", type=int, default=1, help="threads of the Darcy runs (the benchmark's 1)")
    parser.add_argument("--stfpm-threads", type=int, default=2, help="threads of the STFPM-like step")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fabml_cl_"))
    rows: dict[str, Any] = {"darcy_cnn_e2e": {"unit": "s per epoch (28 steps of 32)", "threads": args.darcy_threads},
                            "stfpm_like_step": {"unit": "s per step of 16 images", "threads": args.stfpm_threads}}
    try:
        for layout in ("nchw", "nhwc", "nchw", "nhwc"):
            cl = layout == "nhwc"
            rows["darcy_cnn_e2e"].setdefault(layout, []).append(round(darcy_epoch_seconds(work, cl, args.darcy_threads), 3))
            rows["stfpm_like_step"].setdefault(layout, []).append(round(stfpm_step_seconds(cl, args.stfpm_threads), 3))
            print(json.dumps(rows), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows.values():
        row["speedup"] = round(sum(row["nchw"]) / sum(row["nhwc"]), 2)
    res = {"rows": rows, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                     "torch": torch.__version__, "python": platform.python_version()},
           "command": "python benchmarks/cpu_channels_last.py"}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "cpu_channels_last.json").write_text(json.dumps(res, indent=2))
    lines = ["# CPU training step: NCHW against NHWC (`train.channels_last`)", "",
             f"Command: `{res['command']}`; machine {res['machine']}. Two alternating rounds per layout.", "",
             "| model | unit | threads | NCHW | NHWC | speed-up |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['unit']} | {row['threads']} | {row['nchw']} | {row['nhwc']} | {row['speedup']}x |")
    (args.results / "cpu_channels_last.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
