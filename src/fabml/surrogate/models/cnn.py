"""CNN latent conditioner: a case's image ``[B, C, S, S]`` -> ``(z [B, Z], xs [B, stages, L])``.

::

    h = SiLU(GN(conv3x3(x)))                               [B, W0, S, S]   (W0 = cfg.hidden)
    h = SEResBlock(h), stride 1                            x cfg.full_res_blocks   [B, W0, S, S]
    h = SEResBlock_i(h)                                    x cfg.blocks
    f = AdaptiveAvgPool(h, 4x4).flatten()                  [B, W * 16]  (W = last block's width; fewer cells if S < 4)
    out = Linear(Dropout(SiLU(Linear(Dropout(f)))))       [B, Z + S*L] -> z, xs   (inner width W)

A residual block (ResNet "basic" block) is ``SiLU(shortcut(h) + SE(GN(conv(SiLU(GN(conv(h)))))))``
with spectrally normalised 3x3 convs (Miyato et al. 2018: each conv's largest singular value is
kept at 1, which keeps the image-to-latent map smooth in its input) and a squeeze-and-excitation
gate. Block ``i`` halves the resolution (stride 2, channels doubled up to ``4 * W0``) while the
map is larger than the 4x4 pooling grid; the shortcut is a strided 1x1 conv when the shape changes.
``full_res_blocks`` (default 0, the seed's CNN) first adds blocks at the input resolution: on small
images they let the features mix before the first halving (measured on Darcy 16x16, CNN hidden 32,
3 strided blocks, e2e with ``data.symmetry=transpose``: 3 such blocks lowered the selection-slice
relative L2 from 0.121 to 0.117 for 6% more parameters; 4 Fourier layers in their place did not help,
0.123).
Pooling to a 4x4 grid rather than a single cell keeps where things are in the image, which the
field depends on. The two dropouts are plain :class:`torch.nn.Dropout` (``cfg.dropout``; Monte-Carlo
dropout at predict time).

Cost per image (measured with ``torch.utils.flop_counter``, ``blocks = 4``): ``hidden = 32`` on
16x16 images 17 M multiply-adds and 1.2 M parameters, on 64x64 images 144 M and 1.2 M;
``hidden = 256`` (the config default, a GPU size) on 64x64 images 9.1 G and 77 M. Roughly
``9 * sum_i C_i^2 * P_i`` (C_i channels, P_i positions of block i): the cost grows with
``hidden**2`` and with the image area.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import ConditionerConfig
from fabml.surrogate.models.blocks import SqueezeExcite, group_norm, split_latents

#: the feature map is pooled to this many cells per side before the heads
POOL_CELLS = 4


class SEResBlock(nn.Module):
    """ResNet basic block with GroupNorm, spectral norm, squeeze-and-excitation and SiLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False))
        self.norm1 = group_norm(c_out)
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False))
        self.norm2 = group_norm(c_out)
        self.se = SqueezeExcite(c_out)
        self.act = nn.SiLU()
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), group_norm(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.se(self.norm2(self.conv2(h)))
        return self.act(self.shortcut(x) + h)


class CNNConditioner(nn.Module):
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
        if in_channels < 1 or image_size < 1:
            raise ConfigError(f"the CNN conditioner needs images with channels >= 1 and size >= 1, got {in_channels}, {image_size}")
        if cfg.hidden < 1 or cfg.blocks < 0 or cfg.full_res_blocks < 0 or not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(
                f"conditioner.hidden={cfg.hidden}, blocks={cfg.blocks}, full_res_blocks={cfg.full_res_blocks}, "
                f"dropout={cfg.dropout}: need hidden >= 1, blocks >= 0, full_res_blocks >= 0 and 0 <= dropout < 1"
            )
        self.in_channels, self.image_size = in_channels, image_size
        self.latent_dim_end, self.stages, self.latent_dim = latent_dim_end, stages, latent_dim
        width = cfg.hidden
        full_res = [SEResBlock(width, width, 1) for _ in range(cfg.full_res_blocks)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), group_norm(width), nn.SiLU(),
                                  *full_res)
        blocks: list[nn.Module] = []
        size = image_size
        for _ in range(cfg.blocks):
            stride = 2 if size > POOL_CELLS else 1
            out = min(width * stride, 4 * cfg.hidden)
            blocks.append(SEResBlock(width, out, stride))
            width, size = out, (size + stride - 1) // stride
        self.blocks = nn.Sequential(*blocks)
        cells = min(POOL_CELLS, size)
        self.pool = nn.AdaptiveAvgPool2d(cells)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(width * cells * cells, width),
            nn.SiLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(width, latent_dim_end + stages * latent_dim),
        )

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        if inputs.dim() != 4 or inputs.shape[1] != self.in_channels:
            raise DataError(
                f"the CNN conditioner expects images [B, {self.in_channels}, H, W], got {list(inputs.shape)}"
            )
        out = self.head(self.pool(self.blocks(self.stem(inputs))))
        return split_latents(out, self.latent_dim_end, self.stages, self.latent_dim)
