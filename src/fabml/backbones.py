"""timm backbones by name, built with random weights (this module reads no file).

``FeatureExtractor`` wraps ``timm.create_model(name, features_only=True, out_indices=layers)``:
it takes images in [0, 1], normalises them inside with the backbone's mean/std, handles
1-channel input, and is frozen (eval mode, no gradients) by default.
``create_backbone`` gives the plain timm model (e.g. a classifier).

Pretrained weights are a separate step: :func:`fabml.weights.load_pretrained` (a whole model:
every extractor built with ``pretrained=True``) or :func:`fabml.weights.load_pretrained_backbone`
(one backbone) resolve them offline and load them into the built module.
"""

from __future__ import annotations

from collections import OrderedDict

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fabml.errors import ConfigError, DataError

CHANNEL_MODES = ("repeat", "fold")


# ------------------------------------------------------------------------------- models


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown timm backbone '{name}' (setting model.backbone); see timm.list_models()")


def create_backbone(name: str, in_chans: int = 3, **timm_kwargs) -> nn.Module:
    """Plain ``timm.create_model(name, in_chans=..., **timm_kwargs)`` with random weights; load
    pretrained ones with :func:`fabml.weights.load_pretrained_backbone`. Inputs follow timm's
    convention (normalised with ``model.pretrained_cfg`` mean/std by the caller)."""
    import timm

    _check_name(name)
    return timm.create_model(name, pretrained=False, in_chans=in_chans, **timm_kwargs)


