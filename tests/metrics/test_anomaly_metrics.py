"""Anomaly metrics against hand-computed values, scikit-learn, a brute-force PRO curve and anomalib."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from fabml.errors import DataError, FabmlError
from fabml.metrics.anomaly import (
    MetricUndefinedError,
    anomalous_share,
    anomaly_metrics,
    aupro,
    box_hit_rate,
    f1_all_anomalous,
    f1_at_threshold,
    f1_max,
    image_auroc,
    per_type_metrics,
    pixel_auroc,
    region_recall,
)


# ---------------------------------------------------------------- AUROC


def test_image_auroc_hand_value():
    # pairs (anomalous > normal): 0.35>0.1, 0.8>0.1, 0.8>0.4; 0.35<0.4 -> 3 of 4
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie between an anomalous and a normal image counts one half
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_image_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1) + 0.15 * y  # rounding makes many ties
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_auroc(torch.from_numpy(y), torch.from_numpy(s)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pixel_auroc_matches_sklearn_for_both_layouts():
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 16, 16), dtype=np.uint8)
    masks[1, 3:7, 4:9] = 1
    masks[3, 10:14, 2:5] = 1
    maps = np.round(rng.random(masks.shape) * 0.7 + masks * 0.4, 2).astype(np.float32)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(masks)[:, None].float(), torch.from_numpy(maps)[:, None]) == pytest.approx(
        expected, abs=1e-12
    )


# ---------------------------------------------------------------- AUPRO


def test_aupro_hand_computed_single_region():
    # 4x4 image, one 2x2 region (4 pixels), 12 normal pixels
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, :2, :2] = 1
    amap = np.full((1, 4, 4), 0.2, dtype=np.float32)
    amap[0, 0, 0], amap[0, 0, 1], amap[0, 1, 0], amap[0, 1, 1] = 0.9, 0.8, 0.4, 0.3  # anomalous
    amap[0, 3, 3], amap[0, 3, 2], amap[0, 2, 3] = 0.85, 0.5, 0.35  # three normals score high
    # (FPR, PRO): (0,1/4) (1/12,1/4) (1/12,1/2) (2/12,1/2) (2/12,3/4) (3/12,3/4) (3/12,1) (1,1)
    # area to 0.3 = (1/4 + 1/2 + 3/4) / 12 + 1 * (0.3 - 0.25) = 0.175
    assert aupro(mask, amap) == pytest.approx(0.175 / 0.3)


# One row of 13 pixels: region A = {0}, region B = {2, 3}, 10 normal pixels.
ROW_MASK = np.array([[[1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]], dtype=np.uint8)
ROW_MAP = np.array([[[0.9, 0.8, 0.8, 0.2, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]], dtype=np.float32)
# thresholds 0.9: PRO (1+0)/2 = .5, FPR 0; 0.8 (a normal ties with B): PRO (1+.5)/2 = .75, FPR .1;
# 0.5: (.2, .75); 0.2: (.2, 1); 0.1: (1, 1)


@pytest.mark.parametrize(
    "limit, expected",
    [
        (0.3, (0.1 * (0.5 + 0.75) / 2 + 0.1 * 0.75 + 0.1 * 1.0) / 0.3),
        (0.05, (0.05 * (0.5 + 0.625) / 2) / 0.05),  # interpolated on the tie's diagonal: PRO(0.05) = .625
        (0.15, (0.1 * (0.5 + 0.75) / 2 + 0.05 * 0.75) / 0.15),
    ],
)
def test_aupro_averages_regions_and_interpolates_at_the_limit(limit, expected):
    assert aupro(ROW_MASK, ROW_MAP, fpr_limit=limit) == pytest.approx(expected)
    # the binned variant has the same curve points here (every score lies in its own bin)
    assert aupro(ROW_MASK, ROW_MAP, fpr_limit=limit, num_thresholds=1000) == pytest.approx(expected, abs=1e-9)


def test_aupro_regions_are_8_connected():
    # (0,0) touches (1,1) diagonally: one region of 3 pixels; only (0,0) is found
    mask = np.zeros((1, 3, 3), dtype=np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = 1
    amap = np.where(mask > 0, 0.1, 0.5).astype(np.float32)
    amap[0, 0, 0] = 0.9
    # PRO = 1/3 on FPR [0, 1) (with 4-connectivity it would be mean(1, 0) = 1/2)
    assert aupro(mask, amap) == pytest.approx(1 / 3)


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    regions = list(_index_regions(masks))
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([pred[i][r].sum() / r.sum() for i, r in regions])
        points.append((fpr, pro))
    x, y = map(np.array, zip(*points))
    n = np.searchsorted(x, limit, side="right")
    xs, ys = list(x[:n]), list(y[:n])
    if xs[-1] < limit:
        ys.append(y[n - 1] + (y[n] - y[n - 1]) * (limit - x[n - 1]) / (x[n] - x[n - 1]))
        xs.append(limit)
    return float(np.trapezoid(ys, xs) / limit)


def _index_regions(masks: np.ndarray):
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        for r in range(1, k + 1):
            yield i, lab == r


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force_curve(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), dtype=np.uint8)
    masks[0, 2:5, 2:6] = 1
    masks[0, 8, 8:11] = 1
    masks[2, 6:11, 1:3] = 1
    maps = np.round(rng.random(masks.shape) * 0.6 + masks * rng.random(masks.shape) * 0.5, 2).astype(np.float32)
    for limit in (0.3, 0.1, 1.0):
        expected = _brute_force_aupro(masks, maps, limit)
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)
        assert aupro(masks, maps, fpr_limit=limit, num_thresholds=4000) == pytest.approx(expected, abs=2e-3)


def test_aupro_matches_anomalib_2_7_0():
    # values printed by anomalib.metrics.aupro._AUPRO (anomalib 2.7.0, float32) on this exact data
    rng = np.random.default_rng(1)
    masks = np.zeros((12, 40, 40), dtype=np.uint8)
    for i in range(12):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, 34, 2)
            h, w = rng.integers(1, 7, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = (rng.random(masks.shape) * 0.6 + masks * rng.random(masks.shape) * 0.6).astype(np.float32)
    assert aupro(masks, maps, 0.3) == pytest.approx(0.685358464717865, abs=1e-6)
    assert aupro(masks, maps, 0.05) == pytest.approx(0.5450600385665894, abs=1e-6)
    rounded = np.round(maps, 2).astype(np.float32)
    assert aupro(masks, rounded, 0.3) == pytest.approx(0.6841368079185486, abs=1e-6)


def test_aupro_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=np.uint8)
    masks[0, 2:6, 2:6] = 1
    masks[2, 9:15, 3:5] = 1
    noise = rng.random(masks.shape).astype(np.float32) * 0.4
    assert aupro(masks, masks + noise) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, 1.0 - masks + noise) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 <= aupro(masks, rng.random(masks.shape)) <= 1.0


# ---------------------------------------------------------------- F1

F1_LABELS = [0, 0, 1, 1, 1]
F1_SCORES = [0.1, 0.6, 0.4, 0.7, 0.9]
# F1 = 2TP / (2TP + FP + FN): t=0.9 -> 2/4, 0.7 -> 4/5, 0.6 -> 4/6, 0.4 -> 6/7, 0.1 -> 6/8


def test_f1_max_hand_value_and_sklearn():
    best, threshold = f1_max(F1_LABELS, F1_SCORES)
    assert best == pytest.approx(6 / 7) and threshold == pytest.approx(0.4)
    p, r, _ = precision_recall_curve(F1_LABELS, F1_SCORES)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    assert best == pytest.approx(f1.max())
    assert f1_at_threshold(F1_LABELS, F1_SCORES, threshold) == pytest.approx(best)


def test_f1_max_ties_give_the_highest_threshold():
    # t=0.8 -> TP 2, FP 0, FN 2: F1 4/6; t=0.3 -> TP 4, FP 4, FN 0: F1 8/12 = 4/6 as well
    labels = [1, 1, 0, 0, 0, 0, 1, 1]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3]
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(2 / 3) and threshold == pytest.approx(0.8)


def test_f1_at_threshold_hand_values():
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 0.65) == pytest.approx(4 / 5)
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 0.7) == pytest.approx(4 / 5)  # >= counts as anomalous
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 5.0) == 0.0


# ---------------------------------------------------------------- undefined and bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: image_auroc([0, 0, 0], [0.1, 0.2, 0.3]), "no anomalous images; add defective images"),
        (lambda: image_auroc([1, 1], [0.1, 0.2]), "no normal images"),
        (lambda: image_auroc([], []), "no images were scored"),
        (lambda: f1_max([0, 0], [0.1, 0.2]), "F1-max is undefined"),
        (lambda: f1_at_threshold([0, 0], [0.1, 0.2], 0.5), "no anomalous images"),
        (lambda: pixel_auroc(np.zeros((2, 4, 4)), np.ones((2, 4, 4))), "no anomalous pixels"),
        (
            lambda: aupro(np.zeros((2, 4, 4)), np.ones((2, 4, 4))),
            "AUPRO is undefined: the test set has no anomalous pixels",
        ),
        (lambda: aupro(np.ones((1, 4, 4)), np.ones((1, 4, 4))), "no normal pixels"),
    ],
)
def test_undefined_metrics_raise_one_line_reason(call, match):
    with pytest.raises(MetricUndefinedError, match=match) as err:
        call()
    assert isinstance(err.value, FabmlError) and "\n" not in str(err.value)


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="NaN"):
        image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(DataError, match="one length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="0 \\(normal\\) or 1"):
        pixel_auroc(np.full((1, 2, 2), 255), np.ones((1, 2, 2)))
    with pytest.raises(DataError, match="same|one size"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(DataError, match="fpr_limit"):
        aupro(ROW_MASK, ROW_MAP, fpr_limit=0.0)


# ---------------------------------------------------------------- reports


def _toy_set():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    types = ["good"] * 4 + ["crack", "crack", "blowhole", "blowhole"]
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9, 0.35, 0.7])
    masks = np.zeros((8, 8, 8), dtype=np.uint8)
    for i in range(4, 8):
        masks[i, 2:5, 2:5] = 1
    maps = (rng.random(masks.shape) * 0.5 + masks * 0.3).astype(np.float32)
    return types, labels, scores, masks, maps


def test_anomaly_metrics_dict():
    types, labels, scores, masks, maps = _toy_set()
    out = anomaly_metrics(labels, scores, masks, maps, threshold=0.5, pixel_threshold=0.75)
    # anomalous > normal in 15 of 16 pairs (0.35 < 0.4)
    assert out["image_auroc"] == pytest.approx(15 / 16)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert out["aupro"] == pytest.approx(aupro(masks, maps))
    # F1-max at t=0.35: TP 4, FP 1 (0.4) -> 8/9; at 0.5: TP 3, FP 0, FN 1 -> 6/7
    assert out["f1_max"] == pytest.approx(8 / 9) and out["f1_max_threshold"] == pytest.approx(0.35)
    assert out["f1_at_threshold"] == pytest.approx(6 / 7)
    # half the images anomalous: calling all anomalous scores 2 * 0.5 / 1.5
    assert out["anomalous_share"] == 0.5 and out["f1_all_anomalous"] == pytest.approx(2 / 3)
    assert out["box_hit_rate"] == pytest.approx(box_hit_rate(masks, maps))
    assert out["region_recall"] == pytest.approx(region_recall(masks, maps, 0.75))
    assert out["notes"] == []
    assert all(0.0 <= out[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_threshold"))


def test_anomaly_metrics_notes_for_undefined_figures():
    out = anomaly_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert out["image_auroc"] is None and out["f1_max"] is None and out["f1_max_threshold"] is None
    assert out["pixel_auroc"] is None and out["aupro"] is None and out["f1_at_threshold"] is None
    assert any("image AUROC is undefined: the test set has no anomalous images" in n for n in out["notes"])
    assert any("need ground-truth masks" in n for n in out["notes"])
    assert any("no calibrated threshold" in n for n in out["notes"])
    assert out["anomalous_share"] == 0.0 and out["f1_all_anomalous"] is None
    assert out["box_hit_rate"] is None and out["region_recall"] is None
    assert any("calling everything anomalous is undefined" in n for n in out["notes"])
    types, labels, scores, masks, maps = _toy_set()
    no_pixel_threshold = anomaly_metrics(labels, scores, masks, maps, threshold=0.5)
    assert no_pixel_threshold["region_recall"] is None and no_pixel_threshold["box_hit_rate"] is not None
    assert any("no pixel threshold" in n for n in no_pixel_threshold["notes"])


def test_per_type_metrics_each_type_against_all_normals():
    types, labels, scores, masks, maps = _toy_set()
    out = per_type_metrics(types, labels, scores, masks, maps, threshold=0.5, pixel_threshold=0.75)
    assert set(out) == {"crack", "blowhole", "good"}
    crack, blowhole, good = out["crack"], out["blowhole"], out["good"]
    assert crack["count"] == 2 and crack["image_auroc"] == 1.0 and crack["f1_max"] == 1.0
    assert crack["recall_at_threshold"] == 1.0
    # blowhole {0.35, 0.7} vs normals {.1,.2,.3,.4}: 7 of 8 pairs; one of two flagged at 0.5
    assert blowhole["image_auroc"] == pytest.approx(7 / 8) and blowhole["recall_at_threshold"] == 0.5
    sub = [0, 1, 2, 3, 6, 7]
    assert blowhole["pixel_auroc"] == pytest.approx(roc_auc_score(masks[sub].ravel(), maps[sub].ravel()))
    assert blowhole["aupro"] == pytest.approx(aupro(masks[sub], maps[sub]))
    assert blowhole["box_hit_rate"] == pytest.approx(box_hit_rate(masks[6:8], maps[6:8]))
    assert blowhole["region_recall"] == pytest.approx(region_recall(masks[6:8], maps[6:8], 0.75))
    assert good == {"count": 4, "false_positive_rate": 0.0}
    assert per_type_metrics(types, labels, scores)["crack"]["recall_at_threshold"] is None
    with pytest.raises(DataError, match="normal type 'crack' is labelled anomalous"):
        per_type_metrics(types, labels, scores, normal_type="crack")


# ---------------------------------------------------------------- baselines and localisation


def test_anomalous_share_and_f1_of_calling_everything_anomalous():
    labels = np.array([0, 1, 1, 1])
    assert anomalous_share(labels) == 0.75
    assert f1_all_anomalous(labels) == pytest.approx(2 * 0.75 / 1.75)  # 6/7: precision 3/4, recall 1
    # it is exactly the F1 of a threshold below every score
    scores = np.array([0.9, 0.1, 0.5, 0.3])
    assert f1_all_anomalous(labels) == pytest.approx(f1_at_threshold(labels, scores, -np.inf))
    # the test set: 77% defective -> 0.87 without looking at a single image
    assert f1_all_anomalous(np.r_[np.ones(77), np.zeros(23)]) == pytest.approx(0.8701, abs=1e-4)
    with pytest.raises(MetricUndefinedError, match="no anomalous images"):
        f1_all_anomalous([0, 0])
    with pytest.raises(MetricUndefinedError, match="no images"):
        anomalous_share([])


def test_box_hit_rate_hand_computed():
    masks = np.zeros((5, 4, 4), dtype=np.uint8)
    maps = np.zeros((5, 4, 4), dtype=np.float32)
    maps[0, 3, 3] = 9.0  # image 0: normal (empty mask), not counted
    masks[1, 0:2, 0:2] = 1
    maps[1, 0, 0] = 5.0  # maximum inside the box: hit (1)
    masks[2, 2:4, 2:4] = 1
    maps[2, 2:4, 2:4] = 3.0
    maps[2, 0, 3] = 4.0  # maximum outside the box: miss (0)
    masks[3, 0, :] = 1  # image 3: flat map, 4 of its 16 maximum pixels inside -> 0.25
    masks[4, 1, 1] = 1
    maps[4, 1, 1] = maps[4, 3, 0] = 2.0  # two maximum pixels, one inside -> 0.5
    assert box_hit_rate(masks, maps) == pytest.approx((1 + 0 + 0.25 + 0.5) / 4)
    assert box_hit_rate(torch.tensor(masks[:, None]), torch.tensor(maps[:, None])) == pytest.approx(1.75 / 4)
    assert box_hit_rate(masks[1:2], maps[1:2]) == 1.0
    with pytest.raises(MetricUndefinedError, match="no test image has defect pixels"):
        box_hit_rate(masks[:1], maps[:1])


def test_region_recall_hand_computed():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[0, 0:2, 0:2] = 1  # region A
    masks[0, 2, 2] = 1  # touches A at a corner: part of A (8-connected)
    masks[0, 5:7, 5:7] = 1  # region B
    masks[1, 3:5, 0:3] = 1  # region C
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    maps[0, 2, 2] = 0.5  # one pixel of A exactly at the threshold: A found
    maps[0, 4, 4] = 0.9  # above the threshold but on normal pixels: finds nothing
    maps[1, 3:5, 0:3] = 0.49  # all of C just below: C missed
    assert region_recall(masks, maps, 0.5) == pytest.approx(1 / 3)
    assert region_recall(masks, maps, 0.49) == pytest.approx(2 / 3)
    assert region_recall(masks, maps, 0.0) == 1.0  # every pixel >= 0: every region found
    _, n = ndimage.label(masks[0], structure=np.ones((3, 3)))
    assert n == 2
    with pytest.raises(MetricUndefinedError, match="no test image has defect pixels"):
        region_recall(np.zeros((1, 4, 4)), np.ones((1, 4, 4)), 0.5)
