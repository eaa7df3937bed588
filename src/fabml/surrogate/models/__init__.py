"""The surrogate job's networks and losses (nn.Modules and pure functions only: no I/O, no training loop).

- :class:`HierarchicalVAE` (:mod:`.hvae`): fields ``[B, V, T, M]`` <-> main latent ``z [B, 32]`` +
  hierarchical latents ``xs [B, stages, 8]``.
- Latent conditioners (case inputs -> ``(z, xs)``): :class:`MLPConditioner` (parameter vectors),
  :class:`CNNConditioner` and :class:`ViTConditioner` (images); :func:`build_conditioner` picks one.
- Losses (:mod:`.losses`): :func:`reconstruction_loss`, :func:`relative_l2_loss`, :func:`kl_divergence`,
  :func:`latent_regulariser`.
"""

from fabml.surrogate.models.cnn import CNNConditioner
from fabml.surrogate.models.conditioners import build_conditioner, resolve_kind
from fabml.surrogate.models.hvae import VAE_PRESETS, HierarchicalVAE, VAEEncoding, VAEOutput
from fabml.surrogate.models.losses import kl_divergence, latent_regulariser, reconstruction_loss, relative_l2_loss
from fabml.surrogate.models.mlp import MLPConditioner
from fabml.surrogate.models.vit import ViTConditioner

__all__ = [
    "CNNConditioner",
    "HierarchicalVAE",
    "MLPConditioner",
    "VAEEncoding",
    "VAEOutput",
    "VAE_PRESETS",
    "ViTConditioner",
    "build_conditioner",
    "kl_divergence",
    "latent_regulariser",
    "reconstruction_loss",
    "relative_l2_loss",
    "resolve_kind",
]
