"""``fabml wafer report``: the run's figures and one HTML page that shows them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fabml.viz import ReportSection, plot_embedding_scatter, plot_training_curves, write_html_report
from fabml.wafer.runs import open_run, read_embeddings


def project_2d(emb: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``emb [N,D]`` for a scatter plot: UMAP when installed (``auto``), else t-SNE."""
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                from fabml.errors import ConfigError

                raise ConfigError("UMAP is not installed: pip install 'fabml[umap]' or use --projection tsne") from None
        else:
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=15, n_jobs=1)
            return reducer.fit_transform(emb), "UMAP (cosine)"
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(5, len(emb) // 10)))
    return TSNE(2, metric="cosine", init="pca", random_state=seed, perplexity=perplexity).fit_transform(emb), "t-SNE (cosine)"


def _table_from_json(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    from fabml.wafer.evaluation import metric_keys

    results = json.loads(path.read_text())
    return [{"metric": key, **{name: res.get(key) for name, res in results.items()}} for key in metric_keys(results)]


def report(run_dir: Path, max_points: int = 5000, projection: str = "auto") -> Path:
    """Write ``RUN/report/index.html`` with training curves (drawn into ``RUN/figures/``), embedding scatters,
    galleries, trend and metrics."""
    run = open_run(run_dir)
    run_dir = run.root
    out = run.sub("report")
    out.mkdir(parents=True, exist_ok=True)
    sections: list[ReportSection] = []
    if run.metrics_path.is_file():
        run.figures.mkdir(parents=True, exist_ok=True)
        curves = plot_training_curves(run.metrics_path, run.figures / "training_curves.png")
        sections.append(ReportSection("Training", "Per-epoch loss, learning rate and collapse monitor.", images=[curves]))
    emb, meta, _ = read_embeddings(run_dir)
    clusters_csv = run_dir / "clusters" / "clusters.csv"
    table = pd.read_csv(clusters_csv, dtype={"id": str}) if clusters_csv.is_file() else None
    pick = np.random.default_rng(0).permutation(len(emb))[:max_points]
    xy, how = project_2d(emb[pick], projection)
    images = []
    if table is not None:
        images.append(plot_embedding_scatter(xy, table["cluster"].to_numpy()[pick], out / "scatter_clusters.png",
                                             title=f"{how}, coloured by cluster", label_name="cluster"))
    if meta["label"].notna().any():
        labels = meta["label"].fillna("unlabelled").to_numpy()[pick]
        images.append(plot_embedding_scatter(xy, labels, out / "scatter_labels.png",
                                             title=f"{how}, coloured by label", label_name="label"))
    sections.append(ReportSection("Embedding map", f"{len(pick)} of {len(emb)} maps, {how} of the encoder embeddings.",
                                  images=images))
    if table is not None:
        summary = json.loads((run_dir / "clusters" / "summary.json").read_text())
        rows = summary.get("clusters", [])
        text = (f"{summary['n_clusters']} clusters, noise ratio {summary['noise_ratio']:.3f} "
                f"(HDBSCAN settings: {summary['settings']}).")
        sections.append(ReportSection("Pattern families", text, table=rows, images=[run_dir / "clusters" / "gallery.png"]))
        if "is_novel" in table:
            novel = table[table["is_novel"] == True]  # noqa: E712 (pandas column)
            sections.append(ReportSection("Novelty", f"{len(novel)} of {len(table)} maps lie farther from their nearest "
                                          "family centre than 95% of that family's own members.",
                                          table=novel.sort_values("novelty_score", ascending=False).head(20).to_dict("records")))
        if (run_dir / "clusters" / "trend.png").is_file():
            sections.append(ReportSection("Trend", "Share of each family per week.", images=[run_dir / "clusters" / "trend.png"]))
    metrics = _table_from_json(run_dir / "eval" / "metrics.json")
    if metrics:
        sections.append(ReportSection("Evaluation", "See eval/metrics.json for every figure.", table=metrics,
                                      images=sorted((run_dir / "eval").glob("per_class_*.png"))))
    searches = sorted((run_dir / "search").glob("*.png")) if (run_dir / "search").is_dir() else []
    if searches:
        sections.append(ReportSection("Similar-map searches", images=searches))
    return write_html_report(out / "index.html", f"fabml wafer report: {run_dir.name}", sections)
