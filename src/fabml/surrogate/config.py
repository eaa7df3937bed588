"""The surrogate job's configuration (saved as ``config.yaml`` beside every run).

Defaults are the seed's (SimulGenVAE): main latent 32, hierarchical latent 8 per stage, encoder
filters 1024-512-256-128 (``small``), KL weight ``alpha`` with the seed's annealing, conditioner
dropout 0.3 and weight decay 1e-4, e2e latent regulariser weight 0.001. Fields are arrays
``[N cases, T timesteps, M nodes, V variables]`` (``[N, T, M]`` means V = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fabml.config import load_config
from fabml.engine.train_config import TrainConfig

MODES = ("vae", "conditioner", "e2e", "all")
LAYOUTS = ("1d", "grid")
RECON_LOSSES = ("mse", "mae", "smoothl1", "huber")
#: e2e.loss: the reconstruction losses or ``rel_l2``, the evaluation's relative L2 in original units
E2E_LOSSES = (*RECON_LOSSES, "rel_l2")
CONDITIONERS = ("auto", "mlp", "cnn", "vit")
PRESETS = ("small", "large")


@dataclass
class SurrogateDataConfig:
    """Where the simulation results and the case inputs are, and how they are read.

    fields: ``.npy`` (memory-mapped), ``.npz``, ``.h5``/``.hdf5`` or (only with ``allow_pickle``)
        a legacy pickle, holding ``[N, T, M, V]`` or ``[N, T, M]``. Case ``i`` of the array has id
        ``i`` unless the file has a ``case_ids`` array (npz key / HDF5 dataset) of length N.
    fields_key: the array's name inside ``.npz`` / HDF5 (empty = ``fields``, or the only array).
    expected_shape: the ``[N, T, M, V]`` (or ``[N, T, M]``) the fields file must hold before
        sub-sampling (the seed's Dim1/Dim2/Dim3/num_var; 0 = any size; empty = no check).
    inputs: a CSV (one row per case, design parameters as numeric columns) or a folder of images
        (``param_001.png`` ...; the case id is the last run of digits in the file name).
    id_column: the CSV's case-id column (empty = a column named ``case_id`` if the CSV has one,
        else row ``i`` is case ``i``). A CSV whose first line is all numbers has no header row.
    layout: ``1d`` = the nodes axis M is a 1-D signal (neighbouring node numbers are treated as
        neighbours: order nodes along the geometry, e.g. by a space-filling curve, for this to
        hold); ``grid`` = the M nodes are a regular ``grid_shape`` [H, W] grid in row-major order.
    time_stride / node_stride: keep every k-th time step / node; time_indices / node_indices: an
        explicit list instead (takes precedence over the stride).
    load_all: ``auto`` = preload when the (sub-sampled) fields fit in ``memory_budget_gb``, else
        stream cases from the file; ``true`` preloads (to the training device); ``false`` streams.
    scale_range: fields are scaled per variable to [-scale_range, scale_range] by a min-max scaler
        fitted on the training cases only.
    image_size: side (pixels) image inputs are resized to; image_channels: 1 (grey) or 3.
    val_fraction / test_fraction: cases held out by the seeded split (``split_seed``).
    symmetry: ``none``, ``transpose`` (the physics is unchanged when the image's axes and the
        field's square grid are swapped) or ``d4`` (unchanged by every rotation and reflection of the
        square): the e2e stage trains on randomly moved copies; see :mod:`fabml.surrogate.symmetry`
        for when that holds.
    grid_nodes: where a square grid's nodes sit, which decides what a reflection is (``d4``):
        ``symmetric`` (both boundaries stored, or cell centres) or ``first_edge`` (nodes ``i h``,
        ``i < n``: the first boundary stored, the last not, as in neuraloperator's Darcy files).
    """

    fields: str = ""
    fields_key: str = ""
    expected_shape: list[int] = field(default_factory=list)
    allow_pickle: bool = False
    inputs: str = ""
    id_column: str = ""
    layout: str = "1d"
    grid_shape: list[int] = field(default_factory=list)
    time_stride: int = 1
    time_indices: list[int] = field(default_factory=list)
    node_stride: int = 1
    node_indices: list[int] = field(default_factory=list)
    load_all: str | bool = "auto"  # auto | true | false (YAML reads true/false as booleans)
    memory_budget_gb: float = 4.0
    scale_range: float = 0.7
    image_size: int = 64
    image_channels: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    symmetry: str = "none"
    grid_nodes: str = "symmetric"


@dataclass
class VAEConfig:
    """The hierarchical VAE (:mod:`fabml.surrogate.models.hvae`).

    preset: ``small`` (encoder filters 1024-512-256-128) or ``large``; ``filters`` overrides it.
    latent_dim_end: size of the main latent z [N, 32]; latent_dim: size of each stage's
        hierarchical latent, stored as [N, stages, latent_dim].
    recon_loss: ``mse | mae | smoothl1 | huber``; alpha: weight of the KL term; the KL weight
        is ``alpha * beta(progress)`` with the seed's annealing (beta = 1/init_beta_divisor for the
        first 30% of the epochs, rising linearly to 1.0 at 80%, then 1.0).
    gradient_checkpointing: recompute encoder/decoder activations in the backward pass (memory for time).
    """

    preset: str = "small"
    filters: list[int] = field(default_factory=list)
    latent_dim_end: int = 32
    latent_dim: int = 8
    recon_loss: str = "mse"
    alpha: float = 1e-6
    init_beta_divisor: float = 1000.0
    anneal_start: float = 0.3
    anneal_end: float = 0.8
    gradient_checkpointing: bool = False


@dataclass
class ConditionerConfig:
    """The latent conditioner: case inputs -> (main latent [32], hierarchical latents [stages, 8]).

    kind: ``mlp`` (parameter vectors), ``cnn`` / ``vit`` (images), ``auto`` = mlp for a CSV and
    cnn for an image folder. hidden / blocks: width and depth (MLP hidden width, CNN base channels,
    ViT embedding width). dropout: the seed's 0.3 (also the Monte-Carlo dropout of ``predict
    --samples``). patch_size / heads / drop_path: ViT settings.
    """

    kind: str = "auto"
    hidden: int = 256
    blocks: int = 4
    dropout: float = 0.3
    patch_size: int = 16
    heads: int = 4
    drop_path: float = 0.1
    full_res_blocks: int = 0


@dataclass
class E2EConfig:
    """End-to-end fine-tuning: inputs -> conditioner -> frozen decoder -> field.

    loss: ``mse | mae | huber | smoothl1`` on the scaled field, or ``rel_l2``: the relative L2 error
    that ``evaluate`` reports, per case in original units (:func:`~fabml.surrogate.models.losses.
    relative_l2_loss`), plus ``latent_reg_weight`` times the latent regulariser (see
    :mod:`fabml.surrogate.models.losses`). ``mse`` (the seed's) weighs the cases with the largest fields
    most; ``rel_l2`` weighs every case alike, as the reported error does.
    decoder_lr_scale: 0 (the seed's) keeps the VAE's decoder frozen; ``s > 0`` fine-tunes it too in
    ``--mode e2e``, at ``s`` times the e2e learning rate, so the decoder adapts to the latents the
    conditioner predicts (the encoder stays frozen). Darcy 16x16 selection slice, d4 symmetry: 0.0849
    frozen, 0.0828 with 0.1. Mode ``all`` refuses it (its stages share one optimizer with fixed rates).
    """

    loss: str = "mse"
    latent_reg_weight: float = 0.001
    decoder_lr_scale: float = 0.0


@dataclass
class SurrogateTrainConfig(TrainConfig):
    """:class:`~fabml.engine.train_config.TrainConfig` for one training mode (a subclass so a YAML
    section keeps every other default). Each mode has its own section: ``train_vae``,
    ``train_conditioner``, ``train_e2e``."""

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    early_stop_patience: int = 0
    auto_resume: bool = True


@dataclass
class E2ETrainConfig(SurrogateTrainConfig):
    """``train_e2e``: fine-tuning through the frozen decoder at a tenth of the rate (lr 1e-4). A class of its
    own (not a default factory) so that a YAML ``train_e2e:`` section or ``--set train_e2e.*`` keeps it."""

    lr: float = 1e-4


@dataclass
class SurrogateEvalConfig:
    """validate_every: epochs between validation passes; overfit_ratio: warn when validation loss /
    train loss exceeds it; samples: Monte-Carlo dropout samples of ``predict`` (1 = deterministic);
    coverage_sigma: the predicted spread's interval is mean ± coverage_sigma * std.
    symmetry_average: with ``data.symmetry`` set, ``predict`` and ``evaluate`` average the fields
    predicted from every moved copy of the input (each moved back), which the physics says are the same
    field; costs one pass per element of the group (2 for ``transpose``, 8 for ``d4``)."""

    validate_every: int = 1
    overfit_ratio: float = 3.0
    samples: int = 1
    coverage_sigma: float = 2.0
    symmetry_average: bool = True


@dataclass
class SurrogateConfig:
    """Everything a surrogate run needs (``RUN/config.yaml``)."""

    mode: str = "all"
    data: SurrogateDataConfig = field(default_factory=SurrogateDataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    train_vae: SurrogateTrainConfig = field(default_factory=SurrogateTrainConfig)
    train_conditioner: SurrogateTrainConfig = field(default_factory=SurrogateTrainConfig)
    train_e2e: E2ETrainConfig = field(default_factory=E2ETrainConfig)
    eval: SurrogateEvalConfig = field(default_factory=SurrogateEvalConfig)
    seed: int = 0


def load_surrogate_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SurrogateConfig:
    """The config from a YAML file (or the defaults) with ``key.sub=value`` overrides applied."""
    return load_config(SurrogateConfig, path, overrides)
