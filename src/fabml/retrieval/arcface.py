"""ArcFace: additive angular margin logits (Deng et al., CVPR 2019).

For an embedding x [D] and class weights W [C, D], with x̂ = x/|x| and ŵ_j = w_j/|w_j|::

    cos θ_j = <x̂, ŵ_j>                                 in [-1, 1]
    logit_j = s · cos θ_j                               for j ≠ y
    logit_y = s · ψ(θ_y)                                for the target class y

    ψ(θ) = cos(θ + m) = cos θ · cos m − sin θ · sin m   when θ + m ≤ π  (i.e. cos θ > cos(π − m))
    ψ(θ) = cos θ − m · sin m                            otherwise

The second line is the "th / mm" fallback of the reference implementation (not the easy
margin, which would use cos θ whenever cos θ ≤ 0): past θ = π − m, cos(θ + m) would rise
again with θ and reward a larger angle; ``cos θ − m sin m`` keeps the target logit decreasing in
θ and continuous at θ = π − m to within O(m²). sin θ = sqrt(1 − cos² θ) with cos θ clamped to
[−1 + 1e-7, 1 − 1e-7], so the gradient stays finite. The loss is the softmax cross-entropy of
these logits. m = 0 gives the plain normalised-softmax (cosine) classifier ``s · cos θ``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fabml.errors import ConfigError, DataError

_EPS = 1e-7


def arcface_logits(cosine: Tensor, labels: Tensor, s: float, m: float) -> Tensor:
    """ArcFace logits from cosines [B, C] and target indices [B] (int64) -> [B, C] (equations above)."""
    cosine = cosine.clamp(-1.0 + _EPS, 1.0 - _EPS)
    if m == 0.0:
        return s * cosine
    target = cosine.gather(1, labels[:, None])
    sine = torch.sqrt(1.0 - target * target)
    phi = target * math.cos(m) - sine * math.sin(m)  # cos(θ + m)
    phi = torch.where(target > math.cos(math.pi - m), phi, target - m * math.sin(m))
    return s * cosine.scatter(1, labels[:, None], phi)


class ArcFaceHead(nn.Module):
    """Class weights W [num_classes, embedding_dim] and the ArcFace logits of the module docstring.

    ``margin`` (m, radians) is a plain attribute, set by the training method per epoch (it is a
    function of the epoch, so it is not saved in the state dict); ``s`` is the scale.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"ArcFace needs at least 2 classes, got {num_classes}: check the training data")
        if s <= 0:
            raise ConfigError(f"model.arcface_s={s} must be > 0")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.s = float(s)
        self.margin = float(m)

    @property
    def margin(self) -> float:
        """Additive angular margin m in radians, in [0, π/2]."""
        return self._margin

    @margin.setter
    def margin(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= math.pi / 2:
            raise ConfigError(f"ArcFace margin {value} must be in [0, pi/2] radians (model.arcface_m_*)")
        self._margin = value

    def cosine(self, x: Tensor) -> Tensor:
        """cos θ [B, C] between embeddings x [B, D] (any norm) and the class weights, in fp32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """x [B, D], labels [B] int64 in [0, C) -> ArcFace logits [B, C] (fp32)."""
        return self.logits(self.cosine(x), labels)

    def logits(self, cosine: Tensor, labels: Tensor) -> Tensor:
        """ArcFace logits [B, C] from cosines [B, C] (:meth:`cosine`) and labels [B] in [0, C)."""
        if ((labels < 0) | (labels >= self.weight.shape[0])).any():  # one device sync per step
            raise DataError(
                f"training labels must lie in [0, {self.weight.shape[0]}), got {int(labels.min())}..{int(labels.max())}"
            )
        return arcface_logits(cosine, labels.long(), self.s, self._margin)
