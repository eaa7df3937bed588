"""``fabml retrieval ...``: argument parsing and printing only; the work is in :mod:`fabml.retrieval.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fabml.console import out as console
from fabml.console import print_table

app = typer.Typer(help="Retrieval-based classification: ArcFace embeddings, a vector index, Recall@k, open-set predict.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the run's config.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: --set train.epochs=5")]
RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run folder written by `fabml retrieval train`.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Class folders: DATA/<class>/<ID>_<seq>.<ext>.")]
ListOpt = Annotated[Optional[Path], typer.Option("--list", help="List file: 'path, label[, id]' lines.")]
SkipOpt = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images (listed) instead of stopping.")]


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(f"note: {note}")


@app.command()
def split(
    out: Annotated[Path, typer.Option(help="Run folder (the split goes to RUN/splits).")],
    data: DataOpt = None,
    list_file: ListOpt = None,
    skip_bad: SkipOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Split the images by object ID into train/val/test (stratified by class, seeded); reused by every later step."""
    from fabml.retrieval.pipeline import make_config, split as run_split

    cfg = make_config(out, config, set_, data, list_file, skip_bad)
    report = run_split(cfg, out, config, set_)
    counts = report.counts
    print_table(["class", "train", "val", "test"], counts.values.tolist())
    console.print(report.split.summary())
    _print_notes(report.split.notes)
    console.print(f"split files in {report.folder}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder.")],
    data: DataOpt = None,
    list_file: ListOpt = None,
    skip_bad: SkipOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out with changed settings.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the checkpoints in --out and start over.")] = False,
) -> None:
    """Train the embedding model (ArcFace, P×K batches; splits first if the run has no split). Running it
    again on the same folder continues the run. Runs under torchrun for DDP."""
    from fabml.engine.distributed import is_main_process
    from fabml.retrieval.pipeline import make_config, train as run_train

    cfg = make_config(out, config, set_, data, list_file, skip_bad)
    report = run_train(cfg, out, fresh=fresh, resume=resume, config_file=config, overrides=set_)
    if not is_main_process():
        return
    console.print(report.split.summary())
    _print_notes(report.split.notes)
    result = report.result
    console.print(f"trained {result.epochs_completed} epochs in {result.seconds:.0f} s ({result.stopped_reason}); "
                  f"best {cfg.train.monitor} = {result.best_metric} (epoch {result.best_epoch})")
    console.print(f"model: {report.model_path}")


@app.command()
def index(
    run: RunOpt,
    add: Annotated[Optional[Path], typer.Option(help="Add these images (class folders, or one class folder) "
                                                     "to the existing index, without retraining.")] = None,
) -> None:
    """Embed the train split into the run's vector index and calibrate the unknown threshold on the val split."""
    from fabml.retrieval.pipeline import build_index

    report = build_index(run, add)
    if add is not None:
        console.print(f"added {report.added} references ({len(report.skipped)} already in the index); "
                      f"new classes: {', '.join(report.new_classes) or 'none'}; {report.n_references} references")
    else:
        console.print(f"{report.n_references} references of {len(report.new_classes)} classes")
    thr = report.threshold
    if thr is not None:
        rates = ""
        if thr.achieved_far is not None:
            rates = f"false-accept rate {thr.achieved_far:.3f} on {thr.n_impostor} held-out-class queries, "
        console.print(f"unknown threshold ({thr.method} {thr.target:g}): similarity < {thr.threshold:.4f} "
                      f"({rates}true-accept rate {thr.true_accept_rate:.3f} on {thr.n_genuine} known-class queries)")
    _print_notes(report.notes)
    console.print(f"index in {report.folder}")


@app.command()
def evaluate(
    run: RunOpt,
    split_name: Annotated[str, typer.Option("--split", help="val | test")] = "test",
    data: Annotated[Optional[Path], typer.Option("--data", help="Evaluate these class folders instead of a split.")] = None,
    list_file: Annotated[Optional[Path], typer.Option("--list", help="Evaluate the images of this list file instead.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/evaluation/SPLIT).")] = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write confusion.png and gallery.png.")] = True,
) -> None:
    """Recall@k, Precision@k, MAP@R, top-1 (nearest neighbour, weighted vote), per class; queries of a split
    (or of other labelled images: --data / --list) against the index."""
    from fabml.retrieval.pipeline import evaluate as run_evaluate

    report = run_evaluate(run, split_name, out, figures=figures, data=data, list_file=list_file)
    split_name = report.split
    print_table(["metric", "value"], [[k, v] for k, v in report.metrics.items()], title=f"{split_name} split")
    if report.unknown:
        console.print(f"called unknown at the calibrated threshold: {report.unknown['rejected_share']:.3f} of the "
                      f"{split_name} images (all of known classes)")
    _print_notes(report.notes)
    console.print(f"-> {report.out_dir / 'metrics.json'}")


@app.command()
def predict(
    run: RunOpt,
    inputs: Annotated[list[str], typer.Argument(help="Image files and/or folders of images.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/predictions).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="References per image (default eval.top_k).")] = None,
) -> None:
    """The nearest references of each image with similarities, its class, or `unknown`; writes predictions.csv."""
    from fabml.retrieval.pipeline import predict as run_predict

    result = run_predict(run, inputs, out, top_k)
    table = result.table
    print_table(["image", "predicted", "best similarity", "nearest class"],
                [[Path(r.path).name, r.predicted, r.best_similarity, r.nearest_class]
                 for r in table.head(20).itertuples()], digits=4)
    if len(table) > 20:
        console.print(f"(first 20 of {len(table)} images; all in predictions.csv)")
    console.print(f"{len(table)} images, {int(table['unknown'].sum())} unknown -> {result.out_dir / 'predictions.csv'}")


@app.command()
def export(
    run: RunOpt,
    out: Annotated[Optional[Path], typer.Option(help="ONNX file (default RUN/model.onnx).")] = None,
    samples: Annotated[int, typer.Option(help="Images used for the torch/ONNX parity check.")] = 4,
    tolerance: Annotated[float, typer.Option(help="Largest allowed torch/ONNX difference.")] = 1e-4,
) -> None:
    """Write one ONNX file of the embedding model (resize and scaling inside) and check its parity."""
    from fabml.retrieval.pipeline import export as run_export

    report = run_export(run, out, samples, tolerance)
    console.print(f"wrote {report.path}")
    console.print(f"max |ONNX - torch| embedding difference {report.max_diff:.2e} on {report.n_images} images "
                  f"-> {report.parity}")
