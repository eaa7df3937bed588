"""ONNX export with a parity check against torch: the one path every job's ``export`` takes.

:func:`export_checked` traces a deploy module (pre-processing inside) to ``path``, runs the file
with ONNX Runtime on sample inputs one at a time, and compares each output with the module's own:
the largest absolute difference per output must stay within ``tolerance``, else the file is not
written (the export goes to a temporary name first). :func:`write_parity` writes the figures
beside the model as ``<name>.parity.json`` (:func:`parity_path`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fabml.errors import ConfigError, TrainingError

OPSET = 17


def parity_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.parity.json``: the torch/ONNX parity report written beside the model."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.parity.json")


def _onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs the 'export' extra: pip install 'fabml[export]' (onnx, onnxruntime)") from None
    return ort


def export_checked(
    module: nn.Module, samples: torch.Tensor, path: str | Path, input_name: str, output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]], what: str, tolerance: float = 1e-4,
    checked: Sequence[str] | None = None,
    self_checks: Mapping[str, Callable[[dict[str, np.ndarray]], float]] | None = None,
) -> dict[str, float]:
    """Export ``module`` (eval mode, one tensor input) to ``path`` and check it against torch.

    Args:
        samples: ``[N, ...]`` inputs; each is run alone (batch of 1) through both.
        output_names / dynamic_axes: as for :func:`torch.onnx.export`.
        what: names the model in the error message.
        checked: outputs whose difference must stay within ``tolerance`` (default: all).
        self_checks: ``{name: f(onnx outputs of one sample by output name) -> a difference}``: checks of the graph
            against itself (e.g. its normalised score against the run's normaliser applied to its raw score); each
            must stay within ``tolerance`` too.
    Returns:
        ``{output name: max |onnx - torch|}`` over the samples (every output), plus ``{name: max difference}`` of
        each self-check.
    Raises:
        TrainingError when a checked output or a self-check differs by more than ``tolerance`` (nothing is written).
    """
    ort = _onnxruntime()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(module, (samples[:1].float(),), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=list(output_names), dynamic_axes=dynamic_axes)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    self_checks = dict(self_checks or {})
    diffs = {name: 0.0 for name in [*output_names, *self_checks]}
    with torch.no_grad():
        for sample in samples.float():
            batch = sample[None]
            ref = module(batch)
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            got = session.run(None, {input_name: batch.numpy()})
            for name, r, g in zip(output_names, ref, got):
                diffs[name] = max(diffs[name], float(np.abs(g - r.numpy()).max()))
            outputs = dict(zip(output_names, got))
            for name, check in self_checks.items():
                diffs[name] = max(diffs[name], float(check(outputs)))
    worst = {name: diffs[name] for name in [*(checked or output_names), *self_checks]}
    if max(worst.values()) > tolerance:
        tmp.unlink(missing_ok=True)
        figures = ", ".join(f"{name} difference {value:.2e}" for name, value in worst.items())
        raise TrainingError(f"the ONNX export of {what} disagrees with the torch model (max {figures} > {tolerance:g}); "
                            "the file was not written")
    tmp.replace(path)
    return diffs


def write_parity(onnx_path: str | Path, figures: dict[str, Any]) -> Path:
    """Write ``figures`` (with ``onnx`` and ``opset``) to :func:`parity_path` of ``onnx_path``; returns that path."""
    target = parity_path(onnx_path)
    target.write_text(json.dumps({"onnx": str(onnx_path), "opset": OPSET, **figures}, indent=2))
    return target
