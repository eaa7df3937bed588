"""The retrieval part of ``fabml demo``: generated shape images, the whole job in a few CPU minutes.

Seven classes of coloured shapes with object IDs are generated; six are the known classes (listed in
``data.class_names``), the seventh arrives later: first it is called ``unknown``, then half of its objects
are added to the index with ``index --add`` (no retraining) and the other half is recognised.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from fabml.config import load_config
from fabml.console import out as results_console
from fabml.data.synthetic_shapes import SHAPES, make_shape_set
from fabml.retrieval.config import RetrievalConfig

# A CPU recipe like configs/retrieval_cpu.yaml, smaller: the bundled pretrained EfficientNet-Lite0 at 64 px, 2 frozen
# warm-up epochs, then 4 epochs of the whole network (backbone at a tenth of the rate, margin ramped over 2 epochs).
# The best epoch is chosen by validation MAP@R: on this easy generated set Recall@1 is 1.0 from the first epoch on,
# so it cannot tell epochs apart.
DEMO_OVERRIDES = [
    "data.image_size=64", "data.min_image_size=32", "model.embedding_dim=128", "model.warmup_epochs=2",
    "model.backbone_lr_scale=0.1", "model.margin_ramp_epochs=2", "train.monitor=val_map_at_r",
    "train.epochs=6", "train.lr=1e-3", "train.t0_epochs=0", "train.t_mult=1", "train.num_workers=0",
    "train.early_stop_patience=0", "sampler.samples_per_class=4", "eval.top_k=10", "eval.heldout_class_fraction=0.34",
]
NEW_CLASS = "diamond"  # generated with the others, indexed only later


def run_demo(out: Path, epochs: int = 6, console: Console | None = None) -> dict[str, Path]:
    """Generate the images, then split, train, index, evaluate, predict, add a class, predict again, export."""
    from fabml.retrieval.pipeline import build_index, evaluate, export, predict, split, train

    console = console or results_console
    out = Path(out)
    start = time.perf_counter()
    data = make_shape_set(out / "data", n_classes=7, ids_per_class=10, images_per_id=3, size=64, seed=0)
    new_class = NEW_CLASS
    known = [name for name in SHAPES[:7] if name != new_class]
    overrides = DEMO_OVERRIDES + [f"train.epochs={int(epochs)}", f"data.root={data.resolve()}",
                                  "data.class_names=[" + ",".join(known) + "]"]
    cfg = load_config(RetrievalConfig, None, overrides)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)  # the demo always starts over
    console.print("== fabml demo: retrieval-based classification on generated shape images ==")
    report = split(cfg, run)
    console.print(f"split by object ID: {report.split.summary()}")
    trained = train(cfg, run, fresh=True)
    result = trained.result
    console.print(f"trained {result.epochs_completed} epochs in {result.seconds:.0f} s; best {cfg.train.monitor} "
                  f"{result.best_metric:.3f} (epoch {result.best_epoch})")
    indexed = build_index(run)
    thr = indexed.threshold
    console.print(f"index: {indexed.n_references} references; unknown below similarity {thr.threshold:.3f} "
                  f"({thr.method} {thr.target:g})" if thr else f"index: {indexed.n_references} references")
    evaluation = evaluate(run, "test")
    m = evaluation.metrics
    console.print(f"test split: Recall@1 {m['recall_at_1']:.3f}, Recall@5 {m['recall_at_5']:.3f}, MAP@R "
                  f"{m['map_at_r']:.3f}, top-1 nearest {m['top1_nn']:.3f}, top-1 weighted vote {m['top1_vote']:.3f}")
    # the new class: half of its objects become references, the other half are queries
    files = sorted((data / new_class).glob("*.png"))
    objects = sorted({f.name.rsplit("_", 1)[0] for f in files})
    first = set(objects[: len(objects) // 2])
    refs_dir, queries_dir = out / "new_references" / new_class, out / "new_queries"
    for folder in (refs_dir, queries_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, (refs_dir if f.name.rsplit("_", 1)[0] in first else queries_dir) / f.name)
    before = predict(run, [queries_dir], out / "predictions_before_add")
    console.print(f"new class '{new_class}' before it is indexed: {int(before.table['unknown'].sum())} of "
                  f"{len(before.table)} images called unknown")
    added = build_index(run, add=refs_dir.parent)
    after = predict(run, [queries_dir], out / "predictions_after_add")
    console.print(f"added {added.added} '{new_class}' references without retraining; now "
                  f"{int((after.table['predicted'] == new_class).sum())} of {len(after.table)} are called '{new_class}'")
    exported = export(run)
    console.print(f"ONNX export: max |ONNX - torch| embedding difference {exported.max_diff:.1e}")
    paths = {"run": run, "metrics": evaluation.out_dir / "metrics.json", "gallery": evaluation.out_dir / "gallery.png",
             "confusion": evaluation.out_dir / "confusion.png",
             "predictions": out / "predictions_after_add" / "predictions.csv", "onnx": exported.path}
    console.print(f"done in {time.perf_counter() - start:.0f} s. Outputs:")
    for name, path in paths.items():
        console.print(f"  {name:11s} {path}")
    return paths
