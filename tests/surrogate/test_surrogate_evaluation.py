"""``evaluate`` and ``write_report`` on a tiny trained surrogate: the files they write, read back.

One tiny run (generated advection-diffusion cases, a two-stage VAE with narrow filters, a small MLP, a couple of
epochs per mode) is trained once for the module; the tests read what evaluation writes into it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fabml.data.simulation_dataset import read_case_split
from fabml.data.simulation_io import open_fields
from fabml.data.synthetic_simulation import make_synthetic_simulation
from fabml.errors import DataError
from fabml.metrics.regression import relative_l2
from fabml.surrogate.config import SurrogateConfig
from fabml.surrogate.evaluation import evaluate, reconstruct
from fabml.surrogate.pipeline import load_surrogate, predict_arrays, train
from fabml.surrogate.report import write_report


def _tiny_config(fields: Path, inputs: Path) -> SurrogateConfig:
    cfg = SurrogateConfig()
    cfg.data.fields, cfg.data.inputs = str(fields), str(inputs)
    cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.4  # 16 test cases of 40
    cfg.vae.filters = [16, 8]
    cfg.conditioner.hidden, cfg.conditioner.blocks = 16, 1
    for section in (cfg.train_vae, cfg.train_conditioner, cfg.train_e2e):
        section.epochs, section.batch_size, section.lr = 2, 8, 2e-3
        section.device, section.num_workers, section.precision = "cpu", 0, "fp32"
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("surrogate_eval")
        sim = make_synthetic_simulation(root / "data", n_cases=40, time_steps=8, nodes=32, image_size=16, seed=3)
        run = root / "run"
        train(_tiny_config(sim.fields, sim.params_csv), run, "all", fresh=True)
        return run
    finally:
        torch.set_num_threads(old)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_writes_metrics_per_case_table_and_figures(run_dir: Path) -> None:
    report = evaluate(run_dir, "test")
    out = run_dir / "evaluation" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    split = read_case_split(run_dir)
    assert metrics["split"] == "test" and metrics["n_cases"] == len(split["test"]) == report.n_cases == 16
    # the per-case table holds the test cases, and its mean is the reported overall figure
    with (out / "per_case.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["index"]) for r in rows) == sorted(split["test"].tolist())
    rel = np.array([float(r["rel_l2"]) for r in rows])
    floor = np.array([float(r["vae_floor_rel_l2"]) for r in rows])
    assert metrics["rel_l2"]["mean"] == pytest.approx(rel.mean(), rel=1e-4)
    assert metrics["rel_l2"]["median"] == pytest.approx(np.median(rel), rel=1e-4)
    assert metrics["vae_floor"]["mean"] == pytest.approx(floor.mean(), rel=1e-4)
    assert len(metrics["rel_l2"]["per_step"]) == 8 and len(metrics["rel_l2"]["per_variable"]) == 1
    # the reported errors are those of predict_arrays against the fields file, in original units
    loaded = load_surrogate(run_dir)
    source = open_fields(loaded.cfg.data)
    idx = np.array([int(r["index"]) for r in rows])
    true = source.load_all(idx)
    params = np.loadtxt(loaded.cfg.data.inputs, delimiter=",", skiprows=1, ndmin=2)
    ids = source.case_ids[idx]
    by_id = {int(row[0]): row[1:] for row in params}
    pred, std = predict_arrays(loaded, np.stack([by_id[int(i)] for i in ids]).astype(np.float32))
    assert std is None
    np.testing.assert_allclose(rel, relative_l2(pred, true), rtol=1e-4)
    recon, mu = reconstruct(loaded, true)
    np.testing.assert_allclose(floor, relative_l2(recon, true), rtol=1e-4)
    assert mu.shape == (16, 32)
    # best <= median <= worst, and the figures are written
    cases = metrics["cases"]
    assert cases["best"]["rel_l2"] <= cases["median"]["rel_l2"] <= cases["worst"]["rel_l2"]
    assert cases["worst"]["rel_l2"] == pytest.approx(rel.max(), rel=1e-4)
    for name in ("fields_best_median_worst.png", "error_per_step.png", "latent_pca_error.png", "latent_pca_all.png"):
        assert (out / name).is_file() and name in metrics["figures"]
    assert not (out / "latent_tsne_error.png").exists()  # 16 cases < 30
    assert metrics["coverage"] is None  # one deterministic sample


@pytest.mark.usefixtures("one_thread")
def test_monte_carlo_samples_add_a_coverage_figure(run_dir: Path) -> None:
    report = evaluate(run_dir, "val", samples=4, figures=False)
    metrics = json.loads(report.metrics_path.read_text())
    cover = metrics["coverage"]
    assert cover["samples"] == 4 and cover["sigma"] == 2.0 and cover["gaussian_expectation"] == 0.954
    assert 0.0 <= cover["value"] <= 1.0 and report.coverage == cover["value"]
    assert metrics["figures"] == [] and not (report.out_dir / "error_per_step.png").exists()
    # "all" evaluates every case and draws the t-SNE map (40 >= 30 cases)
    every = evaluate(run_dir, "all")
    assert every.n_cases == 40 and (every.out_dir / "latent_tsne_error.png").is_file()
    assert math.isfinite(every.rel_l2_mean)


def test_bad_split_names_are_one_line_errors(run_dir: Path) -> None:
    with pytest.raises(DataError, match="split 'holdout' is not known"):
        evaluate(run_dir, "holdout")


@pytest.mark.usefixtures("one_thread")
def test_report_shows_training_and_evaluation(run_dir: Path) -> None:
    evaluate(run_dir, "test")
    page = write_report(run_dir)
    assert page == run_dir / "report" / "index.html"
    text = page.read_text()
    assert "Evaluation: test" in text and "VAE reconstruction floor" in text
    assert "fields_best_median_worst.png" in text and "Training" in text
    assert any((run_dir / "figures").glob("training_*.png"))
    with pytest.raises(DataError, match="not a surrogate run"):
        write_report(run_dir / "missing")
