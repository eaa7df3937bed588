"""The wafer-map encoder (ResNet-style) and the MLP heads BYOL puts on top of it.

Input coding and the outline shortcut: a map's wafer outline and die-grid size identify it on
their own, so an encoder that sees the outline can match maps without looking at the failure
pattern. By default the encoder therefore sees the failed-die channel only (``in_chans=1``,
``outline_channel=False``); the optional radial channel gives each pixel its distance from the
wafer centre (Center vs Edge-Ring) without revealing the outline. Augmentations that blur the
die grid are in :mod:`fabml.wafer.augment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fabml.errors import ConfigError, DataError

ENCODER_PRESETS: dict[str, tuple[list[int], list[int]]] = {
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512]),  # the seed's encoder: 512-d output
    "small": ([1, 1, 1, 1], [32, 64, 128, 256]),  # CPU-friendly: 256-d output
    "tiny": ([1, 1, 1, 1], [16, 32, 64, 128]),  # tests and smoke runs: 128-d output
}
MIN_INPUT_SIZE = 16


@dataclass
class EncoderConfig:
    """Encoder settings (YAML section ``model``).

    preset: one of ``resnet18`` | ``small`` | ``tiny`` (blocks per stage and stage widths).
    layers / widths: override the preset's blocks per stage / channels per stage (same length).
    in_chans: data channels the encoder sees: 1 (failed dies) or 2 (failed dies + wafer outline).
    radial_channel: append a fixed map of distance from the centre (0 at centre, 1 at the edge of
        the inscribed circle) as an extra input channel.
    attention: one multi-head self-attention block after the third stage.
    attention_heads: heads of that block (must divide the third stage's width).
    stem: ``small`` (3x3 conv, stride 1, no max-pool; for 32-128 px maps) or ``imagenet``
        (7x7 conv stride 2 + max-pool; 4x cheaper at 128 px and above).
    zero_init_residual: start every residual branch at zero (each block begins as identity).
    """

    preset: str = "resnet18"
    layers: list[int] | None = None
    widths: list[int] | None = None
    in_chans: int = 1
    radial_channel: bool = False
    attention: bool = False
    attention_heads: int = 4
    stem: str = "small"
    zero_init_residual: bool = True

    def resolved(self) -> tuple[list[int], list[int]]:
        """(blocks per stage, width per stage) after applying overrides; raises ConfigError when invalid."""
        if self.preset not in ENCODER_PRESETS:
            raise ConfigError(f"model.preset={self.preset!r} is unknown; use one of {sorted(ENCODER_PRESETS)}")
        layers, widths = ENCODER_PRESETS[self.preset]
        layers = list(self.layers) if self.layers is not None else list(layers)
        widths = list(self.widths) if self.widths is not None else list(widths)
        if len(layers) != len(widths) or not layers:
            raise ConfigError(f"model.layers {layers} and model.widths {widths} must be non-empty and of equal length")
        if min(layers) < 1 or min(widths) < 1:
            raise ConfigError(f"model.layers {layers} and model.widths {widths} must be positive")
        if self.stem not in ("small", "imagenet"):
            raise ConfigError(f"model.stem={self.stem!r} is unknown; use 'small' or 'imagenet'")
        if self.in_chans not in (1, 2):
            raise ConfigError(f"model.in_chans={self.in_chans} must be 1 (failed dies) or 2 (with outline)")
        if self.attention:
            if len(widths) < 3:
                raise ConfigError(f"model.attention needs at least 3 stages, got model.layers {layers}")
            if widths[2] % self.attention_heads:
                raise ConfigError(
                    f"model.attention_heads={self.attention_heads} must divide the third stage width {widths[2]}"
                )
        return layers, widths


def radial_map(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Distance of each pixel centre from the image centre, ``[H,W]``, in units of the inscribed
    circle's radius (0 at the centre, 1 on the circle, up to ~1.41 in the corners)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) - height / 2
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) - width / 2
    r = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    return r / (min(height, width) / 2)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with a residual connection; ``[B,Cin,H,W] -> [B,Cout,H/s,W/s]``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class RadialSelfAttention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, pre-norm with a residual.

    Position enters as Fourier features of the radial distance (a learned linear map of
    ``sin/cos(pi * f * r)``), not as a learned absolute embedding: it works for any input size
    and, like the patterns it describes, does not change under the D4 rotations/flips.
    ``[B,C,H,W] -> [B,C,H,W]``.
    """

    n_freqs = 8

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.pos = nn.Linear(2 * self.n_freqs, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        # The residual branch starts at zero so the block is the identity at initialisation.
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        r = radial_map(h, w, x.device).flatten()  # [HW]
        freqs = math.pi * torch.arange(1, self.n_freqs + 1, device=x.device, dtype=torch.float32)
        angles = r[:, None] * freqs[None, :]
        pos = self.pos(torch.cat([angles.sin(), angles.cos()], dim=1))  # [HW,C]
        tokens = x.flatten(2).transpose(1, 2)  # [B,HW,C]
        q = self.norm(tokens + pos.to(tokens.dtype))
        out, _ = self.attn(q, q, q, need_weights=False)
        tokens = tokens + out
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class WaferEncoder(nn.Module):
    """ResNet-style encoder of wafer maps: ``[B,in_chans,H,W] float -> [B,out_dim]`` (global average pool).

    Any ``H, W >= 16`` works. ``out_dim`` equals the last stage's width (512 for ``resnet18``).
    """

    def __init__(self, cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or EncoderConfig()
        layers, widths = cfg.resolved()
        self.out_dim = widths[-1]
        stem_in = cfg.in_chans + int(cfg.radial_channel)
        if cfg.stem == "small":
            self.stem = nn.Sequential(
                nn.Conv2d(stem_in, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(stem_in, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages = []
        in_ch = widths[0]
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(in_ch, width, 1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.attention = RadialSelfAttention(widths[2], cfg.attention_heads) if cfg.attention else None
        # Cached radial map for the last input size; not saved (it is recomputed from the size).
        self.register_buffer("radial", torch.zeros(0, 0), persistent=False)
        self._init_weights(cfg.zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _check_input(self, x: torch.Tensor) -> None:
        want = self.cfg.in_chans
        if x.ndim != 4 or x.shape[1] != want:
            raise DataError(
                f"expected {want}-channel maps [B,{want},H,W] (outline_channel={want == 2}), got shape "
                f"{tuple(x.shape)}; set model.in_chans to match data.outline_channel"
            )
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise DataError(f"maps must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} px, got {tuple(x.shape[-2:])}")

    def _with_radial(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.radial.shape != (h, w) or self.radial.device != x.device:
            self.radial = radial_map(h, w, x.device)
        r = self.radial.to(x.dtype).expand(x.shape[0], 1, h, w)
        return torch.cat([x, r], dim=1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features before pooling: ``[B,C,H,W] -> [B,out_dim,h,w]``."""
        self._check_input(x)
        if self.cfg.radial_channel:
            x = self._with_radial(x)
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 2 and self.attention is not None:
                x = self.attention(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class MLPHead(nn.Module):
    """BYOL projector / predictor: Linear - BatchNorm1d - ReLU - Linear, ``[B,in_dim] -> [B,out_dim]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
