"""The ``embed`` step and the embed function behind a run's embeddings.

``embed`` writes ``RUN/embeddings`` (or ``--out``): embeddings.npy, meta.csv, source.json, index.faiss and
embedder.json, which names the method that made them (``learned``, ``fused`` or a baseline) so that
:func:`query_embedder` embeds new maps (``search``, ``assign``) exactly the same way; whitening.joblib when the
learned embedding is whitened (``eval.whiten_dim``, :mod:`fabml.wafer.whitening`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from fabml.config import load_config, to_dict
from fabml.data.wafer_dataset import WaferTensorDataset
from fabml.engine.hardware import resolve_device
from fabml.engine.runs import RunFolder
from fabml.errors import ConfigError, DataError
from fabml.index import VectorIndex
from fabml.wafer.baselines import BASELINES, Baseline, build_baseline
from fabml.wafer.config import WaferConfig
from fabml.wafer.embedding import d4_averaged, embed_tensors, encoder_embed_fn
from fabml.wafer.fusion import FusedEmbedder, fuse
from fabml.wafer.maps import load_dataset
from fabml.wafer.runs import JOB, load_trained, write_embeddings
from fabml.wafer.whitening import Whitening, WhitenedEmbedder, check_dim


def embed_fn(cfg: WaferConfig, method, tta_d4: bool):
    """The run's encoder as ``x [B,2,S,S] -> unit embeddings [B,D]``, D4-averaged when ``tta_d4``."""
    fn = encoder_embed_fn(method.encoder, cfg.data.outline_channel, resolve_device("auto"))
    return d4_averaged(fn) if tta_d4 else fn


FIXED_BY_RUN = ("model", "data.size", "data.outline_channel")
"""Settings a trained run fixes: ``--config``/``--set`` of ``embed``/``evaluate`` may not change them."""

MODEL_METHODS = ("learned", "fused")
"""``embed --method`` values that need a trained run (the others are the model-free baselines)."""

EMBEDDER = "embedder.json"
"""Beside the embeddings: which method made them (``learned`` or a baseline) and with what settings."""

WHITENING = "whitening.joblib"
"""Beside whitened learned embeddings: their fitted :class:`~fabml.wafer.whitening.Whitening` (``eval.whiten_dim``)."""


