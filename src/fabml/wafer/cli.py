"""``fabml wafer ...``: argument parsing and printing only; the work is in :mod:`fabml.wafer.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fabml.console import out as console
from fabml.console import print_table
from fabml.engine.distributed import is_main_process
from fabml.wafer.config import wafer_config

app = typer.Typer(help="Wafer-map patterns: BYOL embeddings, pattern families, similar maps, novelty, trend.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/wafer_*.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: --set train.epochs=5")]
RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run folder written by `fabml wafer train`.")]


def _split(source: str) -> str | list[str]:
    """``a.pkl,b.pkl`` -> a list of sources."""
    return source.split(",") if "," in source else source


@app.command()
def train(
    data: Annotated[str, typer.Option(help="Maps: pickle(s) (comma-separated), folder, file or synthetic:N[:seed].")],
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/wafer"),
    val: Annotated[Optional[str], typer.Option(help="Labelled validation maps: selects the best checkpoint by kNN macro accuracy.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the checkpoints in --out and start over.")] = False,
) -> None:
    """Train the BYOL wafer encoder (labels, if any, are not used). Runs under torchrun for DDP."""
    from fabml.wafer.pipeline import train as run_train

    cfg = wafer_config(config, set_, select_on_val=bool(val))
    result = run_train(cfg, _split(data), out, resume=resume, fresh=fresh, val_data=_split(val) if val else None)
    if is_main_process():
        console.print(f"trained {result.epochs_completed} epochs in {result.seconds:.0f} s "
                      f"({result.stopped_reason}); best {cfg.train.monitor} = {result.best_metric}")
        console.print(f"run folder: {out}")


def _run_config(run: Optional[Path], config: Optional[Path], set_: Optional[list[str]]):
    """The settings of a command that works on an existing run: the run's config.yaml <- --config <- --set."""
    return wafer_config(config, set_, base=Path(run) / "config.yaml" if run is not None else None)


@app.command()
def embed(
    data: Annotated[str, typer.Option(help="Maps to embed (the searchable, clusterable collection).")],
    run: Annotated[Optional[Path], typer.Option(
        "--run", "-r", help="learned / fused: the trained run. Baseline: the folder the embeddings belong to (a new folder "
        "becomes a model-free run that cluster/search/assign use; a trained run needs --out).")] = None,
    method: Annotated[str, typer.Option(
        help="learned (the run's encoder) | fused (the encoder joined with baseline.fuse_with at "
        "baseline.fusion_weight) | pca | raw | wu2015 (model-free baselines, fitted on --data).")] = "learned",
    out: Annotated[Optional[Path], typer.Option(help="Folder to write (default RUN/embeddings).")] = None,
    tta_d4: Annotated[Optional[bool], typer.Option("--tta-d4/--no-tta-d4", help="Average the 8 D4 views.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best | latest | path to a .pt (learned and fused)")] = "best",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Embed maps with a trained encoder or a baseline; writes embeddings, metadata and the similarity index.

    Settings: the run's config.yaml, then --config, then --set (e.g. --set baseline.raw_size=16).
    """
    from fabml.wafer.pipeline import embed as run_embed

    cfg = _run_config(run, config, set_)
    folder = run_embed(run, _split(data), tta_d4=tta_d4, checkpoint=checkpoint, method=method, out=out, cfg=cfg)
    console.print(f"{method} embeddings, meta.csv and index.faiss in {folder}")


@app.command()
def cluster(run: RunOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Group the embedded maps into pattern families (HDBSCAN); writes clusters.csv, a gallery and a trend.

    Settings: the run's config.yaml, then --config, then --set (e.g. --set cluster.min_cluster_size=50).
    """
    from fabml.wafer.pipeline import cluster as run_cluster

    cfg = _run_config(run, config, set_)
    result = run_cluster(run, cfg)
    sizes = result.table["cluster"].value_counts().sort_index()
    print_table(["cluster", "maps"], [["noise" if cid < 0 else cid, n] for cid, n in sizes.items()],
                title=f"{int(result.labels.max()) + 1} families")
    console.print(f"clusters.csv, gallery.png in {result.folder}")


@app.command()
def assign(
    run: RunOpt,
    data: Annotated[str, typer.Option(help="New maps to place in the known families.")],
    out: Annotated[Optional[Path], typer.Option(help="CSV to write (default RUN/clusters/assigned.csv).")] = None,
) -> None:
    """Score new maps: nearest family, novelty score and a novel flag (score > 1)."""
    from fabml.wafer.pipeline import assign as run_assign

    table = run_assign(run, _split(data), out)
    console.print(f"{int(table['is_novel'].sum())} of {len(table)} maps flagged novel")
    print_table([str(c) for c in table.columns], list(table.head(20).itertuples(index=False)))
    if len(table) > 20:
        console.print(f"(first 20 of {len(table)} rows; all in the CSV)")


@app.command()
def search(
    run: RunOpt,
    query: Annotated[str, typer.Option(help="A map file, or the id of an embedded map.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours to return.")] = 10,
    figure: Annotated[Optional[Path], typer.Option(help="PNG to write.")] = None,
) -> None:
    """Find the k embedded maps most similar to a query map."""
    from fabml.wafer.pipeline import search as run_search

    table, fig = run_search(run, query, k, figure)
    print_table([str(c) for c in table.columns], list(table.itertuples(index=False)), digits=4)
    console.print(f"figure: {fig}")


@app.command()
def evaluate(
    run: RunOpt,
    test: Annotated[str, typer.Option(help="Test maps; without labels the pseudo ground truth is used.")],
    reference: Annotated[Optional[str], typer.Option(help="Labelled reference maps (kNN memory, retrieval database).")] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline",
                                           help="Also evaluate the baselines of baseline.methods.")] = True,
    tta_d4: Annotated[bool, typer.Option("--tta-d4", help="Also evaluate test-time D4 averaging.")] = False,
    checkpoint: Annotated[str, typer.Option(help="best | latest | path to a .pt")] = "best",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """kNN macro accuracy, retrieval, clustering and D4 invariance of the encoder and the baselines; writes RUN/eval/.

    Settings: the run's config.yaml, then --config, then --set (e.g. --set eval.knn_k=10 --set
    baseline.methods=[pca,wu2015]); model.*, data.size and data.outline_channel stay the run's.
    """
    from fabml.wafer.evaluation import metrics_markdown
    from fabml.wafer.pipeline import evaluate as run_evaluate

    cfg = _run_config(run, config, set_)
    results = run_evaluate(run, _split(reference) if reference else None, _split(test), baseline=baseline,
                           tta_d4=tta_d4, checkpoint=checkpoint, cfg=cfg)
    console.print(metrics_markdown(results).rstrip("\n"))
    console.print(f"all figures: {Path(run) / 'eval' / 'metrics.json'}")


