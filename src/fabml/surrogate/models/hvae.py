"""Hierarchical VAE over simulation fields ``[B, V, T, M]`` (V variables, T time steps, M nodes).

Layout. The network is a 2-D convolutional encoder/decoder over two axes (A, B):

- ``layout="1d"``: channels = V, axes = (T, M): time and the node index are both convolved, so
  neighbouring node numbers are treated as spatial neighbours (order nodes along the geometry,
  e.g. by a space-filling curve, for this to hold).
- ``layout="grid"``: M = H*W nodes in row-major order on a regular grid ``grid_shape=(H, W)``;
  the input is reshaped to ``[B, V*T, H, W]`` (time steps become channels) and axes = (H, W).

Callers always pass and receive ``[B, V, T, M]``.

Stages. ``filters`` lists the widths from the deepest (coarsest) level to the finest, as the
seed lists them (``small`` = 1024-512-256-128): the decoder goes 1024 -> 512 -> 256 -> 128 ->
data and the encoder mirrors it, so the widest layers run at the coarsest resolution and the
full-resolution tensors are only the input and the output (C_in channels each). Encoder stage
``i`` (0 = finest, width ``filters[S-1-i]``) is a strided conv (stride ``s = 2**h`` on each axis,
kernel ``s + 2``, padding 1) followed by ``blocks`` pre-activation residual blocks
(GroupNorm-SiLU-conv twice, last conv zero-initialised). The main path carries no normalisation,
only the residual branches do: a GroupNorm on the main path would map a field and twice that
field to nearly the same features, and the field's amplitude is what the VAE must reproduce
(measured on Darcy 16x16: removing it lowered the reconstruction error at equal epochs). The
halvings per axis are ``k = max(min(S, floor(log2 n)), floor(log2(n / 4)))`` for an axis of
``n > 1`` positions (0 for ``n = 1``: no stride on a singleton axis), spread over the stages
front-loaded (downsample early): one halving per stage while the axis allows it, and larger
strides when the axis is long, which keeps the bottleneck below 8 positions per axis. The input
is padded (replicate) to a multiple of ``2**k`` per axis and the output cropped back, so any T,
M work. A 3-tap kernel on an axis of size 1 is replaced by a 1-tap one.

Latents. The main latent ``z`` (``latent_dim_end``) comes from the flattened deepest features;
the hierarchical latent of stage ``i`` (``latent_dim``) from that stage's features averaged onto
a coarse grid of at most 4 x 4 cells (so it can say *where* as well as *how much*): ``xs`` is
``[B, S, L]`` with ``xs[:, i]`` belonging to stage ``i`` (0 = finest). The decoder maps ``z`` to
the deepest feature map and reconstructs progressively; at each level it injects that level's
hierarchical latent as a skip connection
``h <- h * (1 + gamma(xs_i)) + beta(xs_i) + up(paint(xs_i))`` (FiLM ``gamma``/``beta`` per
channel, and ``paint`` a linear map to a <= 4 x 4 grid of channel values, bilinearly upsampled to
the level's resolution; all zero-initialised, so a fresh decoder starts from ``z`` alone), then
residual blocks, then a transposed conv up to the next finer level. The output layer is linear
(no tanh): data scaled to [-0.7, 0.7] sits well inside the range a linear output reaches, and a
tanh would flatten the gradient near the extremes of the data.

Size. With ``P_0 = A_pad * B_pad`` padded positions, ``P_i`` the positions after stage ``i``
and ``w_i`` its width, the tensors kept for the backward pass per case (float32) are::

    activations ~= 4 bytes * [2 * C_in * P_0 + kappa * sum_i w_i * P_i],   kappa ~= 4 + 12 * blocks

(encoder + decoder; measured with saved-tensor hooks: kappa = 16 for ``small``, 28 for
``large``). With ``gradient_checkpointing`` only each stage's input is kept and one stage is
recomputed at a time (measured: about ``2 * sum_i w_i * P_i`` kept, plus one stage's
``kappa / 2 * w_i * P_i`` while it is recomputed). Parameters: per stage ``C_prev * w_i *
(s_A + 2)(s_B + 2)`` (strided conv; the same again for the transposed conv) ``+ 4 * blocks * 9 *
w_i**2`` (residual blocks, encoder and decoder) ``+ 3 * Z * w_deepest * P_S`` (main-latent heads);
:meth:`HierarchicalVAE.describe` gives the exact figures for a built model (build it on the
``meta`` device to plan without memory). Example (an estimate): the seed's largest case, V=1,
T=200, M=95,008, ``small``: T is padded to 224 (strides 4,2,2,2), M to 98,304 (strides
16,16,8,8); P_0 = 22.0 M, sum_i w_i P_i = 47.2 M, so ~3.2 GB of activations per case (~2.0 GB
with checkpointing) beside 111.6 M parameters (~1.8 GB with AdamW state and gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import LAYOUTS, VAEConfig
from fabml.surrogate.models.blocks import ResBlock2d

#: preset -> (filters from the deepest level to the finest, residual blocks per stage)
VAE_PRESETS: dict[str, tuple[list[int], int]] = {
    "small": ([1024, 512, 256, 128], 1),  # the seed's encoder filters
    "large": ([1024, 1024, 512, 256, 128], 2),  # one more stage and twice the residual blocks
}
#: an axis longer than this many positions at the bottleneck gets larger strides
MAX_BOTTLENECK = 4
#: the hierarchical latents see / paint a grid of at most this many cells per axis
LATENT_CELLS = 4
#: logvar heads are clamped to this range before use (exp stays finite in fp16 and fp32)
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class VAEEncoding:
    """Posterior parameters: ``mu``/``logvar`` [B, Z]; ``xs_mu``/``xs_logvar`` [B, S, L]."""

    mu: Tensor
    logvar: Tensor
    xs_mu: Tensor
    xs_logvar: Tensor


@dataclass
class VAEOutput:
    """``recon`` [B, V, T, M]; posterior ``mu``/``logvar`` [B, Z], ``xs_mu``/``xs_logvar`` [B, S, L];
    the latents decoded: ``z`` [B, Z], ``xs`` [B, S, L] (samples, or the means when ``sample=False``)."""

    recon: Tensor
    mu: Tensor
    logvar: Tensor
    xs_mu: Tensor
    xs_logvar: Tensor
    z: Tensor
    xs: Tensor


def axis_halvings(size: int, stages: int) -> list[int]:
    """Halvings per stage along one axis of ``size`` positions (front-loaded; see module doc)."""
    if size <= 1:
        return [0] * stages
    total = max(min(stages, int(math.floor(math.log2(size)))), int(math.floor(math.log2(size / MAX_BOTTLENECK))))
    out: list[int] = []
    left = total
    for i in range(stages):
        h = math.ceil(left / (stages - i))
        out.append(h)
        left -= h
    return out


def resolve_filters(cfg: VAEConfig) -> tuple[list[int], int]:
    """``(filters deepest-first, residual blocks per stage)`` from the preset and ``filters``."""
    if cfg.preset not in VAE_PRESETS:
        raise ConfigError(f"vae.preset={cfg.preset!r} is unknown; use one of {sorted(VAE_PRESETS)}")
    filters, blocks = VAE_PRESETS[cfg.preset]
    if cfg.filters:
        filters = [int(f) for f in cfg.filters]
    if not filters or any(f < 1 for f in filters):
        raise ConfigError(f"vae.filters={list(filters)} must be a non-empty list of positive widths")
    if cfg.latent_dim_end < 1 or cfg.latent_dim < 1:
        raise ConfigError(
            f"vae.latent_dim_end={cfg.latent_dim_end} and vae.latent_dim={cfg.latent_dim} must both be >= 1"
        )
    return list(filters), blocks


def _axis_conv(stride: int, size: int) -> tuple[int, int]:
    """(kernel, padding) of a stage's strided / transposed conv along one axis."""
    if stride > 1:
        return stride + 2, 1
    return (3, 1) if size > 1 else (1, 0)


