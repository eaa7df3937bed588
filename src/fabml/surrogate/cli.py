"""``fabml surrogate ...``: argument parsing and printing only; the work is in :mod:`fabml.surrogate.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fabml.console import out as console
from fabml.console import print_table

app = typer.Typer(help="Simulation surrogate: hierarchical VAE over fields + latent conditioner (MLP / CNN / ViT).",
                  no_args_is_help=True, rich_markup_mode=None)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the run's config.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: --set train_vae.epochs=5")]
RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run folder written by `fabml surrogate train`.")]


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(f"note: {note}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder.")],
    mode: Annotated[Optional[str], typer.Option(help="vae | conditioner | e2e | all (default: the config's mode, "
                                                     "all).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Fields file: .npy / .npz / .h5 [N, T, M(, V)] "
                                                      "(or a pickle with --allow-pickle).")] = None,
    inputs: Annotated[Optional[Path], typer.Option(help="Case inputs: a CSV (one row per case) or a folder of "
                                                        "images (param_001.png ...).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this mode's run with changed settings.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete this mode's checkpoints and start it over.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow a legacy pickle as the fields file "
                                                                      "(pickles run code when loaded).")] = False,
) -> None:
    """Train one mode: the VAE, the conditioner on the saved latents, end-to-end through the frozen decoder, or
    all three in sequence. Running it again continues the mode's run. Runs under torchrun for DDP."""
    from fabml.engine.distributed import is_main_process
    from fabml.surrogate.pipeline import make_config, train as run_train

    cfg = make_config(out, config, set_, data, inputs, allow_pickle, mode)
    report = run_train(cfg, out, cfg.mode, fresh=fresh, resume=resume)
    if not is_main_process():
        return
    s = report.shapes
    console.print(f"data: {s.cases} cases, fields [T, M, V] = [{s.time_steps}, {s.nodes}, {s.variables}], "
                  f"{s.input_kind} inputs {s.input_shape}; split " +
                  ", ".join(f"{k} {v}" for k, v in report.split_sizes.items()) +
                  f"; {'preloaded' if report.preload else 'streamed from the file (lazy)'}")
    result = report.result
    console.print(f"mode {report.mode}: {result.epochs_completed} epochs in {result.seconds:.0f} s "
                  f"({result.stopped_reason}); best {result.best_metric} (epoch {result.best_epoch}); "
                  f"peak RSS {report.peak_rss_mb:.0f} MB")
    _print_notes(report.notes)
    console.print(f"model: {report.model_path} (trained: {', '.join(report.trained)})")
    if report.latents_path is not None:
        console.print(f"latents: {report.latents_path}, {report.xs_path}")


@app.command()
def predict(
    run: RunOpt,
    inputs: Annotated[Path, typer.Argument(help="A CSV of parameters (the training columns) or a folder of images.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/predictions).")] = None,
    samples: Annotated[int, typer.Option(help="Monte-Carlo dropout samples: > 1 writes the spread "
                                              "(fields_std.npy).")] = 1,
) -> None:
    """Predict whole fields from case inputs: fields.npy [n, T, M, V] in original units, cases.csv."""
    from fabml.surrogate.pipeline import predict as run_predict

    report = run_predict(run, inputs, out, samples)
    spread = f", mean spread (std) {report.mean_std:.4g}" if report.mean_std is not None else ""
    console.print(f"{report.n_cases} cases, {report.samples} sample(s) each, {report.ms_per_case:.2f} ms/case{spread}")
    _print_notes(report.notes)
    console.print(f"-> {report.fields_path}" + (f", {report.std_path}" if report.std_path else "") +
                  f", {report.cases_path}")


