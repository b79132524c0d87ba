"""smooth_block: one call per block and model -> labels (255 = nodata) and confidences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from geoseg.errors import ConfigError
from geoseg.postprocess import (
    NODATA_LABEL,
    CRFParams,
    MorphRecipe,
    SmoothingRecipe,
    argmax_classes,
    recipe_for,
    smooth_block,
)

from .conftest import SCALE, Scene, iou

PIXEL = (10.0, 10.0)


def _probs_from_labels(labels: np.ndarray, n_classes: int, p: float = 0.8) -> np.ndarray:
    probs = np.full((n_classes, *labels.shape), (1 - p) / (n_classes - 1), dtype=np.float32)
    for k in range(n_classes):
        probs[k][labels == k] = p
    return probs


def _call(
    probs: np.ndarray, recipes: dict, valid: np.ndarray | None = None, **kw: object
) -> tuple[np.ndarray, np.ndarray]:
    names = ("background", "water", "roads", "crops")[: probs.shape[0]]
    image = np.full((3, *probs.shape[1:]), 100.0, dtype=np.float32)
    return smooth_block(
        probs,
        image=image,
        valid=np.ones(probs.shape[1:], dtype=bool) if valid is None else valid,
        class_names=names,
        recipes=recipes,
        pixel_size_m=PIXEL,
        image_scale=SCALE,
        **kw,  # type: ignore[arg-type]
    )


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.sampled_from([2, 3, 5, 300]),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_argmax_classes_is_numpys_argmax_ties_to_the_lowest_class(
    n_classes: int, levels: int, seed: int
) -> None:
    # Few distinct values: most pixels have tied classes.
    rng = np.random.default_rng(seed)
    probs = (rng.integers(0, levels, size=(n_classes, 7, 9)) / levels).astype(np.float32)
    labels = argmax_classes(probs)
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=0))
    assert labels.dtype == (np.uint8 if n_classes <= 256 else np.intp)


def test_labels_are_uint8_with_255_on_nodata_and_specks_become_background() -> None:
    raw = np.zeros((40, 40), dtype=np.int64)
    raw[5:30, 5:30] = 1  # a lake
    raw[35, 35] = 1  # a one-pixel speck
    valid = np.ones(raw.shape, dtype=bool)
    valid[:, :3] = False
    water = SmoothingRecipe(method="morph", morph=MorphRecipe(min_object_area_m2=500.0))
    labels, conf = _call(_probs_from_labels(raw, 2), {"water": water}, valid=valid)
    assert labels.dtype == np.uint8
    assert (labels[~valid] == NODATA_LABEL).all()
    assert labels[35, 35] == 0
    assert (labels[5:30, 5:30] == 1).all()
    np.testing.assert_array_equal(conf, _probs_from_labels(raw, 2))  # no CRF: input back


def test_pixel_claimed_by_two_classes_goes_to_the_more_probable() -> None:
    # Water (class 1) and roads (class 2). Both closings reach into a strip of water
    # pixels between two road pieces; the strip is water by argmax and stays water,
    # while the background gap the road closing bridges becomes road.
    raw = np.zeros((30, 60), dtype=np.int64)
    raw[10:13, 5:25] = 2
    raw[10:13, 29:55] = 2  # a 4 px gap in the road...
    raw[10:13, 27] = 1  # ...with one column of water in it
    probs = _probs_from_labels(raw, 3)
    roads = SmoothingRecipe(method="morph", morph=MorphRecipe(line_close_radius_m=30.0))
    water = SmoothingRecipe(method="morph", morph=MorphRecipe(close_radius_m=30.0))
    labels, _ = _call(probs, {"water": water, "roads": roads})
    assert (labels[10:13, 27] == 1).all(), "claimed by both: its argmax class wins"
    assert (labels[10:13, [25, 26, 28]] == 2).all(), "background bridged by the road closing"
    assert (labels[10:13, 5:25] == 2).all()


def test_classes_without_crf_keep_their_raw_argmax(scene: Scene) -> None:
    # Class 1 asks for the CRF, class 2 for nothing. Class 2 has single-pixel detections
    # far from class 1, which the CRF would smooth away: they must survive.
    far = ~ndi.binary_dilation(scene.truth, iterations=10)
    rng = np.random.default_rng(5)
    dots = far & (rng.random(far.shape) < 0.01)
    probs = np.concatenate([scene.probs, np.zeros((1, *far.shape), dtype=np.float32)])
    probs[:, dots] = np.array([0.3, 0.1, 0.6], dtype=np.float32)[:, None]
    recipes = {"water": SmoothingRecipe(method="crf"), "roads": SmoothingRecipe(method="none")}
    labels, conf = smooth_block(
        probs,
        image=scene.image,
        valid=scene.valid,
        class_names=("background", "water", "roads"),
        recipes=recipes,
        pixel_size_m=PIXEL,
        image_scale=SCALE,
    )
    assert (np.argmax(conf, axis=0)[dots] != 2).mean() > 0.9, "the CRF removes the dots"
    assert (labels[dots] == 2).all(), "but class 2 takes its labels from the raw argmax"
    np.testing.assert_allclose(conf.sum(axis=0), 1.0, atol=1e-5)
    assert iou(labels == 1, scene.truth, scene.valid) > 0.95, "class 1 is CRF-denoised"


def test_missing_recipe_means_no_smoothing() -> None:
    raw = np.zeros((20, 20), dtype=np.int64)
    raw[3, 3] = 1
    labels, _ = _call(_probs_from_labels(raw, 2), {})
    assert labels[3, 3] == 1


def test_contract_errors() -> None:
    probs = _probs_from_labels(np.zeros((8, 8), dtype=np.int64), 2)
    with pytest.raises(ConfigError, match="foreground classes are water"):
        _call(probs, {"lakes": recipe_for("water")})
    with pytest.raises(ConfigError, match="class names"):
        smooth_block(
            probs,
            image=np.zeros((1, 8, 8)),
            valid=np.ones((8, 8), dtype=bool),
            class_names=("background",),
            recipes={},
            pixel_size_m=PIXEL,
            image_scale=(np.zeros(1), np.ones(1)),
        )
    three = _probs_from_labels(np.zeros((8, 8), dtype=np.int64), 3)
    recipes = {
        "water": SmoothingRecipe(method="crf"),
        "roads": SmoothingRecipe(method="crf", crf=CRFParams(iterations=2)),
    }
    with pytest.raises(ConfigError, match="same crf"):
        _call(three, recipes)
