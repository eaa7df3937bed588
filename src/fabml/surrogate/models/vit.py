"""ViT latent conditioner: a case's image ``[B, C, S, S]`` -> ``(z [B, Z], xs [B, stages, L])``.

::

    t = PatchEmbed(x) + pos                  [B, N, D]   (N = (S / p)^2 patches, p = cfg.patch_size, D = cfg.hidden)
    t = t + DropPath(MHSA(LayerNorm(t)))     } x cfg.blocks, cfg.heads heads
    t = t + DropPath(MLP(LayerNorm(t)))      }
    f = mean_N(LayerNorm(t))                 [B, D]      (average pooling over the patches)
    out = Linear(Dropout(f))                 [B, Z + S*L] -> z, xs

PatchEmbed is a ``p x p`` conv with stride ``p`` (Dosovitskiy et al. 2021); ``pos`` is a learned
position embedding, one vector per patch. The MLP is ``Linear(D, 4D) -> GELU -> Dropout ->
Linear(4D, D)``. Stochastic depth rises linearly over the blocks from 0 to ``cfg.drop_path``.
The dropouts are plain :class:`torch.nn.Dropout` (``cfg.dropout``; Monte-Carlo dropout at
predict time). ``image_size`` must be a multiple of ``patch_size`` (16 by default, the seed's;
use 2 or 4 for 16x16 images). Attention costs ``O(N^2 D)`` per block; the defaults (D = 256,
4 blocks) are 3.2 M parameters and ~50 M multiply-adds per image at 16 patches (64x64 images
with 16x16 patches, or 16x16 images with 4x4 patches).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import ConditionerConfig
from fabml.surrogate.models.blocks import DropPath, split_latents


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, heads: int, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, t: Tensor) -> Tensor:
        h = self.norm1(t)
        t = t + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
        return t + self.drop_path(self.mlp(self.norm2(t)))


class ViTConditioner(nn.Module):
    """Image [B, in_channels, image_size, image_size] -> (z [B, latent_dim_end], xs [B, stages, latent_dim])."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        latent_dim_end: int = 32,
        stages: int = 4,
        latent_dim: int = 8,
        cfg: ConditionerConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or ConditionerConfig()
        p = cfg.patch_size
        if p < 1 or image_size < p or image_size % p:
            raise ConfigError(
                f"data.image_size={image_size} must be a multiple of conditioner.patch_size={p} for the ViT "
                f"conditioner; set conditioner.patch_size to a divisor of {image_size} or resize the images"
            )
        if cfg.hidden < 1 or cfg.heads < 1 or cfg.hidden % cfg.heads:
            raise ConfigError(
                f"conditioner.hidden={cfg.hidden} (ViT embedding width) must be a multiple of conditioner.heads={cfg.heads}"
            )
        if not 0.0 <= cfg.dropout < 1.0 or not 0.0 <= cfg.drop_path < 1.0 or cfg.blocks < 0:
            raise ConfigError(
                f"conditioner.dropout={cfg.dropout} and drop_path={cfg.drop_path} must be in [0, 1), blocks={cfg.blocks} >= 0"
            )
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, p
        self.latent_dim_end, self.stages, self.latent_dim = latent_dim_end, stages, latent_dim
        dim = cfg.hidden
        self.num_patches = (image_size // p) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        n = cfg.blocks
        rates = [cfg.drop_path * i / max(n - 1, 1) for i in range(n)]
        self.blocks = nn.Sequential(*[TransformerBlock(dim, cfg.heads, cfg.dropout, r) for r in rates])
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(dim, latent_dim_end + stages * latent_dim)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        expected = (self.in_channels, self.image_size, self.image_size)
        if inputs.dim() != 4 or tuple(inputs.shape[1:]) != expected:
            raise DataError(f"the ViT conditioner expects images [B, {', '.join(map(str, expected))}], got {list(inputs.shape)}")
        t = self.patch_embed(inputs).flatten(2).transpose(1, 2) + self.pos_embed
        f = self.norm(self.blocks(t)).mean(dim=1)
        return split_latents(self.head(self.drop(f)), self.latent_dim_end, self.stages, self.latent_dim)
