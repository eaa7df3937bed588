"""Threshold calibration, score normalisation (threshold -> 0.5), decisions and grades."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before onnx export pulls torchvision in)
from fabml.anomaly.threshold import (
    DEFAULT_CUTS,
    GRADE_NAMES,
    GradeConfig,
    ScoreNormalizer,
    calibrate_pixel_threshold,
    calibrate_threshold,
    decide,
    grade,
    pixel_mask,
)
from fabml.config import from_dict
from fabml.errors import ConfigError, DataError
from fabml.metrics.anomaly import f1_max

# ---------------------------------------------------------------- image threshold


def test_auto_uses_f1_with_anomalous_scores():
    rng = np.random.default_rng(0)
    normal = rng.normal(0.3, 0.05, 50)
    synthetic = rng.normal(0.6, 0.1, 50)
    res = calibrate_threshold(normal, synthetic, source="synthetic")
    best, value = f1_max(np.r_[np.zeros(50), np.ones(50)], np.r_[normal, synthetic])
    assert res.method == "f1" and res.source == "synthetic" and res.value == pytest.approx(value)
    assert res.message.startswith(f"threshold {value:.4g} from F1-max (F1 {best:.3f})")
    assert res.message.endswith("on 50 held-out normal and 50 synthetic-anomaly images")


def test_f1_threshold_hand_value_with_real_defects():
    res = calibrate_threshold(torch.tensor([0.1, 0.2, 0.3]), [0.5, 0.6], method="f1")
    # perfectly separated: F1 = 1 from 0.3 (exclusive) to 0.5; the threshold sits in the middle of the gap
    assert res.value == pytest.approx(0.4) and res.source == "defective"
    assert "(F1 1.000, midway between the highest normal and the lowest anomalous score) on 3 held-out normal and " \
           "2 defective images" in res.message


def test_auto_falls_back_to_quantile_and_says_so():
    normal = np.arange(101) / 100.0
    res = calibrate_threshold(normal)
    assert res.method == "quantile" and res.source == "normal"
    assert res.value == pytest.approx(0.99)
    assert res.message == (
        "threshold 0.99 = 99th percentile of 101 held-out normal image scores "
        "(no anomalous validation images for F1-max)"
    )
    assert calibrate_threshold(normal, np.array([])).method == "quantile"  # empty = none
    forced = calibrate_threshold(normal, [2.0, 3.0], method="quantile", quantile=0.5)
    assert forced.method == "quantile" and forced.value == pytest.approx(0.5) and "method 'quantile'" in forced.message


def test_calibration_errors():
    with pytest.raises(DataError, match="no normal validation scores"):
        calibrate_threshold([])
    with pytest.raises(DataError, match="NaN"):
        calibrate_threshold([0.1, float("nan")])
    with pytest.raises(DataError, match="NaN"):
        calibrate_threshold([0.1, 0.2], [float("nan")])
    with pytest.raises(ConfigError, match="'f1' needs anomalous"):
        calibrate_threshold([0.1, 0.2], method="f1")
    with pytest.raises(ConfigError, match="unknown; choose one of: auto, f1, quantile"):
        calibrate_threshold([0.1], method="otsu")
    with pytest.raises(ConfigError, match="quantile"):
        calibrate_threshold([0.1], quantile=1.0)
    with pytest.raises(ConfigError, match="source"):
        calibrate_threshold([0.1], [0.5], source="test")


# ---------------------------------------------------------------- pixel threshold


def _pixel_set():
    normal = np.full((3, 1, 16, 16), 0.1, dtype=np.float32)
    normal[:, :, 0, :4] = 0.3  # a few bright normal pixels
    anom = np.full((2, 1, 16, 16), 0.2, dtype=np.float32)
    masks = np.zeros_like(anom)
    masks[:, :, 5:9, 5:9] = 1
    anom[masks > 0] = 0.8
    return normal, anom, masks


def test_pixel_threshold_f1_with_masks():
    normal, anom, masks = _pixel_set()
    res = calibrate_pixel_threshold(normal, anom, masks, source="synthetic")
    assert res.method == "f1" and res.value == pytest.approx(0.8)
    assert "(F1 1.000) on 1,280 pixels of 3 held-out normal and 2 synthetic-anomaly images" in res.message


def test_pixel_threshold_quantile_without_masks():
    normal, anom, _ = _pixel_set()
    res = calibrate_pixel_threshold(normal, anom, quantile=0.99)
    assert res.method == "quantile" and res.value == pytest.approx(np.quantile(normal, 0.99))
    assert "99th percentile of the 768 pixels of 3 held-out normal images (no masks for F1-max)" in res.message
    empty = calibrate_pixel_threshold(normal, anom, np.zeros_like(anom))
    assert empty.method == "quantile" and "no anomalous pixel" in empty.message


def test_pixel_threshold_subsamples_deterministically():
    rng = np.random.default_rng(0)
    normal = rng.random((4, 32, 32)).astype(np.float32) * 0.6
    masks = np.zeros((4, 32, 32), dtype=np.uint8)
    masks[:, 8:20, 8:20] = 1
    anom = (rng.random((4, 32, 32)) * 0.6 + masks * 0.35).astype(np.float32)
    full = calibrate_pixel_threshold(normal, anom, masks)
    a = calibrate_pixel_threshold(normal, anom, masks, max_pixels=2000)
    b = calibrate_pixel_threshold(normal, anom, masks, max_pixels=2000)
    assert a == b and "fixed random sample of 8,192" in a.message
    assert a.value == pytest.approx(full.value, abs=0.05)


def test_pixel_threshold_errors():
    normal, anom, masks = _pixel_set()
    with pytest.raises(DataError, match="without their anomaly maps"):
        calibrate_pixel_threshold(normal, anomalous_masks=masks)
    with pytest.raises(DataError, match="differ in shape"):
        calibrate_pixel_threshold(normal, anom, masks[:1])
    with pytest.raises(DataError, match=r"\[N, H, W\]"):
        calibrate_pixel_threshold(np.zeros(5))
    with pytest.raises(DataError, match="no normal validation maps"):
        calibrate_pixel_threshold(np.zeros((0, 4, 4)))


# ---------------------------------------------------------------- normalisation


def test_threshold_maps_to_half_exactly_and_hand_values():
    norm = ScoreNormalizer(2.0, 0.0, 4.0, 0.25, 0.0, 1.0)
    # s = (4 - 0) / 2 = 2; d = (x - 2) / 2; 0.5 + 0.5 d / (1 + |d|)
    # x=2: d=0 -> 0.5; x=4: d=1 -> 0.75; x=0: d=-1 -> 0.25; x=10: d=4 -> 0.9; x=-6: d=-4 -> 0.1
    got = norm.normalize_scores(np.array([2.0, 4.0, 0.0, 10.0, -6.0]))
    assert np.allclose(got, [0.5, 0.75, 0.25, 0.9, 0.1], rtol=0, atol=1e-15) and got[0] == 0.5
    # pixels: s = 0.5; x=0.75: d=1 -> 0.75; x=0: d=-0.5 -> 1/3; x=1.25: d=2 -> 5/6
    maps = torch.tensor([[[[0.25, 0.75], [0.0, 1.25]]]])
    assert torch.allclose(norm.normalize_maps(maps), torch.tensor([[[[0.5, 0.75], [1 / 3, 5 / 6]]]]), atol=1e-7)
    assert norm.normalize_maps(maps)[0, 0, 0, 0].item() == 0.5
    # a float32 observed score used as threshold stays exactly at 0.5 in float32 arithmetic
    t = float(np.float32(0.4213))
    fitted = ScoreNormalizer.fit(np.array([0.1, 0.9], dtype=np.float32), t)
    assert fitted.normalize_scores(np.float32([t]))[0] == 0.5
    assert fitted.normalize_scores(np.float32([t])).dtype == np.float32
    assert fitted.normalize_scores(torch.tensor([t], dtype=torch.float32)).item() == 0.5


def test_default_grade_cuts_sit_at_t_plus_third_one_and_three_scales():
    norm = ScoreNormalizer(1.0, 0.0, 2.0, 1.0, 0.0, 2.0)  # t = 1, s = 1
    assert np.allclose(norm.normalize_scores([1.0, 1.0 + 1 / 3, 2.0, 4.0]), DEFAULT_CUTS, atol=1e-12)


def test_normalisation_keeps_order_never_reaches_one_and_never_clips():
    rng = np.random.default_rng(0)
    norm = ScoreNormalizer.fit(rng.normal(5.0, 2.0, 200), image_threshold=6.0)
    huge = [1e3, 1e6, 1e9, 1e12, -1e9]
    x = np.r_[rng.normal(5.0, 4.0, 500), rng.uniform(6.0, 1e4, 200), 10.0 ** rng.uniform(3, 12, 200), huge]
    y = norm.normalize_scores(x)
    # float64: strictly order-preserving, even for scores 1e12 calibration spans above the threshold
    assert len(np.unique(x)) == len(np.unique(y))
    assert np.array_equal(np.argsort(x, kind="stable"), np.argsort(y, kind="stable"))
    assert np.array_equal(decide(y), x >= 6.0)
    above = y[x > 6.0]
    assert above.min() > 0.5 and above.max() < 1.0 and (y[x < 6.0] < 0.5).all() and (y > 0).all()
    # the decision is exact: the float32 score just below the threshold stays below 0.5
    just_below = np.nextafter(np.float32(6.0), np.float32(0))
    assert norm.normalize_scores(np.float32([just_below]))[0] < 0.5
    assert norm.normalize_scores(torch.tensor([just_below])).item() < 0.5
    # torch float32: order kept (never reversed) over the whole float32 range, nothing equals 1
    xt = torch.tensor(np.sort(np.r_[x, 1e20, 3e38, -3e38]), dtype=torch.float32)
    yt = norm.normalize_scores(xt)
    assert (yt[1:] >= yt[:-1]).all() and (yt < 1.0).all() and (yt >= 0).all()
    # strictly increasing in float32 up to about 1e6 spans above the threshold
    xs = torch.tensor(np.sort(np.unique(np.r_[6.0, 6.5, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6])), dtype=torch.float32)
    assert (torch.diff(norm.normalize_scores(xs)) > 0).all()
    # maps: the same function, order kept per pixel
    maps = rng.gamma(2.0, 1.0, (3, 8, 8)).astype(np.float32) * np.float32([1, 100, 1e5])[:, None, None]
    pix = ScoreNormalizer.fit([0.0, 1.0], 0.5, maps=maps[:1], pixel_threshold=3.0).normalize_maps(maps)
    assert pix.dtype == np.float32 and pix.max() < 1.0
    order = np.argsort(maps.ravel(), kind="stable")
    assert (np.diff(pix.ravel()[order]) >= 0).all()


def test_grades_stay_distinct_for_very_large_anomalies():
    norm = ScoreNormalizer.fit(np.linspace(0.0, 1.0, 50), image_threshold=0.8)  # t = 0.8, s = 0.5
    s = norm.image_scale
    raw = np.array([0.79, 0.8 + s / 6, 0.8 + s / 2, 0.8 + 2 * s, 50.0, 5e3, 5e6])
    for values in (raw, torch.tensor(raw, dtype=torch.float32)):
        normed = norm.normalize_scores(values)
        assert np.asarray(grade(normed)).tolist() == [0, 1, 2, 3, 4, 4, 4]
        tail = np.asarray(normed)[-3:]
        assert (np.diff(tail) > 0).all() and (tail < 1.0).all()  # severe anomalies keep their order
    # the old min-max clip gave these three exactly 1.0; now a grade reads the distance to the threshold
    assert len({round(float(v), 6) for v in norm.normalize_scores(raw[-3:])}) == 3


def test_fit_statistics_and_zero_range_guard():
    maps = np.array([[[0.0, 3.0]], [[1.0, 2.0]]])
    norm = ScoreNormalizer.fit(torch.tensor([1.0, 5.0]), 3.0, maps=maps, pixel_threshold=1.5)
    assert norm == ScoreNormalizer(3.0, 1.0, 5.0, 1.5, 0.0, 3.0)
    assert (norm.image_scale, norm.pixel_scale) == (2.0, 1.5)
    image_only = ScoreNormalizer.fit([1.0, 5.0], 3.0)
    assert (image_only.pixel_threshold, image_only.pixel_min, image_only.pixel_max) == (3.0, 1.0, 5.0)
    flat = ScoreNormalizer.fit([2.0, 2.0], 2.0)  # max == min: s = 0.5
    assert flat.normalize_scores([2.0, 2.5]).tolist() == [0.5, 0.75]


def test_saved_normaliser_of_an_older_run_loads_and_keeps_its_threshold():
    # the dict an older model.pt holds (written by the min-max normaliser): same six keys
    old = {"image_threshold": 0.42, "image_min": 0.1, "image_max": 0.9,
           "pixel_threshold": 0.3, "pixel_min": 0.0, "pixel_max": 1.2}
    norm = ScoreNormalizer.from_dict(old)
    assert norm.normalize_scores([0.42])[0] == 0.5 and norm.normalize_maps(np.array([0.3]))[0] == 0.5
    # near the threshold the slope is the old one: (x - t) / (max - min) + 0.5 to first order
    assert abs(norm.normalize_scores([0.421])[0] - (0.001 / 0.8 + 0.5)) < 1e-5
    assert norm.normalize_scores([5.0])[0] < 1.0  # the old normaliser clipped this to 1.0


def test_to_dict_round_trip_and_bad_dicts():
    norm = ScoreNormalizer.fit([0.1, 0.7, 0.3], 0.4, maps=np.linspace(0, 1, 8), pixel_threshold=0.6)
    data = norm.to_dict()
    assert all(type(v) is float for v in data.values())
    assert ScoreNormalizer.from_dict(data) == norm
    with pytest.raises(ConfigError, match="exactly the keys"):
        ScoreNormalizer.from_dict({"image_threshold": 0.4})
    with pytest.raises(ConfigError, match="finite number"):
        ScoreNormalizer.from_dict({**data, "pixel_max": float("nan")})
    with pytest.raises(ConfigError, match="image_max < image_min"):
        ScoreNormalizer.from_dict({**data, "image_max": -1.0})


def test_torch_path_exports_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    norm = ScoreNormalizer(0.4, 0.1, 0.9, 0.3, 0.0, 1.2)

    class Head(torch.nn.Module):
        def forward(self, score: torch.Tensor, amap: torch.Tensor):
            s = norm.normalize_scores(score)
            m = norm.normalize_maps(amap)
            return s, grade(s), pixel_mask(m)

    score, amap = torch.rand(3) * 1.2, torch.rand(3, 1, 8, 8) * 1.5
    buf = io.BytesIO()
    torch.onnx.export(Head(), (score, amap), buf, dynamo=False, opset_version=17,
                      input_names=["score", "amap"], dynamic_axes={"score": {0: "b"}, "amap": {0: "b"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    score2, amap2 = torch.rand(5) * 1.2, torch.rand(5, 1, 8, 8) * 1.5
    got = sess.run(None, {"score": score2.numpy(), "amap": amap2.numpy()})
    want = Head()(score2, amap2)
    assert np.allclose(got[0], want[0].numpy(), atol=1e-6)
    assert np.array_equal(got[1], want[1].numpy()) and np.array_equal(got[2], want[2].numpy())


# ---------------------------------------------------------------- decisions and grades

NORMALISED = [0.0, 0.49, 0.5, 0.6, 0.625, 0.74, 0.8, 0.875, 1.0]
GRADES = [0, 0, 1, 1, 2, 2, 3, 4, 4]


def test_grades_from_hand_computed_scores():
    assert grade(np.array(NORMALISED)).tolist() == GRADES
    assert grade(torch.tensor(NORMALISED)).tolist() == GRADES
    assert grade(np.array(NORMALISED), GradeConfig()).dtype == np.int64
    assert grade(np.array([0.55, 0.65, 0.99, 1.0]), [0.5, 0.6, 0.7, 1.0]).tolist() == [1, 2, 3, 4]
    assert GRADE_NAMES == ["normal", "minor", "moderate", "major", "severe"]


def test_grade_zero_iff_decided_normal_and_pixel_mask():
    x = np.random.default_rng(0).random(1000)
    assert np.array_equal(grade(x) == 0, ~decide(x))
    maps = torch.tensor([[[[0.2, 0.5], [0.7, 0.49]]]])
    assert pixel_mask(maps).tolist() == [[[[False, True], [True, False]]]]


def test_invalid_cuts_and_nan():
    for cuts, match in [
        ([0.5, 0.7, 0.9], "4 increasing"),
        ([0.4, 0.6, 0.7, 0.8], "start at 0.5"),
        ([0.5, 0.7, 0.6, 0.8], "strictly increasing"),
        ([0.5, 0.7, 0.8, 1.2], "at most 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            GradeConfig(cuts)
        with pytest.raises(ConfigError, match=match):
            grade(np.array([0.5]), cuts)
    assert from_dict(GradeConfig, {"cuts": [0.5, 0.6, 0.7, 0.8]}).cuts == [0.5, 0.6, 0.7, 0.8]
    with pytest.raises(ConfigError):
        from_dict(GradeConfig, {"cuts": [0.5, 0.6]})
    with pytest.raises(DataError, match="NaN"):
        grade(np.array([0.5, np.nan]))
    with pytest.raises(DataError, match="NaN"):
        decide(torch.tensor([float("nan")]))