class EncoderStage(nn.Module):
    """Strided conv (``[B, C_in, a, b] -> [B, w, a/s_a, b/s_b]``) + residual blocks.

    The main path carries no normalisation (only the residual branches normalise), so the
    amplitude of the field survives to the latent: a GroupNorm on the main path would map a field
    and twice that field to nearly the same features."""

    def __init__(
        self, c_in: int, width: int, stride: tuple[int, int], in_sizes: tuple[int, int],
        out_sizes: tuple[int, int], blocks: int,
    ):
        super().__init__()
        (ka, pa), (kb, pb) = _axis_conv(stride[0], in_sizes[0]), _axis_conv(stride[1], in_sizes[1])
        self.down = nn.Conv2d(c_in, width, (ka, kb), stride=stride, padding=(pa, pb))
        self.blocks = nn.Sequential(*[ResBlock2d(width, out_sizes) for _ in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.down(x))


class DecoderLevel(nn.Module):
    """FiLM injection of one stage's hierarchical latent, residual blocks, SiLU, then a transposed
    conv to the next finer level (``[B, w, a, b] -> [B, c_out, a*s_a, b*s_b]``; the output layer
    for level 0). No normalisation on the main path (see :class:`EncoderStage`)."""

    def __init__(
        self, width: int, c_out: int, stride: tuple[int, int], in_sizes: tuple[int, int],
        out_sizes: tuple[int, int], latent_dim: int, blocks: int,
    ):
        super().__init__()
        self.film = nn.Linear(latent_dim, 2 * width)
        self.cells = (min(LATENT_CELLS, in_sizes[0]), min(LATENT_CELLS, in_sizes[1]))
        self.paint = nn.Linear(latent_dim, width * self.cells[0] * self.cells[1])
        for lin in (self.film, self.paint):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.blocks = nn.Sequential(*[ResBlock2d(width, in_sizes) for _ in range(blocks)])
        self.act = nn.SiLU()
        (ka, pa), (kb, pb) = _axis_conv(stride[0], out_sizes[0]), _axis_conv(stride[1], out_sizes[1])
        self.up = nn.ConvTranspose2d(width, c_out, (ka, kb), stride=stride, padding=(pa, pb))

    def forward(self, h: Tensor, xs_i: Tensor) -> Tensor:
        gamma, beta = self.film(xs_i).chunk(2, dim=1)
        coarse = self.paint(xs_i).view(h.shape[0], h.shape[1], *self.cells)
        if self.cells != tuple(h.shape[2:]):
            coarse = F.interpolate(coarse, size=h.shape[2:], mode="bilinear", align_corners=False)
        h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None] + coarse
        return self.up(self.act(self.blocks(h)))


