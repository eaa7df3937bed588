"""MLP latent conditioner: a case's design-parameter vector ``[B, P]`` -> ``(z [B, Z], xs [B, S, L])``.

::

    h = GELU(Linear(x))                                     [B, H]      (H = cfg.hidden)
    h = h + Linear(Dropout_i(GELU(Linear(LayerNorm(h)))))   x cfg.blocks (inner width 2H)
    out = Linear(LayerNorm(h))                              [B, Z + S*L] -> z, xs

Progressive dropout: block ``i`` (0-based) of ``n`` drops with ``p_i = cfg.dropout * (i + 1) / n``,
so the first blocks keep most of the (few) input features and the last one uses the full rate
(the seed's 0.3). The dropout layers are plain :class:`torch.nn.Dropout`, so putting them in
training mode at predict time gives Monte-Carlo dropout samples. Inputs are expected standardised
(``ParamScaler``). The defaults (H = 256, 4 blocks) are 1.1 M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import ConditionerConfig
from fabml.surrogate.models.blocks import split_latents


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual MLP block ``h + W2 Dropout(GELU(W1 LayerNorm(h)))`` on ``[B, H]``."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(self.drop(self.act(self.fc1(self.norm(h)))))


class MLPConditioner(nn.Module):
    """Parameter vector [B, in_features] -> (z [B, latent_dim_end], xs [B, stages, latent_dim])."""

    def __init__(
        self,
        in_features: int,
        latent_dim_end: int = 32,
        stages: int = 4,
        latent_dim: int = 8,
        cfg: ConditionerConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or ConditionerConfig()
        if in_features < 1:
            raise ConfigError(f"the MLP conditioner needs at least one input parameter, got {in_features}")
        if cfg.hidden < 1 or cfg.blocks < 0 or not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(
                f"conditioner.hidden={cfg.hidden}, blocks={cfg.blocks}, dropout={cfg.dropout}: "
                "need hidden >= 1, blocks >= 0 and 0 <= dropout < 1"
            )
        self.in_features, self.latent_dim_end, self.stages, self.latent_dim = in_features, latent_dim_end, stages, latent_dim
        self.stem = nn.Sequential(nn.Linear(in_features, cfg.hidden), nn.GELU())
        n = cfg.blocks
        self.blocks = nn.Sequential(*[ResidualMLPBlock(cfg.hidden, cfg.dropout * (i + 1) / n) for i in range(n)])
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, latent_dim_end + stages * latent_dim)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        if inputs.dim() != 2 or inputs.shape[1] != self.in_features:
            raise DataError(f"the MLP conditioner expects parameters [B, {self.in_features}], got {list(inputs.shape)}")
        out = self.head(self.norm(self.blocks(self.stem(inputs))))
        return split_latents(out, self.latent_dim_end, self.stages, self.latent_dim)
