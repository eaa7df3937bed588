"""A tiny generated inspection set in the per-type layout: Good/ normals, Spot/ defects with masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fabml.data.synthetic_inspection import make_inspection_set


@pytest.fixture(scope="session")
def inspection_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inspection_set(tmp_path_factory.mktemp("inspection"))


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test of this folder runs with one torch thread (tests/conftest.py)."""


@pytest.fixture
def round_trip_and_onnx(tmp_path: Path) -> Callable[..., None]:
    """``check(model, x, rtol=1e-4, atol=1e-4)``: a model of the same class and config loads ``model``'s state
    dict and gives the same eval map on ``x`` ``[B, C, H, W]``; ONNX export with a dynamic batch gives the same
    map and score within the tolerances."""

    def check(model: torch.nn.Module, x: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-4) -> None:
        model.eval()
        clone = type(model)(dataclasses.replace(model.config)).eval()
        clone.load_state_dict(model.state_dict())
        with torch.no_grad():
            ref, copy = model(x), clone(x)
        assert torch.equal(ref.anomaly_map, copy.anomaly_map)
        path = tmp_path / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["pred_score", "anomaly_map"], dynamic_axes={"image": {0: "batch"}})
        score, amap = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
        np.testing.assert_allclose(amap, ref.anomaly_map.numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(score, ref.pred_score.numpy(), rtol=rtol, atol=atol)

    return check
