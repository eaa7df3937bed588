"""``fabml demo``: the whole wafer job on generated maps, a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from fabml.console import out as results_console
from fabml.config import load_config
from fabml.errors import ConfigError
from fabml.wafer.config import WaferConfig

# The CPU recipe of configs/wafer_cpu.yaml, shortened: a small encoder with the strided stem on 64x64 maps, one
# attention block, embeddings averaged over the D4 orbit. Measured on these maps (3,000 train / 600 test, 10 epochs):
# kNN macro accuracy 0.85 (0.58 with the earlier 32x32 input: the pattern detail was lost in the resize).
# byol.aux_features=wu2015 as in the CPU recipe: on generated validation maps (synthetic:600:5, not the demo's test
# seed) 0.876 with it against 0.828 without; the Wu 2015 features alone reach 0.967 on these maps.
# eval.whiten_dim=128 (fabml.wafer.whitening): chosen on the same validation maps with this recipe's run, 0.869
# unwhitened, 0.888 / 0.904 whitened to 64 / 128 directions (the embedding has 256).
DEMO_OVERRIDES = [
    "data.size=64", "model.preset=small", "model.stem=imagenet", "model.radial_channel=true", "model.attention=true",
    "train.batch_size=128", "train.lr=1e-3", "train.num_workers=0", "byol.tau_start=0.99", "byol.aux_features=wu2015",
    "eval.tta_d4=true", "eval.whiten_dim=128",
    "cluster.min_cluster_size=30", "eval.d4_maps=300",
]


def comparison_line(results: dict[str, dict]) -> str:
    """One line: the kNN macro accuracy of the learned embedding (``learned`` when evaluated, i.e. whitened,
    else the D4-averaged or raw encoder), the fused one (when evaluated) and every baseline, and which is best
    with the ``embed`` command that makes it."""
    averaged = "byol_tta_d4" in results
    key = "learned" if "learned" in results else "byol_tta_d4" if averaged else "byol"
    learned = results[key]["knn_macro_acc"]
    how = "".join([", D4-averaged" if averaged else "", ", whitened" if key == "learned" else ""])
    line = f"kNN macro accuracy on unseen maps: learned (BYOL{how}) {learned:.3f}"
    scores = {"learned": learned}
    if "fused" in results:
        scores["fused"] = results["fused"]["knn_macro_acc"]
        line += f" | fused (learned + baseline) {scores['fused']:.3f}"
    bases = {name.removeprefix("baseline_"): r["knn_macro_acc"] for name, r in results.items()
             if name.startswith("baseline_")}
    if bases:
        line += " | baselines " + ", ".join(f"{name} {acc:.3f}" for name, acc in bases.items())
    if len(scores) + len(bases) > 1:
        scores |= bases
        best = max(scores, key=scores.get)
        line += " | learned is best" if best == "learned" else f" | best: {best} (fabml wafer embed --method {best})"
    return line


def run_demo(out: Path, n_maps: int = 3000, epochs: int = 10, console: Console | None = None) -> dict[str, Path]:
    """Train on ``n_maps`` generated maps, then embed, cluster, search, evaluate and report.

    Returns the paths of the main outputs. Re-running starts the training over (``--fresh``).
    """
    from fabml.wafer.pipeline import cluster, embed, evaluate, search, train
    from fabml.wafer.report import report

    console = console or results_console
    out = Path(out)
    start = time.perf_counter()
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be >= 1")
    # one warm-up epoch, or a quarter of a shorter run (the warm-up must end inside the one cosine cycle)
    warmup = f"train.warmup_epochs={min(1.0, epochs / 4)}"
    cfg = load_config(WaferConfig, None, DEMO_OVERRIDES + [f"train.epochs={epochs}", warmup])
    data = f"synthetic:{n_maps}:0"
    test = f"synthetic:{max(n_maps // 5, 200)}:1"
    console.print("== fabml demo: wafer-map patterns on generated maps ==")
    console.print(f"training BYOL ({cfg.model.preset} encoder, {cfg.data.size}x{cfg.data.size}) on {n_maps} maps, {epochs} epochs")
    train(cfg, data, out, fresh=True)
    embed(out, data)
    result = cluster(out)
    console.print(f"{int(result.labels.max()) + 1} pattern families, noise ratio {(result.labels < 0).mean():.2f}")
    query_id = str(result.table["id"].iloc[0])
    table, figure = search(out, query_id, k=8)
    console.print(f"maps most like {query_id} ({result.table['label'].iloc[0]}): "
                  + ", ".join(f"{r.id} {r.label} {r.similarity:.2f}" for r in table.itertuples()))
    results = evaluate(out, data, test, baseline=True, tta_d4=True)
    console.print(comparison_line(results))
    html = report(out)
    paths = {"run": out, "report": html, "clusters": out / "clusters" / "clusters.csv", "search": figure,
             "metrics": out / "eval" / "metrics.json"}
    console.print(f"done in {time.perf_counter() - start:.0f} s. Outputs:")
    for name, path in paths.items():
        console.print(f"  {name:9s} {path}")
    return paths
