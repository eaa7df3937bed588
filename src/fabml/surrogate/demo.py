"""The surrogate part of ``fabml demo``: the whole job on a generated advection–diffusion family in about a
CPU minute.

96 cases of a 1-D advection–diffusion rod (:mod:`fabml.data.synthetic_simulation`: five design parameters per
case, fields [T=16, M=64]) are generated with a CSV of the parameters. ``train --mode all`` runs the VAE,
then the MLP conditioner on the frozen encoder's latents, then end-to-end fine-tuning through the frozen
decoder, in one trainer run; the Monte-Carlo-dropout spread is calibrated on the val cases
(:mod:`fabml.surrogate.calibration`); the held-out test cases are evaluated (relative L2, the VAE floor, the
coverage of the calibrated spread), predicted from their parameters alone, and an HTML report is written.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from fabml.config import load_config
from fabml.console import out as results_console
from fabml.data.synthetic_simulation import make_synthetic_simulation
from fabml.surrogate.config import SurrogateConfig

# A CPU recipe: a two-stage VAE with narrow filters and a small MLP, batch 16, the seed's loss settings.
DEMO_OVERRIDES = [
    "vae.filters=[64,32]", "conditioner.hidden=64", "conditioner.blocks=2", "conditioner.dropout=0.1",
    "train_vae.epochs=80", "train_vae.lr=2e-3", "train_conditioner.epochs=60", "train_conditioner.lr=2e-3",
    "train_e2e.epochs=30", "train_e2e.lr=5e-4", "train_vae.batch_size=16", "train_vae.num_workers=0",
    "train_vae.device=cpu", "train_vae.precision=fp32", "eval.validate_every=10", "eval.samples=8",
    "data.val_fraction=0.15", "data.test_fraction=0.15",
]
N_CASES, TIME_STEPS, NODES = 96, 16, 64


def run_demo(out: Path, console: Console | None = None) -> dict[str, Path]:
    """Generate the cases, train (mode all), evaluate the test split, predict from parameters, write the report."""
    from fabml.surrogate.evaluation import evaluate
    from fabml.surrogate.pipeline import predict, train
    from fabml.surrogate.report import write_report

    console = console or results_console
    out = Path(out)
    start = time.perf_counter()
    data = make_synthetic_simulation(out / "data", n_cases=N_CASES, time_steps=TIME_STEPS, nodes=NODES, seed=0)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)  # the demo always starts over
    overrides = DEMO_OVERRIDES + [f"data.fields={data.fields.resolve()}", f"data.inputs={data.params_csv.resolve()}"]
    cfg = load_config(SurrogateConfig, None, overrides)
    console.print("== fabml demo: simulation surrogate on a generated advection-diffusion family ==")
    console.print(f"{N_CASES} cases, fields [T, M] = [{TIME_STEPS}, {NODES}], 5 design parameters per case")
    report = train(cfg, run, "all", fresh=True)
    result = report.result
    console.print(f"trained vae -> conditioner -> e2e ({result.epochs_completed} epochs) in {result.seconds:.0f} s; "
                  f"split {report.split_sizes}")
    c = evaluate(run, "val", figures=False, calibrate=True).calibration or {}  # eval.samples 8: a spread to calibrate
    console.print(f"dropout spread calibrated on the {report.split_sizes['val']} val cases: x {c['spread_scale']:.2f}, "
                  f"coverage of mean ± 2 std there {c['coverage_before']:.2f} -> {c['coverage_after']:.2f}")
    evaluation = evaluate(run, "test")
    coverage = f", coverage of mean ± 2 std {evaluation.coverage:.2f}" if evaluation.coverage is not None else ""
    console.print(f"test split: relative L2 {evaluation.rel_l2_mean:.4f} (median {evaluation.rel_l2_median:.4f}); "
                  f"VAE reconstruction floor {evaluation.vae_floor_mean:.4f}{coverage}")
    # new cases from their parameters alone: the test split's rows of the CSV
    test_ids = pd.read_csv(run / "splits" / "test.csv")["case_id"].to_numpy()
    params = pd.read_csv(data.params_csv)
    new_cases = out / "new_cases.csv"
    params[params["case_id"].isin(test_ids)].to_csv(new_cases, index=False)
    predicted = predict(run, new_cases, out / "predictions", samples=8)
    fields = np.load(predicted.fields_path)
    console.print(f"predicted {predicted.n_cases} new cases from their parameters: fields {list(fields.shape)}, "
                  f"{predicted.ms_per_case:.1f} ms/case with 8 Monte-Carlo dropout samples")
    page = write_report(run)
    paths = {"run": run, "metrics": evaluation.metrics_path, "predictions": predicted.fields_path,
             "spread": predicted.std_path or predicted.fields_path, "report": page}
    console.print(f"done in {time.perf_counter() - start:.0f} s. Outputs:")
    for name, path in paths.items():
        console.print(f"  {name:11s} {path}")
    return paths
