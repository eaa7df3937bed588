"""``fabml surrogate evaluate``: how far the surrogate's predicted fields are from the solver's, on held-out cases.

For the cases of one split of a trained run (``RUN/splits/<split>.csv``, written when the run was trained),
the surrogate predicts each field from the case's inputs alone (inputs -> conditioner -> decoder ->
inverse scaling, :func:`fabml.surrogate.pipeline.predict_arrays`) and compares it with the true field in
original units:

- relative L2 per case ``||pred - true|| / ||true||`` (norms over all time steps, nodes and variables), and
  its mean and median over cases (the overall figure is the mean, as in Li et al. 2021), per variable and
  per time step (:mod:`fabml.metrics.regression`);
- ``vae_floor``: the same error for the VAE's own reconstruction of the true field (encode -> means ->
  decode, no sampling). The conditioner can only reach the fields the decoder can draw, so this is the floor
  the surrogate's error is bounded by in practice; a surrogate error far above it points at the conditioner,
  one close to it at the VAE;
- ``coverage`` (when ``eval.samples`` > 1, Monte-Carlo dropout in the conditioner, or for an ensemble of runs,
  :mod:`fabml.surrogate.ensemble`, whose members' disagreement is a spread): the fraction of field
  entries with ``|true - mean| <= eval.coverage_sigma * std`` (about 0.954 for a calibrated Gaussian spread at
  two sigma; lower = over-confident, higher = too wide). With ``calibrate`` (``--calibrate``, on the val split)
  the factor on the spread that reaches the Gaussian coverage is fitted and saved in ``RUN/calibration.json``
  (:mod:`fabml.surrogate.calibration`); later evaluations and predictions apply it.

Writes ``RUN/evaluation/<split>/``: ``metrics.json``, ``per_case.csv`` (index, case_id, rel_l2,
vae_floor_rel_l2, per-variable errors), and figures: ``fields_best_median_worst.png`` (true / predicted /
|error| of the best, median and worst case), ``error_per_step.png``, ``latent_pca_error.png`` (PCA of the
VAE latent means of the split's cases, coloured by each case's error), ``latent_tsne_error.png`` (t-SNE, when
the split has >= 30 cases) and ``latent_pca_all.png`` (PCA of ``latent_vectors.npy``, all cases, coloured by
the first design parameter, for parameter inputs).

Cases stream through in batches, so a split larger than memory is evaluated with bounded memory.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fabml.engine.checkpoint import _atomic_write
from fabml.errors import DataError
from fabml.metrics.regression import (
    column_means,
    coverage,
    relative_l2,
    relative_l2_per_step,
    relative_l2_per_variable,
    spread_ratios,
    spread_scale,
    summarise,
)

SPLITS = ("train", "val", "test", "all")
TSNE_MIN_CASES = 30
EXPECTED_GAUSSIAN = {1.0: 0.683, 2.0: 0.954, 3.0: 0.997}


@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured and wrote (all errors relative L2, original units)."""

    split: str
    n_cases: int
    rel_l2_mean: float | None
    rel_l2_median: float | None
    vae_floor_mean: float | None
    coverage: float | None
    inference_ms_per_case: float
    out_dir: Path
    metrics_path: Path
    per_case_path: Path
    figures: list[Path] = field(default_factory=list)
    calibration: dict[str, Any] | None = None


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _split_indices(run_dir: Path, split: str, case_ids: np.ndarray) -> np.ndarray:
    """Indices (into the field source) of the split's cases, from the run's split files."""
    from fabml.data.simulation_dataset import read_case_split

    if split not in SPLITS:
        raise DataError(f"split '{split}' is not known; use one of {', '.join(SPLITS)}")
    n = len(case_ids)
    if split == "all":
        return np.arange(n, dtype=np.int64)
    parts = read_case_split(run_dir, case_ids)
    indices = np.asarray(parts.get(split, []), dtype=np.int64)
    if len(indices) == 0:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
        raise DataError(f"split '{split}' of {run_dir} has no cases ({sizes}); evaluate another split "
                        "(--split val) or train with data.test_fraction > 0")
    return indices