class Encoder(nn.Module):
    """``[B, C_in, A_pad, B_pad] -> VAEEncoding`` (stages, hierarchical heads, main head).
    ``sizes[i]`` is the resolution entering stage ``i`` (``sizes[S]`` the deepest)."""

    def __init__(
        self, c_in: int, widths: list[int], strides: list[tuple[int, int]], sizes: list[tuple[int, int]],
        blocks: int, latent_dim_end: int, latent_dim: int, checkpointing: bool,
    ):
        super().__init__()
        chans = [c_in] + widths
        self.stages = nn.ModuleList(
            EncoderStage(chans[i], widths[i], strides[i], sizes[i], sizes[i + 1], blocks) for i in range(len(widths))
        )
        self.cells = [(min(LATENT_CELLS, a), min(LATENT_CELLS, b)) for a, b in sizes[1:]]
        self.xs_heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(c), nn.Flatten(), nn.Linear(w * c[0] * c[1], 2 * latent_dim))
            for w, c in zip(widths, self.cells)
        )
        deepest = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.head = nn.Linear(deepest, 2 * latent_dim_end)
        self.checkpointing = checkpointing

    def forward(self, x: Tensor) -> VAEEncoding:
        h = x
        xs = []
        for stage, head in zip(self.stages, self.xs_heads):
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(stage, h, use_reentrant=False)
            else:
                h = stage(h)
            xs.append(head(h))
        mu, logvar = self.head(h.flatten(1)).chunk(2, dim=1)
        xs_mu, xs_logvar = torch.stack(xs, dim=1).chunk(2, dim=2)
        return VAEEncoding(mu, logvar.clamp(*LOGVAR_RANGE), xs_mu, xs_logvar.clamp(*LOGVAR_RANGE))


