"""Figures (PNG) and the HTML report for fabml runs.

Drawing uses :class:`matplotlib.figure.Figure` directly, never pyplot, so it works
under any backend and from threads. Each ``plot_*`` writes one PNG and returns its path.
"""

from fabml.viz.plots import (
    plot_embedding_scatter,
    plot_per_class_bars,
    plot_training_curves,
    plot_trend,
)
from fabml.viz.report import ReportSection, write_html_report
from fabml.viz.style import category_colors
from fabml.viz.wafer import (
    plot_cluster_gallery,
    plot_search_results,
    plot_wafer_grid,
    render_wafer,
)

__all__ = [
    "ReportSection",
    "category_colors",
    "plot_cluster_gallery",
    "plot_embedding_scatter",
    "plot_per_class_bars",
    "plot_search_results",
    "plot_training_curves",
    "plot_trend",
    "plot_wafer_grid",
    "render_wafer",
    "write_html_report",
]