def case_inputs(loaded: Any, inputs: Any, rows: np.ndarray) -> np.ndarray:
    """The inputs of the given input rows as one batch, as :func:`predict_arrays` takes them: parameters
    float32 ``[n, P]`` (unscaled) or images float32 ``[n, C, S, S]`` in [0, 1]."""
    if inputs.kind == "params":
        return np.asarray(inputs.params[rows], dtype=np.float32)
    from fabml.data.simulation_inputs import load_image

    cfg = loaded.cfg.data
    return np.stack([load_image(inputs.image_paths[int(r)], cfg.image_size, cfg.image_channels) for r in rows])


@torch.no_grad()
def reconstruct(loaded: Any, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The VAE's reconstruction of true fields ``[n, T, M, V]`` (original units) -> (``[n, T, M, V]`` in
    original units, latent means ``[n, Z]``): scale, encode, decode the means, invert the scaling (an ensemble:
    :meth:`fabml.surrogate.ensemble.SurrogateEnsemble.reconstruct`)."""
    from fabml.surrogate.ensemble import SurrogateEnsemble

    if isinstance(loaded, SurrogateEnsemble):
        return loaded.reconstruct(fields)
    vae = loaded.vae
    was_training = vae.training
    vae.eval()
    scaled = np.asarray(loaded.field_scaler.transform(np.asarray(fields, dtype=np.float32)), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))).to(_device_of(vae))
    out = vae(x, sample=False)
    recon = out.recon.float().permute(0, 2, 3, 1).cpu().numpy()
    vae.train(was_training)
    return np.asarray(loaded.field_scaler.inverse(recon), dtype=np.float32), out.mu.float().cpu().numpy()


def _pca_2d(x: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    if len(x) < 2:
        return np.zeros((len(x), 2))
    k = min(2, x.shape[1], len(x))
    xy = PCA(n_components=k, random_state=0).fit_transform(x)
    return xy if k == 2 else np.column_stack([xy, np.zeros(len(x))])


def _tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(5, (len(x) - 1) // 3)))
    return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)


def evaluate(run_dir: str | Path, split: str = "test", samples: int | None = None, batch_size: int = 16,
             figures: bool = True, calibrate: bool = False) -> EvaluationReport:
    """Evaluate the trained surrogate of ``run_dir`` on one split (``train | val | test | all``).

    Args:
        samples: Monte-Carlo dropout samples (None = the run's ``eval.samples``); > 1 adds the coverage of
            the predicted spread.
        batch_size: cases per prediction batch (memory: a batch's fields, not the split's).
        figures: draw the PNG figures (the metrics and per-case table are always written).
        calibrate: fit the factor on the spread that gives the Gaussian coverage on this split (not ``test``)
            and write ``RUN/calibration.json`` (:mod:`fabml.surrogate.calibration`); the coverage reported
            is then the uncalibrated one, the calibrated one is in ``metrics["calibration"]``.
    """
    from fabml.data.simulation_inputs import match_cases, read_inputs
    from fabml.data.simulation_io import open_fields
    from fabml.surrogate.calibration import MAX_RATIOS_PER_BATCH, gaussian_coverage, write_calibration
    from fabml.surrogate.ensemble import SurrogateEnsemble
    from fabml.surrogate.pipeline import load_surrogate, predict_arrays

    run_dir = Path(run_dir)
    if calibrate and split in ("test", "all"):
        raise DataError(f"--calibrate on the {split} split would fit the spread on the cases it is judged on: "
                        "calibrate on --split val")
    loaded = load_surrogate(run_dir)
    data_run = loaded.split_dir if isinstance(loaded, SurrogateEnsemble) else run_dir  # splits/ and latents
    cfg = loaded.cfg
    samples = int(cfg.eval.samples if samples is None else samples)
    if samples < 1:
        raise DataError(f"samples must be >= 1, got {samples}")
    if calibrate and samples == 1 and not isinstance(loaded, SurrogateEnsemble):
        raise DataError("--calibrate needs a spread: pass --samples > 1 (Monte-Carlo dropout) or use an ensemble")
    if calibrate:
        loaded.spread_scale = 1.0  # fit on the raw spread, not on an earlier calibration
    sigma = float(cfg.eval.coverage_sigma)
    rng = np.random.default_rng(0)
    ratios: list[np.ndarray] = []
    source = open_fields(cfg.data)
    inputs = read_inputs(cfg.data)
    rows = match_cases(source, inputs)
    n_all, steps, _, variables = source.shape
    indices = _split_indices(data_run, split, source.case_ids)
    n = len(indices)

    rel, floor, per_var, per_step, floor_step, floor_var, mus = [], [], [], [], [], [], []
    inside, total, predict_seconds = 0, 0, 0.0
    for start in range(0, n, batch_size):
        idx = indices[start:start + batch_size]
        true = np.stack([source.get(int(i)) for i in idx])  # [b, T, M, V], original units
        batch_inputs = case_inputs(loaded, inputs, rows[idx])
        t0 = time.perf_counter()
        mean, std = predict_arrays(loaded, batch_inputs, samples)
        predict_seconds += time.perf_counter() - t0
        mean = np.asarray(mean, dtype=np.float32)
        if mean.shape != true.shape:
            raise DataError(f"predicted fields have shape {list(mean.shape)} but the true fields "
                            f"{list(true.shape)}; the run's shapes do not match the data (retrain)")
        recon, mu = reconstruct(loaded, true)
        rel.append(relative_l2(mean, true))
        per_var.append(relative_l2_per_variable(mean, true))
        per_step.append(relative_l2_per_step(mean, true))
        floor.append(relative_l2(recon, true))
        floor_var.append(relative_l2_per_variable(recon, true))
        floor_step.append(relative_l2_per_step(recon, true))
        mus.append(mu)
        if std is not None:
            inside += coverage(true, mean, np.asarray(std), sigma) * true.size
            total += true.size
            if calibrate:
                r = spread_ratios(true, mean, np.asarray(std), sigma)
                ratios.append(r if r.size <= MAX_RATIOS_PER_BATCH else rng.choice(r, MAX_RATIOS_PER_BATCH, False))

    rel_a, floor_a = np.concatenate(rel), np.concatenate(floor)
    per_var_a, per_step_a = np.concatenate(per_var), np.concatenate(per_step)
    floor_var_a, floor_step_a = np.concatenate(floor_var), np.concatenate(floor_step)
    mu_a = np.concatenate(mus)
    cover = float(inside / total) if total else None

    out_dir = run_dir / "evaluation" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    case_ids = source.case_ids[indices]
    per_case_path = out_dir / "per_case.csv"
    with per_case_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        var_cols = [f"rel_l2_var{k}" for k in range(variables)] if variables > 1 else []
        writer.writerow(["index", "case_id", "rel_l2", "vae_floor_rel_l2", *var_cols])
        for k in range(n):
            extra = [f"{v:.6g}" for v in per_var_a[k]] if variables > 1 else []
            writer.writerow([int(indices[k]), int(case_ids[k]), f"{rel_a[k]:.6g}", f"{floor_a[k]:.6g}", *extra])

    order = [int(k) for k in np.argsort(np.where(np.isfinite(rel_a), rel_a, np.inf), kind="stable")
             if np.isfinite(rel_a[k])]
    picks = {"best": order[0], "median": order[len(order) // 2], "worst": order[-1]} if order else {}
    metrics: dict[str, Any] = {
        "split": split, "n_cases": n, "run": str(run_dir), "samples": samples,
        "members": [str(d) for d in loaded.member_dirs] if isinstance(loaded, SurrogateEnsemble) else None,
        "shape": {"time_steps": steps, "nodes": int(source.shape[2]), "variables": variables},
        "rel_l2": {**summarise(rel_a), "per_variable": column_means(per_var_a), "per_step": column_means(per_step_a)},
        "vae_floor": {**summarise(floor_a), "per_variable": column_means(floor_var_a),
                      "per_step": column_means(floor_step_a)},
        "coverage": None if cover is None else {
            "value": cover, "sigma": sigma, "samples": samples,
            "gaussian_expectation": EXPECTED_GAUSSIAN.get(sigma), "spread_scale": loaded.spread_scale},
        "inference_ms_per_case": predict_seconds / max(n, 1) * 1000.0,
        "cases": {name: {"index": int(indices[k]), "case_id": int(case_ids[k]), "rel_l2": float(rel_a[k])}
                  for name, k in picks.items()},
    }

    drawn: list[Path] = []
    if figures and picks:
        drawn = _figures(loaded, source, inputs, rows, indices, picks, rel_a, per_step_a, floor_step_a, mu_a,
                         data_run, out_dir, split, samples)
    metrics["figures"] = [p.name for p in drawn]
    if calibrate:
        target = gaussian_coverage(sigma)
        ratio_a = np.concatenate(ratios)
        scale = spread_scale(ratio_a, target)
        metrics["calibration"] = {
            "spread_scale": scale, "split": split, "sigma": sigma, "target_coverage": target, "samples": samples,
            "coverage_before": cover, "coverage_after": float(np.mean(ratio_a <= scale)),
            "entries": int(ratio_a.size), "path": str(write_calibration(run_dir, {
                "spread_scale": scale, "split": split, "sigma": sigma, "target_coverage": target,
                "samples": samples, "coverage_before": cover}))}
    metrics_path = out_dir / "metrics.json"
    text = json.dumps(metrics, indent=2).encode("utf-8")
    _atomic_write(metrics_path, lambda handle: handle.write(text))
    return EvaluationReport(split, n, metrics["rel_l2"]["mean"], metrics["rel_l2"]["median"],
                            metrics["vae_floor"]["mean"], cover, metrics["inference_ms_per_case"], out_dir,
                            metrics_path, per_case_path, drawn, metrics.get("calibration"))


def _figures(loaded: Any, source: Any, inputs: Any, rows: np.ndarray, indices: np.ndarray, picks: dict[str, int],
             rel: np.ndarray, per_step: np.ndarray, floor_step: np.ndarray, mu: np.ndarray, run_dir: Path,
             out_dir: Path, split: str, samples: int) -> list[Path]:
    from fabml.surrogate.pipeline import predict_arrays
    from fabml.viz.surrogate import plot_error_per_step, plot_field_comparison, plot_latent_scatter

    cfg = loaded.cfg
    drawn: list[Path] = []
    ks = list(picks.values())
    idx = indices[ks]
    true = np.stack([source.get(int(i)) for i in idx])
    pred, _ = predict_arrays(loaded, case_inputs(loaded, inputs, rows[idx]), samples)
    labels = [f"{name}: case {int(source.case_ids[i])}, rel L2 {rel[k]:.4f}"
              for (name, k), i in zip(picks.items(), idx)]
    drawn.append(plot_field_comparison(true, np.asarray(pred), out_dir / "fields_best_median_worst.png", labels,
                                       layout=cfg.data.layout, grid_shape=cfg.data.grid_shape or None,
                                       title=f"{split} split: true, predicted and |error| (original units)"))
    drawn.append(plot_error_per_step(per_step, out_dir / "error_per_step.png", floor=floor_step,
                                     title=f"relative L2 per time step, {split} split ({len(indices)} cases)"))
    if len(mu) >= 3:
        drawn.append(plot_latent_scatter(_pca_2d(mu), rel, out_dir / "latent_pca_error.png",
                                         f"PCA of the VAE latent means, {split} split", "relative L2 of the surrogate"))
    if len(mu) >= TSNE_MIN_CASES:
        drawn.append(plot_latent_scatter(_tsne_2d(mu, cfg.seed), rel, out_dir / "latent_tsne_error.png",
                                         f"t-SNE of the VAE latent means, {split} split", "relative L2 of the surrogate"))
    latents = run_dir / "latent_vectors.npy"
    if inputs.kind == "params" and latents.is_file():
        z = np.load(latents)
        if z.ndim == 2 and len(z) == len(rows) and len(z) >= 3:
            name = inputs.columns[0] if inputs.columns else "parameter 0"
            drawn.append(plot_latent_scatter(_pca_2d(z), inputs.params[rows, 0], out_dir / "latent_pca_all.png",
                                             f"PCA of latent_vectors.npy, all {len(z)} cases", name))
    return drawn

