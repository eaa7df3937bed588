"""The wafer run folder: where each step reads and writes, and how a trained run is loaded back.

```
RUN/config.yaml  run.json  metrics.csv  checkpoints/{latest,best}.pt     (train)
RUN/embeddings/embeddings.npy  meta.csv  source.json  index.faiss       (embed)
RUN/clusters/clusters.csv  cluster_model.joblib  gallery.png  trend.*   (cluster)
RUN/eval/metrics.json  metrics.md  per_class.png                        (evaluate)
RUN/search/*.png                                                        (search)
RUN/report/index.html                                                   (report)
```
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fabml.config import load_config
from fabml.data.wafer_dataset import WaferTensorDataset
from fabml.data.wafer_io import WaferMap, load_wafer_maps
from fabml.engine.checkpoint import load_checkpoint
from fabml.errors import DataError
from fabml.wafer.config import WaferConfig
from fabml.wafer.method import BYOLMethod

META_COLUMNS = ("id", "lot", "date", "label", "source")


def build_method(cfg: WaferConfig) -> BYOLMethod:
    """The BYOL method for a config; the encoder's input channels follow ``data.outline_channel``."""
    encoder_cfg = replace(cfg.model, in_chans=2 if cfg.data.outline_channel else 1)
    return BYOLMethod(encoder_cfg, cfg.byol, cfg.augment, outline_channel=cfg.data.outline_channel)


def load_trained(run_dir: Path, checkpoint: str = "best") -> tuple[WaferConfig, BYOLMethod]:
    """Config and trained method of a run (``checkpoint`` = best | latest | a .pt path)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{config_path} not found: train first with `fabml wafer train --out {run_dir}`")
    cfg = load_config(WaferConfig, config_path)
    path = Path(checkpoint) if checkpoint.endswith(".pt") else run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file() and checkpoint == "best":
        path = run_dir / "checkpoints" / "latest.pt"
    method = build_method(cfg)
    method.load_state_dict(load_checkpoint(path, map_location="cpu")["method"])
    return cfg, method.eval()


def meta_frame(dataset: WaferTensorDataset) -> pd.DataFrame:
    """One row per map of a dataset: the metadata columns plus the die-grid shape."""
    rows = []
    for meta, (n_rows, n_cols) in zip(dataset.meta, dataset.shapes):
        row = {key: meta.get(key) for key in META_COLUMNS}
        row["rows"], row["cols"] = n_rows, n_cols
        rows.append(row)
    return pd.DataFrame(rows)


def write_embeddings(out_dir: Path, emb: np.ndarray, dataset: WaferTensorDataset, source: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings.npy", emb)
    meta_frame(dataset).to_csv(out_dir / "meta.csv", index=False)
    (out_dir / "source.json").write_text(json.dumps({"source": source}))


def read_embeddings(run_dir: Path) -> tuple[np.ndarray, pd.DataFrame, str]:
    """(embeddings [N,D], metadata frame, data source) written by ``embed``."""
    folder = Path(run_dir) / "embeddings"
    if not (folder / "embeddings.npy").is_file():
        raise DataError(f"{folder / 'embeddings.npy'} not found: run `fabml wafer embed --run {run_dir} --data ...` first")
    meta = pd.read_csv(folder / "meta.csv", dtype={"id": str, "lot": str, "label": str, "date": str}, keep_default_na=False)
    meta = meta.replace({"": None})
    source = json.loads((folder / "source.json").read_text())["source"]
    return np.load(folder / "embeddings.npy"), meta, source


def reload_maps(source: str, ids: list[str]) -> dict[str, WaferMap]:
    """Reload the maps of an embedded source, keyed by id (for galleries and search figures)."""
    wanted = set(ids)
    return {m.meta["id"]: m for m in load_wafer_maps(source) if m.meta["id"] in wanted}
