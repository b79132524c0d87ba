"""Confusion matrix and per-class scores against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from geoseg.errors import ConfigError
from geoseg.training.metrics import (
    SegmentationMetrics,
    boundary_f1,
    compute_metrics,
    confusion_matrix,
)

NAMES = ("background", "water", "roads")


def test_confusion_matrix_counts_true_rows_predicted_columns_and_skips_ignore():
    target = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [0, 2, 2]])
    cm = confusion_matrix(target, pred, n_classes=3)
    assert cm.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert cm.sum() == 5  # the ignored pixel is not counted


def test_valid_mask_excludes_pixels():
    target = np.array([0, 1, 1])
    pred = np.array([0, 0, 1])
    cm = confusion_matrix(target, pred, n_classes=2, valid=np.array([True, False, True]))
    assert cm.tolist() == [[1, 0], [0, 1]]


def test_accumulating_windows_equals_the_whole():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 3, (20, 20))
    target[rng.random((20, 20)) < 0.1] = 255
    pred = rng.integers(0, 3, (20, 20))
    whole = confusion_matrix(target, pred, n_classes=3)
    parts = sum(
        confusion_matrix(target[r : r + 7], pred[r : r + 7], n_classes=3) for r in range(0, 20, 7)
    )
    np.testing.assert_array_equal(whole, parts)


def test_scores_match_hand_computation():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    m = compute_metrics(cm, NAMES)
    bg, water, roads = m.classes
    assert bg.iou == pytest.approx(5 / 8)  # tp 5, fp 2, fn 1
    assert bg.precision == pytest.approx(5 / 7)
    assert bg.recall == pytest.approx(5 / 6)
    assert bg.f1 == pytest.approx(10 / 13)
    assert water.iou == pytest.approx(3 / 6)  # tp 3, fp 1, fn 2
    assert water.f1 == pytest.approx(6 / 9)
    assert (water.support, water.predicted) == (5, 4)
    assert math.isnan(roads.iou) and math.isnan(roads.precision) and math.isnan(roads.recall)
    assert m.mean_iou == pytest.approx((5 / 8 + 1 / 2) / 2)  # undefined classes skipped
    assert m.mean_iou_foreground == pytest.approx(1 / 2)
    assert m.pixel_accuracy == pytest.approx(8 / 11)
    assert m["water"] is water


def test_a_class_predicted_but_absent_scores_zero_iou():
    cm = np.array([[3, 1], [0, 0]])
    m = compute_metrics(cm, ("background", "water"))
    assert m["water"].iou == 0.0
    assert m["water"].precision == 0.0
    assert math.isnan(m["water"].recall)
    assert m.mean_iou_foreground == 0.0


def test_to_dict_is_strict_json_and_round_trips():
    m = compute_metrics(np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]]), NAMES)
    d = m.to_dict()
    text = json.dumps(d, allow_nan=False)  # undefined values are null, not NaN
    assert d["classes"]["roads"]["iou"] is None
    back = SegmentationMetrics.from_dict(json.loads(text))
    assert back["water"].iou == pytest.approx(m["water"].iou)
    assert math.isnan(back["roads"].iou)


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="holds class 3 but there are only 3 classes"):
        confusion_matrix(np.array([3]), np.array([0]), n_classes=3)
    with pytest.raises(ConfigError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), n_classes=2)
    with pytest.raises(ConfigError, match="2x2"):
        compute_metrics(np.zeros((3, 3)), ("a", "b"))


def _square(size: int = 10) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[2:6, 2:6] = True
    return mask


def test_boundary_f1_matches_boundaries_within_the_tolerance():
    truth = _square()
    shifted = np.roll(truth, 1, axis=1)
    assert boundary_f1(truth, truth) == 1.0
    assert boundary_f1(shifted, truth) == 1.0  # 1 px off, within the default 2 px
    # Exactly: 6 of the 12 boundary pixels of each coincide.
    assert boundary_f1(shifted, truth, tolerance_px=0) == pytest.approx(0.5)
    wide = _square(14)
    assert 0.0 < boundary_f1(np.roll(wide, 3, axis=1), wide) < 1.0
    assert boundary_f1(np.roll(wide, 6, axis=1), wide) == 0.0  # 3 px apart at the closest


def test_boundary_f1_falls_when_fine_boundary_detail_is_smoothed_away():
    # A field whose top edge is a comb of 1 px slots; the prediction fills them in.
    truth = np.zeros((60, 60), dtype=bool)
    truth[10:50, 10:50] = True
    truth[10:20, 12:48:4] = False
    smoothed = np.zeros_like(truth)
    smoothed[10:50, 10:50] = True
    iou = (smoothed & truth).sum() / (smoothed | truth).sum()
    assert iou > 0.94  # IoU hardly notices
    assert boundary_f1(smoothed, truth) == pytest.approx(0.75, abs=0.01)


def test_boundary_f1_ignores_nodata_and_the_array_edge():
    rng = np.random.default_rng(0)
    pred, truth = rng.random((30, 30)) > 0.5, rng.random((30, 30)) > 0.5
    valid = np.ones((30, 30), dtype=bool)
    valid[:, :5] = False
    valid[:3] = False
    # Masking a margin scores exactly like cutting it off.
    assert boundary_f1(pred, truth, valid=valid, tolerance_px=0) == pytest.approx(
        boundary_f1(pred[3:, 5:], truth[3:, 5:], tolerance_px=0)
    )
    # Water up to the edge of a nodata strip has no boundary there.
    water = np.zeros((20, 20), dtype=bool)
    water[:, :10] = True
    strip = np.ones((20, 20), dtype=bool)
    strip[:, 10] = False
    assert math.isnan(boundary_f1(water, water, valid=strip))
    speck = water.copy()
    speck[5, 15] = True
    assert boundary_f1(speck, water, valid=strip) == 0.0
    assert boundary_f1(speck, water) > 0.9  # without the mask the strip's edge matches


def test_boundary_f1_of_empty_masks_and_bad_inputs():
    empty = np.zeros((10, 10), dtype=bool)
    assert math.isnan(boundary_f1(empty, empty))
    assert boundary_f1(empty, _square()) == 0.0
    assert boundary_f1(_square(), empty) == 0.0
    with pytest.raises(ConfigError, match="one shape"):
        boundary_f1(empty, np.zeros((10, 11), dtype=bool))
    with pytest.raises(ConfigError, match="valid mask shape"):
        boundary_f1(empty, empty, valid=np.ones((3, 3), dtype=bool))
    with pytest.raises(ConfigError, match="tolerance_px=-1"):
        boundary_f1(empty, empty, tolerance_px=-1)