class Decoder(nn.Module):
    """``(z [B, Z], xs [B, S, L]) -> [B, C_in, A_pad, B_pad]``, deepest level first; ``sizes`` as
    for :class:`Encoder`."""

    def __init__(
        self, c_in: int, widths: list[int], strides: list[tuple[int, int]], sizes: list[tuple[int, int]],
        blocks: int, latent_dim_end: int, latent_dim: int, checkpointing: bool,
    ):
        super().__init__()
        self.bottleneck = (widths[-1], sizes[-1][0], sizes[-1][1])
        self.fc = nn.Linear(latent_dim_end, widths[-1] * sizes[-1][0] * sizes[-1][1])
        chans = [c_in] + widths
        # levels[i] works at stage i's output resolution and goes up to stage i's input resolution
        self.levels = nn.ModuleList(
            DecoderLevel(widths[i], chans[i], strides[i], sizes[i + 1], sizes[i], latent_dim, blocks)
            for i in range(len(widths))
        )
        self.checkpointing = checkpointing

    def forward(self, z: Tensor, xs: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], *self.bottleneck)
        for i in reversed(range(len(self.levels))):
            level = self.levels[i]
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(level, h, xs[:, i], use_reentrant=False)
            else:
                h = level(h, xs[:, i])
        return h


