"""Field and parameter scalers: range, round trip (numpy and torch), constant variables, state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fabml.data.simulation_io import open_fields
from fabml.data.simulation_scaler import FieldScaler, ParamScaler
from fabml.errors import DataError
from fabml.surrogate.config import SurrogateDataConfig


def _source(tmp_path: Path, arr: np.ndarray):
    np.save(tmp_path / "f.npy", arr)
    return open_fields(SurrogateDataConfig(fields=str(tmp_path / "f.npy")))


def test_fitted_on_training_cases_only_maps_them_to_plus_minus_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(8, 4, 6, 2)).astype(np.float32)
    arr[:, :, :, 1] *= 100.0
    arr[7] = 1000.0  # a held-out case far outside the training range
    source = _source(tmp_path, arr)
    train = [0, 1, 2, 3, 4, 5]
    scaler = FieldScaler.fit(source, train, 0.7)
    np.testing.assert_allclose(scaler.lo, arr[train].min(axis=(0, 1, 2)))
    np.testing.assert_allclose(scaler.hi, arr[train].max(axis=(0, 1, 2)))
    scaled = scaler.transform(arr[train])
    np.testing.assert_allclose(scaled.min(axis=(0, 1, 2)), [-0.7, -0.7], atol=1e-6)
    np.testing.assert_allclose(scaled.max(axis=(0, 1, 2)), [0.7, 0.7], atol=1e-6)
    assert scaler.transform(arr[7]).max() > 0.7  # not clipped, not fitted on


def test_round_trip_numpy_and_torch_on_any_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arr = (rng.normal(size=(5, 3, 7, 3)) * [1.0, 50.0, 0.01] + [0.0, 300.0, -2.0]).astype(np.float32)
    scaler = FieldScaler.fit(_source(tmp_path, arr), range(5), 0.7)
    back = scaler.inverse(scaler.transform(arr))
    np.testing.assert_array_equal(scaler.transform(arr.copy(), inplace=True), scaler.transform(arr))
    np.testing.assert_allclose(back, arr, rtol=1e-5, atol=1e-4)
    assert back.dtype == np.float32
    tensor = torch.from_numpy(arr).permute(0, 3, 1, 2)  # [B, V, T, M] as the model sees it
    scaled_t = scaler.transform(tensor, axis=1)
    assert isinstance(scaled_t, torch.Tensor) and scaled_t.dtype == torch.float32
    np.testing.assert_allclose(scaled_t.permute(0, 2, 3, 1).numpy(), scaler.transform(arr), atol=1e-6)
    np.testing.assert_allclose(scaler.inverse(scaled_t, axis=1).permute(0, 2, 3, 1).numpy(), arr, rtol=1e-5, atol=1e-4)


def test_constant_variable_maps_to_zero_and_back_to_its_constant(tmp_path: Path) -> None:
    arr = np.zeros((4, 3, 5, 2), np.float32)
    arr[..., 0] = np.arange(4 * 3 * 5).reshape(4, 3, 5)
    arr[..., 1] = 293.15  # a constant temperature
    scaler = FieldScaler.fit(_source(tmp_path, arr), range(4), 0.7)
    scaled = scaler.transform(arr)
    assert np.isfinite(scaled).all()
    np.testing.assert_array_equal(scaled[..., 1], 0.0)
    np.testing.assert_allclose(scaler.inverse(scaled)[..., 1], 293.15, rtol=1e-6)
    t_scaled = scaler.transform(torch.from_numpy(arr))
    assert torch.isfinite(t_scaled).all() and torch.all(t_scaled[..., 1] == 0)
    np.testing.assert_allclose(scaler.inverse(torch.zeros(2, 2))[:, 1].numpy(), 293.15, rtol=1e-6)


def test_state_dict_is_json_and_restores_the_same_scaler(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).normal(size=(3, 2, 4, 2)).astype(np.float32)
    scaler = FieldScaler.fit(_source(tmp_path, arr), [0, 1], 0.5)
    state = json.loads(json.dumps(scaler.state_dict()))
    again = FieldScaler.from_state(state)
    np.testing.assert_array_equal(again.transform(arr), scaler.transform(arr))
    assert again.range == 0.5
    with pytest.raises(DataError, match="not a field scaler"):
        FieldScaler.from_state({"kind": "param_standard", "mean": [0.0], "std": [1.0]})


def test_non_finite_values_name_the_case(tmp_path: Path) -> None:
    arr = np.zeros((3, 2, 4), np.float32)
    arr[2, 1, 1] = np.nan
    with pytest.raises(DataError, match="case index 2 holds NaN"):
        FieldScaler.fit(_source(tmp_path, arr), [0, 1, 2])
    with pytest.raises(DataError, match="no training cases"):
        FieldScaler.fit(_source(tmp_path, arr), [])


def test_param_scaler_standardises_on_training_rows_and_handles_constant_columns() -> None:
    params = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 6.0], [100.0, 5.0, 100.0]], np.float32)
    scaler = ParamScaler.fit(params, rows=[0, 1, 2])
    np.testing.assert_allclose(scaler.mean, [3.0, 5.0, 4.0])
    assert scaler.std[1] == 1.0
    z = scaler.transform(params[:3])
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_array_equal(z[:, 1], 0.0)
    np.testing.assert_allclose(scaler.inverse(z), params[:3], rtol=1e-6)
    t = scaler.transform(torch.from_numpy(params))
    np.testing.assert_allclose(t.numpy(), scaler.transform(params), atol=1e-6)
    again = ParamScaler.from_state(json.loads(json.dumps(scaler.state_dict())))
    np.testing.assert_array_equal(again.transform(params), scaler.transform(params))
