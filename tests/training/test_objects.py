"""Relaxed scores of thin structures and object matching of polygons."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import box

from geoseg.errors import ConfigError
from geoseg.training.objects import RelaxedCounts, match_objects, relaxed_counts


def _road(shift: int = 0, *, width: int = 1, size: int = 40) -> np.ndarray:
    """A vertical road ``width`` px wide from column 18 (+ shift)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[:, 18 + shift : 18 + width + shift] = True
    return mask


def test_a_two_pixel_shift_is_a_relaxed_match_and_a_four_pixel_shift_is_not():
    truth, scored = _road(), np.ones((40, 40), dtype=bool)
    near = relaxed_counts(truth, _road(2), scored=scored, slack=3)
    assert (near.precision, near.recall, near.f1) == (1.0, 1.0, 1.0)
    assert relaxed_counts(truth, _road(2), scored=scored, slack=0).f1 == 0  # strictly: none
    far = relaxed_counts(truth, _road(4), scored=scored, slack=3)
    assert (far.precision, far.recall, far.f1) == (0.0, 0.0, 0.0)
    # A 3 px road shifted by 4 px: the two predicted columns within 3 px count.
    wide = relaxed_counts(_road(width=3), _road(4, width=3), scored=scored, slack=3)
    assert wide.precision == pytest.approx(2 / 3) and wide.recall == pytest.approx(2 / 3)


def test_relaxed_counts_ignore_unscored_pixels_and_add_up_over_windows():
    # Horizontal roads 3 px wide at rows 18..20 and, predicted, 22..24: the windows below
    # split them, so each window needs its context to count them as the whole does.
    truth, pred = _road(width=3).T.copy(), _road(4, width=3).T.copy()
    scored = np.ones((40, 40), dtype=bool)
    scored[:, :10] = False  # unlabelled columns: neither a prediction nor a label
    whole = relaxed_counts(truth, pred, scored=scored, slack=3)
    assert whole.predicted == whole.labelled == 30 * 3
    assert whole.precision == pytest.approx(2 / 3)
    # Two windows with 3 px of context each give the same counts as the whole.
    top = relaxed_counts(
        truth[:23], pred[:23], scored=scored[:23], slack=3, core=(slice(0, 20), slice(None))
    )
    bottom = relaxed_counts(
        truth[17:], pred[17:], scored=scored[17:], slack=3, core=(slice(3, 23), slice(None))
    )
    assert top + bottom == whole
    with pytest.raises(ConfigError, match="slack"):
        RelaxedCounts(slack=3) + RelaxedCounts(slack=2)


def test_relaxed_scores_are_undefined_without_predictions_or_labels():
    empty = np.zeros((10, 10), dtype=bool)
    counts = relaxed_counts(empty, empty, scored=~empty, slack=3)
    assert np.isnan(counts.precision) and np.isnan(counts.recall)
    assert counts.to_dict()["f1"] is None


FIELDS = [box(0, 0, 100, 100), box(100, 0, 200, 100)]  # two touching fields


def test_exact_polygons_match_one_to_one():
    scores = match_objects(FIELDS, FIELDS)
    assert (scores.matched, scores.predicted, scores.labelled) == (2, 2, 2)
    assert scores.precision == scores.recall == scores.f1 == scores.mean_iou == 1.0


def test_a_merge_of_two_fields_matches_neither():
    merged = [box(0, 0, 200, 100)]  # IoU 0.5 with each field... exactly at the threshold
    at_half = match_objects(merged, FIELDS)
    assert at_half.matched == 1  # one to one: the second field stays unmatched
    assert at_half.precision == 1.0 and at_half.recall == 0.5
    three = [box(0, 0, 100, 100), box(100, 0, 200, 100), box(200, 0, 300, 100)]
    merged3 = match_objects([box(0, 0, 300, 100)], three)  # IoU 1/3 with each
    assert merged3.matched == 0 and merged3.f1 == 0.0


def test_a_split_field_matches_its_larger_part_only():
    field = [box(0, 0, 100, 100)]
    halves = [box(0, 0, 70, 100), box(70, 0, 100, 100)]  # IoU 0.7 and 0.3
    scores = match_objects(halves, field)
    assert (scores.matched, scores.predicted, scores.labelled) == (1, 2, 1)
    assert scores.precision == 0.5 and scores.recall == 1.0
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.mean_iou == pytest.approx(0.7)
    even = match_objects([box(0, 0, 50, 100), box(50, 0, 100, 100)], field)  # 0.5 each
    assert even.matched == 1


def test_the_iou_threshold_decides_a_match():
    field = [box(0, 0, 100, 100)]
    shrunk = [box(0, 0, 100, 49)]  # IoU 0.49
    assert match_objects(shrunk, field).matched == 0
    assert match_objects(shrunk, field, min_iou=0.4).matched == 1
    assert match_objects([box(0, 0, 100, 51)], field).matched == 1
    assert match_objects([], field).recall == 0.0
    assert np.isnan(match_objects([], field).precision)
    with pytest.raises(ConfigError, match="min_iou"):
        match_objects(field, field, min_iou=0)