class HierarchicalVAE(nn.Module):
    """Hierarchical VAE: ``[B, V, T, M] -> (z [B, Z], xs [B, S, L]) -> [B, V, T, M]``; see module doc.

    ``stages`` = len(filters); ``latent_dim_end`` = Z; ``latent_dim`` = L. Submodules ``encoder``
    and ``decoder`` (e2e freezes the whole ``vae``).
    """

    def __init__(
        self,
        variables: int,
        time_steps: int,
        nodes: int,
        cfg: VAEConfig,
        layout: str = "1d",
        grid_shape: tuple[int, int] | list[int] | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout={layout!r} is unknown; use one of {list(LAYOUTS)}")
        if min(variables, time_steps, nodes) < 1:
            raise ConfigError(f"field shape V={variables}, T={time_steps}, M={nodes} must be positive")
        filters, blocks = resolve_filters(cfg)
        self.variables, self.time_steps, self.nodes, self.layout = variables, time_steps, nodes, layout
        if layout == "grid":
            if not grid_shape or len(grid_shape) != 2 or int(grid_shape[0]) * int(grid_shape[1]) != nodes:
                raise ConfigError(
                    f"data.grid_shape={list(grid_shape or [])} must be [H, W] with H*W = {nodes} nodes for layout 'grid'"
                )
            self.grid_shape: tuple[int, int] | None = (int(grid_shape[0]), int(grid_shape[1]))
            c_in, axes = variables * time_steps, self.grid_shape
        else:
            self.grid_shape = None
            c_in, axes = variables, (time_steps, nodes)
        self.stages = len(filters)
        self.latent_dim_end = cfg.latent_dim_end
        self.latent_dim = cfg.latent_dim
        self.filters = filters
        self.blocks_per_stage = blocks
        self.in_channels = c_in
        self.axes = axes
        ha, hb = axis_halvings(axes[0], self.stages), axis_halvings(axes[1], self.stages)
        fa, fb = 2 ** sum(ha), 2 ** sum(hb)
        self.padded = (math.ceil(axes[0] / fa) * fa, math.ceil(axes[1] / fb) * fb)
        self.strides = [(2**a, 2**b) for a, b in zip(ha, hb)]
        sizes: list[tuple[int, int]] = []
        a, b = self.padded
        for sa, sb in self.strides:
            a, b = a // sa, b // sb
            sizes.append((a, b))
        self.level_sizes = sizes  # resolution after each encoder stage
        widths = list(reversed(filters))  # finest first
        args = (c_in, widths, self.strides, [self.padded] + sizes, blocks, cfg.latent_dim_end, cfg.latent_dim,
                cfg.gradient_checkpointing)
        self.encoder = Encoder(*args)
        self.decoder = Decoder(*args)

    # ----------------------------------------------------------------- layout
    def _to_net(self, x: Tensor) -> Tensor:
        """[B, V, T, M] -> padded network input [B, C_in, A_pad, B_pad]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.variables, self.time_steps, self.nodes):
            raise DataError(
                f"the VAE expects fields [B, V={self.variables}, T={self.time_steps}, M={self.nodes}], "
                f"got {list(x.shape)}"
            )
        if self.layout == "grid":
            assert self.grid_shape is not None
            x = x.reshape(x.shape[0], self.in_channels, *self.grid_shape)
        pa, pb = self.padded[0] - self.axes[0], self.padded[1] - self.axes[1]
        if pa or pb:
            x = F.pad(x, (0, pb, 0, pa), mode="replicate")
        return x

    def _from_net(self, h: Tensor) -> Tensor:
        """padded network output -> [B, V, T, M] (crop, then undo the grid reshape)."""
        h = h[:, :, : self.axes[0], : self.axes[1]]
        return h.reshape(h.shape[0], self.variables, self.time_steps, self.nodes)

    # ----------------------------------------------------------------- API
    def encode(self, x: Tensor) -> VAEEncoding:
        """Posterior of fields ``x`` [B, V, T, M]."""
        return self.encoder(self._to_net(x))

    def decode(self, z: Tensor, xs: Tensor) -> Tensor:
        """Fields [B, V, T, M] from the main latent ``z`` [B, Z] and hierarchical latents ``xs`` [B, S, L]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim_end or tuple(xs.shape[1:]) != (self.stages, self.latent_dim):
            raise DataError(
                f"decode expects z [B, {self.latent_dim_end}] and xs [B, {self.stages}, {self.latent_dim}], "
                f"got {list(z.shape)} and {list(xs.shape)}"
            )
        return self._from_net(self.decoder(z, xs))

    @staticmethod
    def reparameterise(mu: Tensor, logvar: Tensor) -> Tensor:
        """``mu + eps * exp(logvar / 2)``, eps ~ N(0, I)."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: Tensor, sample: bool = True) -> VAEOutput:
        """Encode, sample (or take the means when ``sample=False``), decode."""
        enc = self.encode(x)
        if sample:
            z, xs = self.reparameterise(enc.mu, enc.logvar), self.reparameterise(enc.xs_mu, enc.xs_logvar)
        else:
            z, xs = enc.mu, enc.xs_mu
        recon = self.decode(z, xs)
        return VAEOutput(recon, enc.mu, enc.logvar, enc.xs_mu, enc.xs_logvar, z, xs)

    def describe(self) -> dict[str, object]:
        """Sizes a user plans memory with: parameters, padded axes, strides, positions per stage and
        the activation estimate of the module docstring (float32 bytes per case kept for the backward
        pass, without and with gradient checkpointing)."""
        widths = list(reversed(self.filters))
        wp = [w * a * b for w, (a, b) in zip(widths, self.level_sizes)]
        p0 = self.padded[0] * self.padded[1]
        kappa = 4 + 12 * self.blocks_per_stage
        return {
            "parameters": sum(p.numel() for p in self.parameters()),
            "layout": self.layout,
            "in_channels": self.in_channels,
            "axes": list(self.axes),
            "padded": list(self.padded),
            "strides": [list(s) for s in self.strides],
            "level_sizes": [list(s) for s in self.level_sizes],
            "widths_fine_to_coarse": widths,
            "sum_width_positions": int(sum(wp)),
            "activation_bytes_per_case": int(4 * (2 * self.in_channels * p0 + kappa * sum(wp))),
            "activation_bytes_per_case_checkpointed": int(
                4 * (2 * self.in_channels * p0 + 2 * sum(wp) + kappa / 2 * max(wp))
            ),
        }
