"""The retrieval run folder: where each step reads and writes, and how a trained run is loaded back.

The shared layout is :mod:`fabml.engine.runs`; the retrieval job adds its step folders:

```
RUN/config.yaml  run.json                                   (split, train: the run's settings)
RUN/splits/train.csv  val.csv  test.csv  classes.txt        (split: ID-grouped, reused by every later step)
RUN/checkpoints/{latest,best}.pt  metrics.csv                (train)
RUN/model.pt                                                (train, at the end: the best checkpoint's model)
RUN/index/index.faiss(.json)  references.csv  threshold.json (index: references, the calibrated unknown threshold)
RUN/evaluation/metrics.json  per_class.csv  confusion.png  gallery.png   (evaluate; evaluation/<split>/...)
RUN/predictions/predictions.csv  neighbours.csv              (predict)
RUN/model.onnx  model.parity.json                           (export)
```

``model.pt`` holds ``{"job": "retrieval", "format": 1, "model": RetrievalModel state dict (fp32, CPU),
"classes": [...], "checkpoint": "best"|"latest", "epoch": E, "config": {...}}``: the whole model (backbone,
neck, ArcFace head), whatever GPU or precision trained it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fabml.config import from_dict, load_config, to_dict
from fabml.engine.checkpoint import load_checkpoint
from fabml.engine.runs import RunFolder
from fabml.errors import ConfigError, DataError
from fabml.retrieval.config import RetrievalConfig

JOB = "retrieval"
SPLITS = "splits"
INDEX = "index"
INDEX_FILE = "index.faiss"
REFERENCES = "references.csv"
THRESHOLD = "threshold.json"
EVALUATION = "evaluation"
PREDICTIONS = "predictions"
METHOD_PREFIX = "model."  # RetrievalMethod keeps the RetrievalModel as .model


def build_method(cfg: RetrievalConfig, num_classes: int | None = None):
    """The retrieval method (random weights) for ``num_classes`` classes (default: ``data.class_names``)."""
    from fabml.retrieval.method import build_method as build

    n = int(num_classes if num_classes is not None else len(cfg.data.class_names))
    if n < 1:
        raise ConfigError("the retrieval method needs the number of classes: pass num_classes or set data.class_names")
    return build(cfg, n)


def is_legacy_run(path: Path) -> bool:
    """No retrieval run predates run.json naming its job."""
    return False


def open_run(run_dir: str | Path) -> RunFolder:
    """The retrieval run in ``run_dir``; one-line error otherwise."""
    return RunFolder.open(run_dir, JOB, legacy=is_legacy_run, command="fabml retrieval train --data DIR --out")


def run_config(run_dir: str | Path) -> RetrievalConfig:
    """``RUN/config.yaml`` of a retrieval run."""
    run = open_run(run_dir)
    if not run.config_path.is_file():
        raise DataError(f"{run.config_path} not found: start the run with `fabml retrieval split` or `train --out {run.root}`")
    return load_config(RetrievalConfig, run.config_path)


def model_state(method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The RetrievalModel part of a method state dict (keys without the ``model.`` prefix), fp32 on the CPU."""
    return {k[len(METHOD_PREFIX):]: (v.float() if v.is_floating_point() else v).cpu()
            for k, v in method_state.items() if k.startswith(METHOD_PREFIX)}


def save_model(run: RunFolder, cfg: RetrievalConfig, classes: list[str]) -> Path | None:
    """Write ``RUN/model.pt`` from the best checkpoint (the latest when no epoch improved the monitor);
    main process only (None elsewhere, or when the run has no checkpoint)."""
    source = run.best_checkpoint if run.best_checkpoint.is_file() else run.latest_checkpoint
    if not source.is_file():
        return None
    ckpt = load_checkpoint(source, map_location="cpu")
    return run.save_artefact({"model": model_state(ckpt["method"]), "classes": list(classes),
                              "checkpoint": source.stem, "epoch": int(ckpt.get("epoch", 0)), "config": to_dict(cfg)})


def load_trained(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[RetrievalConfig, Any, list[str]]:
    """``(config, RetrievalModel in eval mode on device, training classes)`` of a trained run (from ``model.pt``;
    the weights come from the run, no pretrained file is looked for)."""
    from fabml.retrieval.model import RetrievalModel

    run = open_run(run_dir)
    if not run.has_artefact():
        raise DataError(f"{run.artefact_path} not found: train first with `fabml retrieval train --out {run.root}`")
    state = run.load_artefact()
    cfg = from_dict(RetrievalConfig, state["config"])
    classes = [str(c) for c in state["classes"]]
    model = RetrievalModel(replace(cfg.model, pretrained=False), len(classes))
    model.load_state_dict(state["model"])
    return cfg, model.to(device).eval(), classes


def load_artefact(run_dir: str | Path) -> tuple[RetrievalConfig, Any, list[str]]:
    """The job table's loader: :func:`load_trained` on the CPU."""
    return load_trained(run_dir, "cpu")


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``fabml info`` shows for a retrieval run (from config.yaml as a dict)."""
    model, data, train, sampler = (config.get(k) or {} for k in ("model", "data", "train", "sampler"))
    return {"backbone": model.get("backbone"), "embedding dim": model.get("embedding_dim"),
            "image size": data.get("image_size"), "data": data.get("root") or data.get("list_file"),
            "P x K": f"{sampler.get('num_classes_per_batch') or 'all'} x {sampler.get('samples_per_class')}"
            if sampler else None, "epochs": train.get("epochs"), "lr": train.get("lr")}
