"""Reading wafer maps for the job's steps: a source as a tensor dataset, its labels and its die-grid shapes."""

from __future__ import annotations

from fabml.data.wafer_dataset import WaferTensorDataset
from fabml.data.wafer_io import load_wafer_maps
from fabml.errors import DataError
from fabml.wafer.config import WaferConfig


def load_dataset(source: str | list[str], cfg: WaferConfig, limit: int | None = None) -> WaferTensorDataset:
    """Read maps from ``source`` (file, folder, pickles, ``synthetic:N[:seed]``) as a tensor dataset."""
    limit = limit if limit is not None else (cfg.data.limit or None)
    maps = load_wafer_maps(source, limit=limit, label_separator=cfg.eval.label_separator)
    return WaferTensorDataset(maps, cfg.data.size)


def grid_shapes(dataset: WaferTensorDataset) -> list[str]:
    """Die-grid shape of each map as ``"ROWSxCOLS"`` (for the outline-shortcut check)."""
    return [f"{r}x{c}" for r, c in dataset.shapes]


def map_labels(metas: list[dict], what: str) -> list[str]:
    labels = [m.get("label") for m in metas]
    if any(label is None for label in labels):
        missing = sum(label is None for label in labels)
        raise DataError(f"{what}: {missing} of {len(labels)} maps have no label; this step needs labelled maps")
    return [str(label) for label in labels]
