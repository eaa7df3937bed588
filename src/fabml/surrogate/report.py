"""``fabml surrogate report``: one HTML page (``RUN/report/index.html``) with what a surrogate run holds.

Sections, each present when the run has its files: the run (data shape, layout, model and conditioner
settings, from ``config.yaml``), training curves per mode (``train/<mode>/metrics.csv``, drawn into
``RUN/figures/``; for an ensemble folder, its members and each member's curves), and one section per evaluated split (``evaluation/<split>/metrics.json`` and its
figures: the relative L2 error beside the VAE reconstruction floor, best / median / worst fields, error
per time step, latent maps). Run ``fabml surrogate evaluate`` first for the evaluation sections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fabml.errors import DataError
from fabml.viz import ReportSection, plot_training_curves, write_html_report

SPLIT_ORDER = ("test", "val", "train", "all")
FIGURE_ORDER = ("fields_best_median_worst.png", "error_per_step.png", "latent_pca_error.png",
                "latent_tsne_error.png", "latent_pca_all.png")


def _run_section(cfg: dict[str, Any], info: dict[str, Any]) -> ReportSection:
    data, vae, cond = cfg.get("data", {}), cfg.get("vae", {}), cfg.get("conditioner", {})
    rows = [
        {"setting": "mode", "value": cfg.get("mode")},
        {"setting": "fields", "value": data.get("fields")},
        {"setting": "inputs", "value": data.get("inputs")},
        {"setting": "layout", "value": str(data.get("layout")) + (f" {data.get('grid_shape')}" if data.get("grid_shape") else "")},
        {"setting": "VAE preset / filters", "value": f"{vae.get('preset')} {vae.get('filters') or ''}".strip()},
        {"setting": "latent (main / per stage)", "value": f"{vae.get('latent_dim_end')} / {vae.get('latent_dim')}"},
        {"setting": "reconstruction loss / alpha", "value": f"{vae.get('recon_loss')} / {vae.get('alpha')}"},
        {"setting": "conditioner", "value": cond.get("kind")},
        {"setting": "e2e loss / latent reg.", "value": f"{cfg.get('e2e', {}).get('loss')} / "
                                                        f"{cfg.get('e2e', {}).get('latent_reg_weight')}"},
        {"setting": "seed", "value": cfg.get("seed")},
    ]
    for key in ("created", "fabml", "torch", "device", "data_fingerprint"):
        if key in info:
            rows.append({"setting": key, "value": info[key]})
    return ReportSection("Run", "The run's settings (config.yaml holds all of them).",
                         table=[r for r in rows if r["value"] not in (None, "", "None")])


def _evaluation_section(split: str, folder: Path) -> ReportSection:
    m = json.loads((folder / "metrics.json").read_text())
    rel, floor = m["rel_l2"], m["vae_floor"]
    table = [
        {"figure": "surrogate relative L2", "mean": rel.get("mean"), "median": rel.get("median"),
         "min": rel.get("min"), "max": rel.get("max")},
        {"figure": "VAE reconstruction floor", "mean": floor.get("mean"), "median": floor.get("median"),
         "min": floor.get("min"), "max": floor.get("max")},
    ]
    per_var = rel.get("per_variable") or []
    if len(per_var) > 1:
        for k, v in enumerate(per_var):
            table.append({"figure": f"surrogate relative L2, variable {k}", "mean": v})
    text = (f"{m['n_cases']} cases of the {split} split, predicted from their inputs alone; relative L2 = "
            "||pred - true|| / ||true|| per case (original units), mean over cases. The VAE floor is the VAE's "
            "own reconstruction of the true fields: the surrogate cannot do much better than it. "
            f"Inference {m.get('inference_ms_per_case', float('nan')):.2f} ms per case.")
    cover = m.get("coverage")
    if cover:
        expected = cover.get("gaussian_expectation")
        spread = f"{cover['samples']} Monte-Carlo dropout sample(s)"
        if m.get("members"):
            spread = f"{len(m['members'])} ensemble members x {spread}"
        if cover.get("spread_scale", 1.0) != 1.0:
            spread += f", spread x {cover['spread_scale']:.3g} from calibration.json"
        text += (f"\n\nCoverage of mean ± {cover['sigma']:g} std ({spread}): "
                 f"{cover['value']:.3f}" + (f" (a calibrated Gaussian spread: {expected})" if expected else "") + ".")
    cases = m.get("cases", {})
    if cases:
        text += "\n\n" + "; ".join(f"{name}: case {c['case_id']} ({c['rel_l2']:.4f})" for name, c in cases.items())
    images = [folder / name for name in FIGURE_ORDER if (folder / name).is_file()]
    return ReportSection(f"Evaluation: {split}", text, table=table, images=images)


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report/index.html`` and return its path (figures are linked, so move the run folder whole)."""
    from fabml.surrogate.ensemble import is_ensemble, read_members

    run_dir = Path(run_dir)
    members = read_members(run_dir) if is_ensemble(run_dir) else []
    cfg_path = (members[0] if members else run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{run_dir} is not a surrogate run (no {cfg_path.name}); train one with fabml surrogate train")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    info_path = cfg_path.parent / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    sections = [_run_section(cfg, info)]
    if members:
        seeds = [(yaml.safe_load((m / "config.yaml").read_text()) or {}).get("seed") for m in members]
        sections.append(ReportSection(
            "Ensemble", f"{len(members)} member runs; predictions are their mean, the spread their disagreement "
            "(plus Monte-Carlo dropout, if sampled). The settings above are the first member's.",
            table=[{"member": k, "run": str(m), "seed": seed} for k, (m, seed) in enumerate(zip(members, seeds))]))
    curves = []
    for prefix, folder in [(f"member{k}_", m) for k, m in enumerate(members)] or [("", run_dir)]:
        for csv_path in sorted((folder / "train").glob("*/metrics.csv")):
            mode = csv_path.parent.name
            try:
                curves.append(plot_training_curves(csv_path, run_dir / "figures" / f"training_{prefix}{mode}.png"))
            except DataError:
                continue  # a mode that has not finished an epoch yet: no curve to draw
    if curves:
        sections.append(ReportSection("Training", "Per-epoch losses of each training mode (vae: reconstruction, KL "
                                      "and its annealed weight beta; conditioner: latent MSE; e2e: field loss).",
                                      images=curves))
    evaluated = {p.parent.name: p.parent for p in (run_dir / "evaluation").glob("*/metrics.json")}
    for split in sorted(evaluated, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER)):
        sections.append(_evaluation_section(split, evaluated[split]))
    if not evaluated:
        sections.append(ReportSection("Evaluation", "Not evaluated yet: run fabml surrogate evaluate RUN "
                                      "(--split test) and write the report again."))
    return write_html_report(run_dir / "report" / "index.html", f"fabml surrogate report: {run_dir.name}", sections)