@app.command()
def ablation(
    data: Annotated[str, typer.Option(help="Training maps (labels unused).")],
    reference: Annotated[str, typer.Option(help="Labelled reference maps.")],
    test: Annotated[str, typer.Option(help="Labelled maps the runs are measured on (a validation set when the "
                                                "table chooses a setting).")],
    out: Annotated[Path, typer.Option(help="Folder for one run per combination.")] = Path("runs/wafer_ablation"),
    presets: Annotated[Optional[str], typer.Option(
        help="Comma-separated augmentation presets (none, d4, d4_crop, d4_crop_noise, full); default: all but none "
             "without --grid, the config's augmentation with --grid.")] = None,
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", help="A settings axis KEY=V1,V2,... (values as YAML); repeat for more axes.")] = None,
    val: Annotated[Optional[str], typer.Option(help="Labelled validation maps for checkpoint selection.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """One run per combination of augmentation presets and --grid settings, same settings otherwise; one table."""
    from fabml.config_grid import parse_grid
    from fabml.wafer.ablation_runner import TABLE_KEYS, ablation as run_ablation
    from fabml.wafer.evaluation import metrics_markdown

    cfg = wafer_config(config, set_, select_on_val=bool(val))
    axes = parse_grid(grid or [], example="data.size=32,64")
    results = run_ablation(cfg, _split(data), _split(reference), _split(test), out,
                           tuple(presets.split(",")) if presets else None, val_data=_split(val) if val else None,
                           axes=axes)
    console.print(metrics_markdown(results, TABLE_KEYS).rstrip("\n"))
    console.print(f"table: {out / 'ablation.md'}")


@app.command()
def report(
    run: RunOpt,
    projection: Annotated[str, typer.Option(help="auto | umap | tsne")] = "auto",
) -> None:
    """Write the figures and an HTML page for a run."""
    from fabml.wafer.report import report as run_report

    console.print(f"report: {run_report(run, projection=projection)}")
