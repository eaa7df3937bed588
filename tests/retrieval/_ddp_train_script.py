"""Run by test_pipeline under torchrun (2 gloo ranks): ``fabml.retrieval.pipeline.train`` on DATA into RUN. Each rank writes what it did to RUN/../rank{RANK}.json (two processes printing to one pipe
interleave their lines, so the test reads these files, not the console)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import fabml  # noqa: F401  (the torchvision shim)
from fabml.retrieval.pipeline import make_config, train

if __name__ == "__main__":
    data, run, *overrides = sys.argv[1:]
    report = train(make_config(run, None, overrides, data=data), run)
    done = {"epochs": report.result.epochs_completed, "batch": report.batch}
    (Path(run).parent / f"rank{os.environ['RANK']}.json").write_text(json.dumps(done))
