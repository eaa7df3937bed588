"""The surrogate run folder: where each step reads and writes, and how a trained surrogate is loaded back.

The shared layout is :mod:`fabml.engine.runs`; the surrogate job adds its own files and folders:

```
RUN/config.yaml  run.json              the settings of the last `train` (run.json: job "surrogate", seed, versions)
RUN/splits/{train,val,test}.csv        the seeded case split (index,case_id), written once, reused by every step
RUN/scaler.json                        the field scaler (per variable, fitted on the train cases) + parameter scaler
RUN/model.pt                           the trained surrogate (below), rewritten after every `train`
RUN/latent_vectors.npy  xs.npy         the VAE's posterior means of every case, in field order:
                                       [N, latent_dim_end] and [N, stages, latent_dim] (written after the VAE trains)
RUN/train/<mode>/checkpoints/{latest,best}.pt  metrics.csv  run.json    the trainer's files, one folder per mode
RUN/predictions/fields.npy  fields_std.npy  cases.csv                   (predict)
RUN/evaluation/<split>/...  RUN/report/...                              (evaluate, report)
```

``model.pt`` holds ``{"job": "surrogate", "format": 1, "vae": state dict, "conditioner": state dict (fp32, CPU),
"field_scaler": {...}, "param_scaler": {...} | None, "shapes": SurrogateShapes as a dict, "trained": modes whose
weights it holds (e.g. ["vae", "conditioner"]), "checkpoints": {mode: {"checkpoint": "best"|"latest", "epoch": E}},
"config": {...}}``: everything ``predict`` needs, whatever GPU or precision trained it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fabml.config import from_dict, load_config, to_dict
from fabml.engine.runs import RunFolder
from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import SurrogateConfig

JOB = "surrogate"
SPLITS = "splits"
SCALER = "scaler.json"
LATENTS = "latent_vectors.npy"
XS = "xs.npy"
TRAIN = "train"
PREDICTIONS = "predictions"
EVALUATION = "evaluation"
REPORT = "report"


@dataclass
class SurrogateShapes:
    """The sizes a trained surrogate was built for.

    cases N, time_steps T, nodes M, variables V: the fields after sub-sampling ([N, T, M, V]);
    input_kind ``params`` (input_shape [P]) or ``image`` ([C, S, S]); stages, latent_dim_end,
    latent_dim: the latents ``z`` [latent_dim_end] and ``xs`` [stages, latent_dim] of one case.
    """

    cases: int
    time_steps: int
    nodes: int
    variables: int
    input_kind: str
    input_shape: list[int]
    stages: int = 0
    latent_dim_end: int = 0
    latent_dim: int = 0
    input_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SurrogateShapes":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def field_shape(self) -> tuple[int, int, int]:
        """``(T, M, V)`` of one case."""
        return (self.time_steps, self.nodes, self.variables)


@dataclass
class LoadedSurrogate:
    """A trained surrogate back from ``model.pt``: models in eval mode, scalers, settings, sizes.

    ``trained``: the modes whose weights ``model.pt`` holds (a conditioner that never trained predicts
    nothing useful: :func:`fabml.surrogate.pipeline.predict` refuses it). ``spread_scale``: the factor on the
    predicted spread from ``RUN/calibration.json`` (:mod:`fabml.surrogate.calibration`; 1 = none).
    """

    vae: nn.Module
    conditioner: nn.Module
    field_scaler: Any
    param_scaler: Any | None
    cfg: SurrogateConfig
    shapes: SurrogateShapes
    trained: list[str] = field(default_factory=list)
    spread_scale: float = 1.0

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device


def build_models(cfg: SurrogateConfig, shapes: SurrogateShapes) -> tuple[nn.Module, nn.Module]:
    """``(HierarchicalVAE, conditioner)`` with random weights for ``shapes``; fills ``shapes.stages`` and the
    latent sizes from the built VAE."""
    from fabml.surrogate.models import HierarchicalVAE, build_conditioner

    grid = tuple(int(v) for v in cfg.data.grid_shape) if cfg.data.grid_shape else None
    vae = HierarchicalVAE(shapes.variables, shapes.time_steps, shapes.nodes, cfg.vae, layout=cfg.data.layout,
                          grid_shape=grid)  # type: ignore[arg-type]
    shapes.stages, shapes.latent_dim_end, shapes.latent_dim = int(vae.stages), int(vae.latent_dim_end), int(vae.latent_dim)
    conditioner = build_conditioner(cfg.conditioner, shapes.input_kind, tuple(shapes.input_shape),
                                    shapes.latent_dim_end, shapes.stages, shapes.latent_dim)
    return vae, conditioner


def data_shapes(cfg: SurrogateConfig) -> SurrogateShapes:
    """The sizes of the data ``cfg.data`` names (the fields file's header and the inputs), without training."""
    from fabml.data.simulation_inputs import read_inputs
    from fabml.data.simulation_io import open_fields

    return shapes_of(cfg, open_fields(cfg.data), read_inputs(cfg.data))


def shapes_of(cfg: SurrogateConfig, source: Any, inputs: Any) -> SurrogateShapes:
    """The sizes of an opened :class:`~fabml.data.simulation_io.FieldSource` (``[N, T, M, V]``) and its
    :class:`~fabml.data.simulation_inputs.CaseInputs` (``[P]`` parameters or ``[C, S, S]`` images)."""
    n, t, m, v = (int(s) for s in source.shape)
    if inputs.kind == "params":
        shape = [int(inputs.params.shape[1])]
    else:
        shape = [int(cfg.data.image_channels), int(cfg.data.image_size), int(cfg.data.image_size)]
    return SurrogateShapes(n, t, m, v, inputs.kind, shape, input_columns=list(inputs.columns))


def build_method(cfg: SurrogateConfig, shapes: SurrogateShapes | None = None, mode: str | None = None):
    """The job table's builder: a :class:`~fabml.surrogate.method.SurrogateMethod` with random weights for
    ``mode`` (default ``cfg.mode``) and ``shapes`` (default: read from ``cfg.data``'s files)."""
    from fabml.surrogate.method import build_method as build

    if shapes is None:
        if not cfg.data.fields or not cfg.data.inputs:
            raise ConfigError("the surrogate method needs the data sizes: set data.fields and data.inputs or pass shapes")
        shapes = data_shapes(cfg)
    vae, conditioner = build_models(cfg, shapes)
    return build(vae, conditioner, cfg, mode or cfg.mode)


def is_legacy_run(path: Path) -> bool:
    """No surrogate run predates run.json naming its job."""
    return False


def open_run(run_dir: str | Path) -> RunFolder:
    """The surrogate run in ``run_dir``; one-line error otherwise."""
    return RunFolder.open(run_dir, JOB, legacy=is_legacy_run,
                          command="fabml surrogate train --data FIELDS --inputs CSV|DIR --out")


def run_config(run_dir: str | Path) -> SurrogateConfig:
    """``RUN/config.yaml`` of a surrogate run."""
    run = open_run(run_dir)
    if not run.config_path.is_file():
        raise DataError(f"{run.config_path} not found: start the run with `fabml surrogate train --out {run.root}`")
    return load_config(SurrogateConfig, run.config_path)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict in fp32 on the CPU."""
    return {k: (v.float() if v.is_floating_point() else v).detach().cpu().clone() for k, v in module.state_dict().items()}


def save_model(run: RunFolder, cfg: SurrogateConfig, vae: nn.Module, conditioner: nn.Module, field_scaler: Any,
               param_scaler: Any | None, shapes: SurrogateShapes, trained: list[str],
               checkpoints: dict[str, Any]) -> Path | None:
    """Write ``RUN/model.pt`` (main process only; None elsewhere)."""
    return run.save_artefact({
        "vae": cpu_state(vae), "conditioner": cpu_state(conditioner), "field_scaler": field_scaler.state_dict(),
        "param_scaler": param_scaler.state_dict() if param_scaler is not None else None,
        "shapes": shapes.to_dict(), "trained": list(trained), "checkpoints": dict(checkpoints),
        "config": to_dict(cfg),
    })


def read_model(run_dir: str | Path) -> dict[str, Any]:
    """``model.pt`` of a surrogate run as a dict; a run without one is a one-line error."""
    run = open_run(run_dir)
    if not run.has_artefact():
        raise DataError(f"{run.artefact_path} not found: train first with `fabml surrogate train --out {run.root}`")
    return run.load_artefact()


def load_trained(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedSurrogate:
    """The trained surrogate of a run (from ``model.pt``), models in eval mode on ``device``."""
    from fabml.data.simulation_scaler import FieldScaler, ParamScaler

    state = read_model(run_dir)
    cfg = from_dict(SurrogateConfig, state["config"])
    shapes = SurrogateShapes.from_dict(state["shapes"])
    vae, conditioner = build_models(cfg, shapes)
    vae.load_state_dict(state["vae"])
    conditioner.load_state_dict(state["conditioner"])
    field_scaler = FieldScaler.from_state(state["field_scaler"])
    param_scaler = ParamScaler.from_state(state["param_scaler"]) if state.get("param_scaler") else None
    return LoadedSurrogate(vae.to(device).eval(), conditioner.to(device).eval(), field_scaler, param_scaler, cfg,
                           shapes, [str(m) for m in state.get("trained", [])])


def load_artefact(run_dir: str | Path) -> LoadedSurrogate:
    """The job table's loader: :func:`load_trained` on the CPU."""
    return load_trained(run_dir, "cpu")


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``fabml info`` shows for a surrogate run (from config.yaml as a dict)."""
    data, vae, cond = (config.get(k) or {} for k in ("data", "vae", "conditioner"))
    epochs = {name: (config.get(f"train_{name}") or {}).get("epochs") for name in ("vae", "conditioner", "e2e")}
    return {"mode": config.get("mode"), "fields": data.get("fields"), "inputs": data.get("inputs"),
            "layout": data.get("layout"), "vae preset": vae.get("filters") or vae.get("preset"),
            "latents": f"{vae.get('latent_dim_end')} + stages x {vae.get('latent_dim')}" if vae else None,
            "conditioner": cond.get("kind"),
            "epochs (vae/conditioner/e2e)": "/".join(str(e) for e in epochs.values())}
