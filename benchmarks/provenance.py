"""What every benchmark stamps on its results: the commit of the code that produced them."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when src/, benchmarks/ or configs/ differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "src", "benchmarks", "configs") else "")


def machine(**extra: object) -> dict:
    """The machine and software a benchmark ran on (device, threads, versions, load at start) plus ``extra``."""
    import os
    import platform

    import torch

    from fabml import __version__

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "fabml": __version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "commit": commit(),
            "loadavg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()], **extra}