def _setting(cfg: WaferConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return to_dict(value) if hasattr(value, "__dataclass_fields__") else value


def check_fixed(cfg: WaferConfig, run_cfg: WaferConfig, run_dir: Path) -> None:
    """One-line error when ``cfg`` changes a setting the trained run's model depends on (:data:`FIXED_BY_RUN`)."""
    changed = [name for name in FIXED_BY_RUN if _setting(cfg, name) != _setting(run_cfg, name)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} cannot change for the trained run {run_dir} (its encoder was built "
                          "with the run's values): drop those settings from --config/--set, or train a new run")


def baseline_tensors(base: Baseline, source: str | list[str], dataset: WaferTensorDataset,
                     cfg: WaferConfig) -> torch.Tensor:
    """The maps of ``source`` as ``base`` wants them: ``dataset.tensors`` (at ``data.size``) unless the baseline
    asks for another side (``input_size``, e.g. ``baseline.wu_size``); then the original die grids are read
    again and resized to that side (same maps, same order)."""
    size = base.input_size
    if not size or size == dataset.size:
        return dataset.tensors
    return load_dataset(source, at_size(cfg, size), limit=0).tensors


def aux_targets(cfg: WaferConfig, source: str | list[str], dataset: WaferTensorDataset) -> torch.Tensor:
    """``byol.aux_features`` of every training map ``[N, D]`` float32, row i for ``dataset`` index i: the
    baseline fitted on these maps (for ``wu2015``: features standardised over them), rows not normalised."""
    base = build_baseline(cfg.byol.aux_features, cfg.baseline)
    tensors = baseline_tensors(base, source, dataset, cfg)
    return torch.from_numpy(base.fit_transform(tensors))


def at_size(cfg: WaferConfig, size: int | None) -> WaferConfig:
    """``cfg`` with ``data.size = size`` (unchanged when ``size`` is None)."""
    return replace(cfg, data=replace(cfg.data, size=size)) if size else cfg


def run_settings(run_dir: Path | None, cfg: WaferConfig | None) -> WaferConfig:
    """``cfg`` when given, else the run's own config.yaml, else the defaults."""
    if cfg is not None:
        return cfg
    if run_dir is not None and (Path(run_dir) / "config.yaml").is_file():
        return load_config(WaferConfig, Path(run_dir) / "config.yaml")
    return WaferConfig()


def _has_model(run_dir: Path) -> bool:
    return (run_dir / "model.pt").is_file() or (run_dir / "checkpoints").is_dir()


def embed(
    run_dir: Path | None, data: str | list[str], tta_d4: bool | None = None, checkpoint: str = "best",
    method: str = "learned", out: Path | None = None, cfg: WaferConfig | None = None,
) -> Path:
    """Embed every map of ``data``; writes embeddings.npy, meta.csv, source.json, index.faiss and embedder.json.

    ``method``: ``learned`` (the run's encoder; ``run_dir`` is a trained run; with ``eval.whiten_dim`` > 0 its
    rows are PCA-whitened, the whitening fitted on these maps and saved beside them), a baseline of
    :mod:`fabml.wafer.baselines` (``pca``, ``raw``, ``wu2015``), fitted on these maps and saved beside them as
    ``baseline.joblib`` (``search`` and ``assign`` embed new maps with it), or ``fused``: the run's encoder
    joined with the baseline ``baseline.fuse_with`` at weight ``baseline.fusion_weight``
    (:mod:`fabml.wafer.fusion`; the baseline is fitted and saved as for a baseline). For a baseline ``run_dir`` is just
    the folder the result belongs to: a new or model-free folder becomes a model-free wafer run (config.yaml,
    run.json) that ``cluster``, ``search`` and ``assign`` work on; a trained run keeps its own embeddings
    unless ``out`` is given. ``out``: the folder to write (default ``RUN/embeddings``). ``cfg``: the settings
    (default: the run's config.yaml); for ``learned`` it may not change :data:`FIXED_BY_RUN`.
    Returns the folder written.
    """
    if method not in MODEL_METHODS and method not in BASELINES:
        raise ConfigError(f"--method {method!r} is unknown: use one of {[*MODEL_METHODS, *BASELINES]}")
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is None and (method in MODEL_METHODS or out is None):
        raise DataError(f"embed needs --run (a trained run for --method {'/'.join(MODEL_METHODS)}; any folder for a "
                        "baseline) or, for a baseline, --out")
    whitening = None
    if method in MODEL_METHODS:
        run_cfg, model = load_trained(run_dir, checkpoint)
        cfg = cfg or run_cfg
        check_fixed(cfg, run_cfg, run_dir)
        tta = cfg.eval.tta_d4 if tta_d4 is None else tta_d4
        info, dataset = {"checkpoint": checkpoint}, load_dataset(data, cfg, limit=0)
        emb = embed_tensors(embed_fn(run_cfg, model, tta), dataset.tensors, cfg.eval.embed_batch, progress=True)
        if check_dim(cfg.eval.whiten_dim):  # fitted on the maps embedded, kept for their queries
            whitening = Whitening(cfg.eval.whiten_dim).fit(emb)
            emb, info["whiten_dim"] = whitening.transform(emb), whitening.out_dim
        if method == "fused":
            fitted = fit_fusion_baseline(cfg, dataset)
            emb = fuse(emb, fitted.embed(dataset.tensors, cfg.eval.embed_batch), cfg.baseline.fusion_weight)
            info |= {"settings": to_dict(cfg.baseline)}
    else:
        cfg = run_settings(run_dir, cfg)
        if run_dir is not None and out is None:
            if _has_model(run_dir):
                raise ConfigError(f"{run_dir} is a trained run and RUN/embeddings/ holds its encoder's embeddings: give "
                                  f"--out DIR for the {method} embeddings, or a new --run folder")
            RunFolder.create(run_dir, JOB, config=cfg, seed=cfg.train.seed)  # a model-free wafer run
        fitted = build_baseline(method, cfg.baseline, cfg.train.seed)
        dataset = load_dataset(data, at_size(cfg, fitted.input_size), limit=0)
        fitted.fit(dataset.tensors, cfg.eval.embed_batch)
        tta = bool(tta_d4)
        fn = d4_averaged(fitted) if tta else fitted
        info = {"settings": to_dict(cfg.baseline)}
        emb = embed_tensors(fn, dataset.tensors, cfg.eval.embed_batch, progress=True)
    folder = Path(out) if out is not None else run_dir / "embeddings"
    write_embeddings(folder, emb, dataset, str(data))
    index = VectorIndex(emb.shape[1], cfg.index)
    index.add(emb)
    index.save(folder / "index.faiss")
    if method != "learned":  # a baseline, or the baseline part of fused
        import joblib

        joblib.dump(fitted, folder / "baseline.joblib")
    else:
        (folder / "baseline.joblib").unlink(missing_ok=True)
    if whitening is not None:
        import joblib

        joblib.dump(whitening, folder / WHITENING)
    else:
        (folder / WHITENING).unlink(missing_ok=True)
    (folder / EMBEDDER).write_text(json.dumps({"method": method, "tta_d4": tta, **info}, indent=2, default=str))
    return folder


def fusion_size_conflict(cfg: WaferConfig, size: int) -> str:
    """Why ``baseline.fuse_with`` cannot join an encoder that reads side-``size`` maps (one line), or ``""``.

    The fused row needs both parts from the same tensors, so a baseline that wants another side
    (``baseline.wu_size`` != ``data.size``) cannot be fused."""
    side = build_baseline(cfg.baseline.fuse_with, cfg.baseline, cfg.train.seed).input_size
    if not side or side == size:
        return ""
    return (f"--method fused embeds one tensor per map for both parts, but baseline.fuse_with="
            f"{cfg.baseline.fuse_with} wants side {side} and the run's data.size is {size}: set baseline.wu_size={size}")


def fit_fusion_baseline(cfg: WaferConfig, dataset: WaferTensorDataset) -> Baseline:
    """The baseline ``baseline.fuse_with``, fitted on ``dataset`` (the maps being embedded, at ``data.size``);
    a :func:`fusion_size_conflict` is a one-line error."""
    conflict = fusion_size_conflict(cfg, dataset.size)
    if conflict:
        raise ConfigError(conflict)
    return build_baseline(cfg.baseline.fuse_with, cfg.baseline, cfg.train.seed).fit(dataset.tensors,
                                                                                    cfg.eval.embed_batch)


def query_embedder(run_dir: Path) -> tuple[WaferConfig, Callable]:
    """The settings and the embed function that made ``RUN/embeddings`` (to embed new maps the same way):
    the saved baseline for a baseline's embeddings, else the run's encoder (D4-averaged as recorded), joined with
    the saved baseline for ``fused``."""
    folder = Path(run_dir) / "embeddings"
    info = json.loads((folder / EMBEDDER).read_text()) if (folder / EMBEDDER).is_file() else {"method": "learned"}
    if info["method"] not in MODEL_METHODS:
        import joblib

        fitted: Baseline = joblib.load(folder / "baseline.joblib")
        cfg = at_size(run_settings(run_dir, None), fitted.input_size)
        return cfg, d4_averaged(fitted) if info.get("tta_d4") else fitted
    cfg, model = load_trained(run_dir, info.get("checkpoint", "best"))
    fn = embed_fn(cfg, model, info.get("tta_d4", cfg.eval.tta_d4))
    import joblib

    if info.get("whiten_dim"):
        fn = WhitenedEmbedder(fn, joblib.load(folder / WHITENING))
    if info["method"] == "fused":
        fn = FusedEmbedder(fn, joblib.load(folder / "baseline.joblib"), info["settings"]["fusion_weight"])
    return cfg, fn
