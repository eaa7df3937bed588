"""The surrogate's losses as pure functions of tensors.

- :func:`reconstruction_loss`: the mean over every element of ``[B, V, T, M]`` of

  - ``mse``: ``(p - t)^2``
  - ``mae``: ``|p - t|``
  - ``smoothl1``: ``0.5 (p - t)^2 / b`` if ``|p - t| < b`` else ``|p - t| - 0.5 b`` (b = 1)
  - ``huber``: ``0.5 (p - t)^2`` if ``|p - t| < d`` else ``d (|p - t| - 0.5 d)`` (d = 1)

  On fields scaled to [-0.7, 0.7] the residuals stay below the thresholds of 1 once training has
  started, so ``smoothl1`` and ``huber`` act as ``0.5 * mse`` there and only damp early outliers.
- :func:`relative_l2_loss`: the mean over the batch of ``||u^_i - u_i|| / ||u_i||``, the relative L2
  error of each case in original units, ``u = s * inverse_scale_v + centre_v`` for a scaled field ``s``
  ``[B, V, T, M]`` (the field scaler's inverse, variable ``v`` on axis 1): the figure ``evaluate``
  reports, as a loss (e2e ``e2e.loss=rel_l2``). A case whose field is zero everywhere divides by
  ``eps`` instead of 0.
- :func:`kl_divergence`: ``KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)``
  summed over the latent dimensions (all but the batch axis) and averaged over the batch. ``logvar``
  is clamped to [-30, 20] first so ``exp`` cannot overflow and a collapsing variance cannot send
  the term to infinity; the sum is taken in float32 even under mixed precision.
- :func:`latent_regulariser`: the mean square of the concatenated latent ``[z, xs]``:
  ``(sum z^2 + sum xs^2) / (B * (Z + S*L))``. In e2e training the conditioner's latents feed the
  frozen decoder directly; this term (weight ``e2e.latent_reg_weight`` = 0.001) keeps them near the
  prior the decoder was trained on (the VAE's posterior means are close to N(0, 1)), so the
  conditioner cannot reach for latents far outside what the decoder has seen.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fabml.errors import ConfigError
from fabml.surrogate.config import RECON_LOSSES

#: logvar is clamped to this range inside the KL term
KL_LOGVAR_RANGE = (-30.0, 20.0)


def reconstruction_loss(pred: Tensor, target: Tensor, kind: str = "mse", setting: str = "vae.recon_loss") -> Tensor:
    """Scalar reconstruction loss of ``kind`` (``mse | mae | smoothl1 | huber``), mean over elements.

    ``setting`` names the config key in the error for an unknown kind (``e2e.loss`` for the e2e mode).
    """
    key = kind.lower()
    if key not in RECON_LOSSES:
        raise ConfigError(f"{setting}={kind!r} is unknown; use one of {list(RECON_LOSSES)}")
    if pred.shape != target.shape:
        raise ValueError(f"reconstruction_loss: prediction {list(pred.shape)} and target {list(target.shape)} differ")
    if key == "mse":
        return F.mse_loss(pred, target)
    if key == "mae":
        return F.l1_loss(pred, target)
    if key == "smoothl1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    return F.huber_loss(pred, target, delta=1.0)


def relative_l2_loss(pred: Tensor, target: Tensor, inverse_scale: Tensor, centre: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over cases of the relative L2 error in original units of scaled fields ``pred``/``target``
    ``[B, V, T, M]``; ``inverse_scale``/``centre`` ``[V]`` invert the field scaler (module doc)."""
    if pred.shape != target.shape:
        raise ValueError(f"relative_l2_loss: prediction {list(pred.shape)} and target {list(target.shape)} differ")
    if pred.dim() < 2 or inverse_scale.shape != (pred.shape[1],) or centre.shape != (pred.shape[1],):
        raise ValueError(f"relative_l2_loss: fields {list(pred.shape)} need one scale and centre per variable "
                         f"(axis 1), got {list(inverse_scale.shape)} and {list(centre.shape)}")
    shape = (1, -1) + (1,) * (pred.dim() - 2)
    scale, shift = inverse_scale.view(shape), centre.view(shape)
    diff = ((pred - target) * scale).flatten(1).pow(2).sum(dim=1)
    norm = (target * scale + shift).flatten(1).pow(2).sum(dim=1)
    return (diff / norm.clamp_min(eps)).clamp_min(eps).sqrt().mean()  # clamp: sqrt has no gradient at 0


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` for ``mu``/``logvar`` [B, ...]: summed over all but
    the batch axis, averaged over the batch (scalar, float32)."""
    mu = mu.float()
    logvar = logvar.float().clamp(*KL_LOGVAR_RANGE)
    per_elem = mu.pow(2) + logvar.exp() - 1.0 - logvar
    return 0.5 * per_elem.flatten(1).sum(dim=1).mean()


def latent_regulariser(z: Tensor, xs: Tensor) -> Tensor:
    """Mean square of the latents ``z`` [B, Z] and ``xs`` [B, S, L] taken together (scalar)."""
    total = z.float().pow(2).sum() + xs.float().pow(2).sum()
    return total / (z.numel() + xs.numel())