class _FoldedConv(nn.Module):
    """First conv of a 3-channel backbone fed a 1-channel image, with the per-channel
    normalisation folded in: for gray g, ``sum_c W_c * (g - m_c) / s_c`` equals
    ``conv(g, sum_c W_c / s_c) - conv(1, sum_c W_c m_c / s_c)``; the second term (zero padding
    included) is the same for every image, so the result equals repeat-then-normalise exactly.
    The 3-channel ``weight``/``bias`` stay the parameters under the conv's own names, so
    checkpoints are interchangeable with ``channel_mode="repeat"`` and training still works."""

    def __init__(self, conv: nn.Conv2d, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        from timm.layers import Conv2dSame

        self.same = isinstance(conv, Conv2dSame)  # TF "same" padding computed from the input size
        if not self.same and (type(conv).forward is not nn.Conv2d.forward or conv.padding_mode != "zeros"):
            raise ConfigError(
                f"cannot fold the first conv ({type(conv).__name__}) for 1-channel input: "
                "set model.channel_mode=repeat"
            )
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("inv_std", 1.0 / std.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.same:
            from timm.layers import conv2d_same

            return conv2d_same(x, weight, bias, self.stride, (0, 0), self.dilation)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, 1, H, W] raw gray in [0, 1] -> [B, C_out, H', W']."""
        w = self.weight * self.inv_std
        gain = self._conv(x, w.sum(1, keepdim=True), self.bias)
        offset = self._conv(torch.ones_like(x[:1]), (w * self.mean).sum(1, keepdim=True), None)
        return gain - offset


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute, conv) of the stem conv: timm's ``first_conv`` when it resolves
    in this model, else the first 3-input-channel ``Conv2d`` in module order."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = [cfg["first_conv"]] if isinstance(cfg.get("first_conv"), str) else []
    names += [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3]
    for full in names:
        try:
            conv = model.get_submodule(full)
        except AttributeError:
            continue
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1:
            parent_name, _, attr = full.rpartition(".")
            return model.get_submodule(parent_name), attr, conv
    raise ConfigError(
        "cannot fold the first conv of this backbone for 1-channel input: "
        "set model.channel_mode=repeat"
    )


class _BlockPrefix(nn.Sequential):
    """The blocks of a timm feature model, of which iteration yields only the first ``run``.

    timm's EfficientNet / MobileNetV3 feature models loop over *every* block even when the last
    ``out_indices`` stage ends earlier (e.g. EfficientNet-Lite0 with ``out_indices`` (2, 3) also runs
    its two last stages: about a quarter of its multiply-adds at 256 px). Their forward iterates
    ``self.blocks``; this container keeps every block (same names, so the state dict and weight
    loading are unchanged) and stops the iteration after the last block a feature comes from.
    """

    def __init__(self, blocks: nn.Sequential, run: int) -> None:
        super().__init__(OrderedDict(blocks.named_children()))  # same names ("0", "1", ...) and modules
        self.run = run

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._modules.values())[: self.run])


def _skip_unused_blocks(model: nn.Module) -> None:
    """Stop a timm EfficientNet-style feature model after its last used block (see :class:`_BlockPrefix`)."""
    stages = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if not isinstance(stages, dict) or not stages or not isinstance(blocks, nn.Sequential):
        return
    if getattr(model, "feature_hooks", None) is not None:
        return
    run = max(int(stage) for stage in stages)  # block i feeds stage i + 1
    if run < len(blocks):
        model.blocks = _BlockPrefix(blocks, run)


class FeatureExtractor(nn.Module):
    """Multi-scale features of a timm backbone for images in [0, 1].

    ``forward(x [B, in_chans, H, W]) -> list[Tensor]``, one ``[B, channels[i], H/r_i, W/r_i]``
    map per entry of ``layers`` (timm ``out_indices``), with ``r_i = reductions[i]``.
    Normalisation with the backbone's mean/std (ImageNet, or 0.5/0.5 for the
    efficientnet-lite weights) happens inside. 1-channel input: ``channel_mode="repeat"``
    repeats gray to 3 channels then normalises per channel; ``"fold"`` folds the repeat and
    the normalisation into the first conv (same output, the model takes 1 channel natively).

    Frozen by default: no gradients and eval mode; ``train()`` keeps it in eval mode (BatchNorm
    statistics never change) until it is unfrozen with ``unfreeze()`` or
    ``requires_grad_(True)``.

    Built with random weights. ``pretrained`` only records that this backbone should receive
    pretrained weights from the weights step (:func:`fabml.weights.load_pretrained`); nothing is
    looked up here.
    """

    def __init__(
        self,
        name: str,
        layers: Sequence[int],
        in_chans: int = 3,
        pretrained: bool = True,
        channel_mode: str = "repeat",
    ) -> None:
        import timm

        super().__init__()
        if channel_mode not in CHANNEL_MODES:
            raise ConfigError(
                f"model.channel_mode={channel_mode!r}: use one of {', '.join(CHANNEL_MODES)}"
            )
        if in_chans not in (1, 3):
            raise ConfigError(
                f"model.in_chans={in_chans}: backbone features need 1 (gray) or 3 (RGB) channels"
            )
        layers = [int(i) for i in layers]
        if not layers:
            raise ConfigError("model.layers is empty: give the timm out_indices to extract, e.g. [1, 2]")
        _check_name(name)
        try:
            model = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(layers))
        except (IndexError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model.layers={layers} do not exist in backbone '{name}' ({exc})") from exc
        self.name = name
        self.pretrained = bool(pretrained)
        self.layers = layers
        self.in_chans = in_chans
        self.channel_mode = channel_mode
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1))
        self.register_buffer("std", std.reshape(1, -1, 1, 1))
        self.folded = in_chans == 1 and channel_mode == "fold"
        if self.folded:
            parent, attr, conv = _first_conv(model)
            setattr(parent, attr, _FoldedConv(conv, mean, std))
        _skip_unused_blocks(model)
        # channels_last (NHWC) convolutions: the oneDNN CPU kernels and GPU tensor cores run them about twice as
        # fast as NCHW for these backbones (tf_efficientnet_lite0, 16x3x256x256, 2 cores: 60 -> 33 ms/image)
        self.model = model.to(memory_format=torch.channels_last)
        self.channels: list[int] = list(model.feature_info.channels())
        self.reductions: list[int] = list(model.feature_info.reduction())
        self.freeze()

    @property
    def frozen(self) -> bool:
        """True when no parameter takes gradients (then the module stays in eval mode)."""
        return not any(p.requires_grad for p in self.parameters())

    def freeze(self) -> FeatureExtractor:
        """No gradients, eval mode (BatchNorm uses its stored statistics)."""
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> FeatureExtractor:
        """Gradients on; call ``train()`` afterwards to also update BatchNorm statistics."""
        self.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Switch mode; a frozen extractor stays in eval mode."""
        return super().train(mode and not self.frozen)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, in_chans, H, W] in [0, 1] -> list of feature maps, one per layer."""
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if x.ndim != 4 or x.shape[1] != self.in_chans:
                raise DataError(
                    f"backbone '{self.name}' expects images [B, {self.in_chans}, H, W], "
                    f"got {list(x.shape)} (check model.in_chans)"
                )
        if not self.folded:
            if self.in_chans == 1:
                x = x.expand(-1, 3, -1, -1)
            x = (x - self.mean) / self.std
        feats = self.model(x.contiguous(memory_format=torch.channels_last))
        return [f.contiguous() for f in feats]  # callers view/reshape in NCHW order
