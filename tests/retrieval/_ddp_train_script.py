"""Run by test_pipeline under torchrun (2 gloo ranks): ``fabml.retrieval.pipeline.train`` on DATA into RUN."""

from __future__ import annotations

import sys

import fabml  # noqa: F401  (the torchvision shim)
from fabml.retrieval.pipeline import make_config, train

if __name__ == "__main__":
    data, run, *overrides = sys.argv[1:]
    report = train(make_config(run, None, overrides, data=data), run)
    print(f"rank done: {report.result.epochs_completed} epochs, batch {report.batch}")
