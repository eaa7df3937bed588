"""The wafer run folder: where each step reads and writes, and how a trained run is loaded back.

The shared layout is :mod:`fabml.engine.runs`; the wafer job adds its step folders:

```
RUN/config.yaml  run.json  metrics.csv  checkpoints/{latest,best}.pt     (train)
RUN/model.pt                                        (train, at the end: the best checkpoint's weights)
RUN/embeddings/embeddings.npy  meta.csv  source.json  index.faiss       (embed)
RUN/clusters/clusters.csv  cluster_model.joblib  gallery.png  trend.*   (cluster)
RUN/eval/metrics.json  metrics.md  per_class.png                        (evaluate)
RUN/search/*.png                                                        (search)
RUN/report/index.html                                                   (report)
```
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fabml.config import load_config, to_dict
from fabml.data.wafer_dataset import WaferTensorDataset
from fabml.data.wafer_io import WaferMap, load_wafer_maps
from fabml.engine.checkpoint import load_checkpoint
from fabml.engine.runs import CONFIG, RunFolder, config_sections
from fabml.errors import DataError
from fabml.wafer.config import WaferConfig
from fabml.wafer.baselines import build_baseline
from fabml.wafer.method import AUX_FEATURES, BYOLMethod

JOB = "wafer"
META_COLUMNS = ("id", "lot", "date", "label", "source")


def build_method(cfg: WaferConfig) -> BYOLMethod:
    """The BYOL method for a config; the encoder's input channels follow ``data.outline_channel``."""
    encoder_cfg = replace(cfg.model, in_chans=2 if cfg.data.outline_channel else 1)
    aux = cfg.byol.aux_features
    aux_dim = build_baseline(aux, cfg.baseline).dim if aux in AUX_FEATURES else 0
    return BYOLMethod(encoder_cfg, cfg.byol, cfg.augment, outline_channel=cfg.data.outline_channel, aux_dim=aux_dim)


def is_legacy_run(path: Path) -> bool:
    """A wafer run written before run.json named its job: a config.yaml of wafer settings (it has ``byol``)."""
    sections = config_sections(path)
    return sections is not None and "byol" in sections and sections <= {f.name for f in fields(WaferConfig)}


def open_run(run_dir: str | Path) -> RunFolder:
    """The wafer run in ``run_dir`` (old runs without a job in run.json included); one-line error otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir / CONFIG} not found: train first with `fabml wafer train --out {run_dir}`")
    return RunFolder.open(run_dir, JOB, legacy=is_legacy_run, command="fabml wafer train --data ... --out")


def save_model(run: RunFolder, cfg: WaferConfig) -> Path | None:
    """Write ``RUN/model.pt`` from the best checkpoint (the latest one when no epoch improved the monitor).

    Holds ``{"method": BYOL state_dict, "checkpoint": "best"|"latest", "epoch": E, "config": {...}}``; main
    process only (None elsewhere, or when the run has no checkpoint).
    """
    source = run.best_checkpoint if run.best_checkpoint.is_file() else run.latest_checkpoint
    if not source.is_file():
        return None
    ckpt = load_checkpoint(source, map_location="cpu")
    return run.save_artefact({"method": ckpt["method"], "checkpoint": source.stem, "epoch": int(ckpt.get("epoch", 0)),
                              "config": to_dict(cfg)})


def load_trained(run_dir: Path, checkpoint: str = "best") -> tuple[WaferConfig, BYOLMethod]:
    """Config and trained method of a run.

    ``checkpoint``: ``best`` = ``RUN/model.pt`` (written when training ends; an old or interrupted run falls back
    to ``checkpoints/best.pt``, then ``latest.pt``), ``latest`` = ``checkpoints/latest.pt``, or a ``.pt`` path.
    """
    run = open_run(run_dir)
    if not run.config_path.is_file():
        raise DataError(f"{run.config_path} not found: train first with `fabml wafer train --out {run.root}`")
    cfg = load_config(WaferConfig, run.config_path)
    if checkpoint.endswith(".pt"):
        state = load_checkpoint(Path(checkpoint), map_location="cpu")
    elif checkpoint == "best" and run.has_artefact():
        state = run.load_artefact()
    elif checkpoint in ("best", "latest"):
        path = run.checkpoints / f"{checkpoint}.pt"
        if not path.is_file() and checkpoint == "best":
            path = run.latest_checkpoint
        state = load_checkpoint(path, map_location="cpu")
    else:
        raise DataError(f"--checkpoint {checkpoint!r} is unknown: use best, latest or the path of a .pt file")
    method = build_method(cfg)
    method.load_state_dict(state["method"])
    return cfg, method.eval()


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``fabml info`` shows for a wafer run (from config.yaml as a dict)."""
    model, data, train = (config.get(k) or {} for k in ("model", "data", "train"))
    return {"encoder": model.get("preset"), "map size": data.get("size"), "outline channel": data.get("outline_channel"),
            "epochs": train.get("epochs"), "batch size": train.get("batch_size"), "lr": train.get("lr"),
            "monitor": train.get("monitor")}


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
    folder = open_run(run_dir).sub("embeddings")
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