@app.command()
def evaluate(
    run: RunOpt,
    split_name: Annotated[str, typer.Option("--split", help="train | val | test | all")] = "test",
    samples: Annotated[Optional[int], typer.Option(help="Monte-Carlo dropout samples (default eval.samples); "
                                                        "> 1 adds the coverage of the spread.")] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Draw the PNG figures.")] = True,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit the factor on the spread that gives the "
                                            "Gaussian coverage on this split (use --split val) and save it "
                                            "(RUN/calibration.json): predict and evaluate then use it.")] = False,
) -> None:
    """Relative L2 error per case, per variable and per time step, the VAE's reconstruction floor, the spread's
    coverage, figures (best / median / worst case, latent PCA / t-SNE, error per step)."""
    from fabml.surrogate.evaluation import evaluate as run_evaluate

    report = run_evaluate(run, split_name, samples=samples, figures=figures, calibrate=calibrate)
    rows = [["cases", report.n_cases], ["rel L2 mean", report.rel_l2_mean], ["rel L2 median", report.rel_l2_median],
            ["VAE floor (mean)", report.vae_floor_mean], ["coverage", report.coverage],
            ["inference ms/case", report.inference_ms_per_case]]
    print_table(["metric", "value"], rows, title=f"{report.split} split", digits=4)
    if report.calibration:
        c = report.calibration
        console.print(f"spread x {c['spread_scale']:.4g}: coverage of mean ± {c['sigma']:g} std "
                      f"{c['coverage_before']:.3f} -> {c['coverage_after']:.3f} on this split "
                      f"(target {c['target_coverage']:.3f}) -> {c['path']}")
    console.print(f"-> {report.metrics_path}, {report.per_case_path}")


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more trained runs (each trained with its own seed).")],
    out: Annotated[Path, typer.Option(help="Folder for the ensemble (ensemble.json).")],
) -> None:
    """Combine runs trained from different seeds into one surrogate: predict, evaluate and report take OUT as their
    --run; fields are the members' mean, the spread their disagreement."""
    from fabml.surrogate.ensemble import ENSEMBLE_FILE, make_ensemble

    made = make_ensemble(runs, out)
    s = made.shapes
    print_table(["member", "run", "seed", "trained"],
                [[k, str(d), m.cfg.seed, ", ".join(m.trained)] for k, (d, m) in enumerate(zip(made.member_dirs,
                                                                                             made.members))],
                title=f"ensemble of {len(made.members)}: {s.input_kind} inputs {s.input_shape} -> fields "
                      f"[T, M, V] = [{s.time_steps}, {s.nodes}, {s.variables}]")
    _print_notes(made.notes)
    console.print(f"-> {out / ENSEMBLE_FILE}")


@app.command()
def report(run: RunOpt) -> None:
    """Write an HTML page of the run: settings, training curves, evaluation figures (RUN/report/index.html)."""
    from fabml.surrogate.report import write_report

    console.print(f"-> {write_report(run)}")


@app.command("import-legacy")
def import_legacy(
    condition: Annotated[Path, typer.Argument(help="The seed's condition.txt.")],
    preset: Annotated[Optional[Path], typer.Argument(help="The seed's preset.txt (optional).")] = None,
    out: Annotated[Path, typer.Option(help="YAML config to write.")] = Path("surrogate.yaml"),
) -> None:
    """Turn the seed's text configs (condition.txt, preset.txt) into a YAML config; lists every key it could not map."""
    from fabml.config import save_config
    from fabml.surrogate.legacy import import_legacy as run_import

    result = run_import(condition, preset)
    save_config(result.config, out)
    print_table(["seed key", "fabml setting"], [[k, v] for k, v in result.mapped.items()], title="mapped")
    if result.unmapped:
        console.print(f"not mapped ({len(result.unmapped)}):")
        for line in result.unmapped:
            console.print(f"  {line}")
    console.print(f"-> {out}")


@app.command("import-darcy")
def import_darcy(
    pt_file: Annotated[Path, typer.Argument(help="neuraloperator's darcy_train_16.pt (or any darcy_*.pt).")],
    out: Annotated[Path, typer.Option(help="Folder for fields.npy and inputs/.")],
) -> None:
    """Convert neuraloperator's Darcy-flow .pt file into fields.npy [N, 1, R*R, 1] + a folder of R x R
    coefficient images, ready for `fabml surrogate train`."""
    from fabml.surrogate.darcy import import_darcy as run_import

    result = run_import(pt_file, out)
    console.print(f"{result.n_cases} cases at {result.resolution}x{result.resolution} -> {result.fields}, {result.inputs}")
    sets = " ".join(f"--set {item}" for item in result.overrides)
    console.print(f"train with: fabml surrogate train --data {result.fields} --inputs {result.inputs} {sets} --out RUN")
