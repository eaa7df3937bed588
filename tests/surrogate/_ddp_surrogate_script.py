"""Run by test_surrogate_ddp under torchrun (2 gloo ranks): ``fabml.surrogate.pipeline.train`` (mode all) on the
generated cases in DATA into RUN. Each rank writes what it did to RUN/../rank{RANK}.json (two processes printing to
one pipe interleave their lines, so the test reads these files, not the console)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import fabml  # noqa: F401  (the torchvision shim)
from fabml.data.synthetic_simulation import SyntheticSimulation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import N_CASES, tiny_config  # noqa: E402

from fabml.surrogate.pipeline import train  # noqa: E402

if __name__ == "__main__":
    data_dir, run = Path(sys.argv[1]), Path(sys.argv[2])
    data = SyntheticSimulation(data_dir / "fields.npy", data_dir / "params.csv", data_dir / "images", N_CASES)
    report = train(tiny_config(data), run, "all")
    done = {"epochs": report.result.epochs_completed, "trained": list(report.trained),
            "model_written": report.model_path is not None}
    (run.parent / f"rank{os.environ['RANK']}.json").write_text(json.dumps(done))
