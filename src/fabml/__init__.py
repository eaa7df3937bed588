"""fabml: deep-learning toolkit for semiconductor and display fabs.

Importing the package installs a tiny shim so that ``import torchvision`` (and so
``import timm``) works with a CUDA build of torchvision beside a CPU build of torch.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _ensure_torchvision_nms_schema() -> None:
    """Define the ``torchvision::nms`` op schema when the compiled ops are missing.

    The torchvision 0.28.0 wheel is a CUDA build; with the CPU build of torch its
    compiled ops do not load, and ``import torchvision`` then fails on
    ``operator torchvision::nms does not exist``. Defining the schemas (no kernel)
    lets the import succeed; ``torchvision.ops.nms`` itself stays unusable on CPU.
    Where the real op exists this is a no-op.
    """
    try:
        import torch
    except ImportError:  # torch missing: nothing to patch, the real error comes later
        return
    # torchvision registers fake kernels for these two ops at import time.
    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    for op in ("torchvision::nms", "torchvision::qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(op, "")
            continue
        except RuntimeError:
            pass
        try:
            torch.library.define(op, schema)
        except RuntimeError:  # registered concurrently
            pass


_ensure_torchvision_nms_schema()
