"""Grid CRF: lowers its energy, leaves nodata alone, blocks match the scene, wired as a recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from geoseg.errors import ConfigError
from geoseg.postprocess import smooth_block, smoothing_halo_px
from geoseg.postprocess.gridcrf import GridCRFParams, grid_energy, gridcrf_halo_px, gridcrf_refine
from geoseg.postprocess.recipes import SmoothingRecipe, halo_px, parse_overrides, recipe_for

from .conftest import SCALE, blob_scene, iou

PIXEL = (10.0, 10.0)


@st.composite
def unaries(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities (2-4 classes, up to 24 x 24) and a random nodata mask."""
    classes = draw(st.integers(2, 4))
    shape = draw(st.tuples(st.integers(1, 24), st.integers(1, 24)))
    raw = draw(hnp.arrays(np.float32, (classes, *shape), elements=st.floats(0.0, 1.0, width=32)))
    raw += np.float32(1e-3)
    probs = (raw / raw.sum(axis=0)).astype(np.float32)
    valid = draw(hnp.arrays(np.bool_, shape, elements=st.sampled_from([True, True, False])))
    return probs, valid


params_strategy = st.builds(
    GridCRFParams,
    weight=st.sampled_from([0.2, 1.0, 3.0]),
    connectivity=st.sampled_from([4, 8]),
)


def _free_energy(
    q: np.ndarray, probs: np.ndarray, valid: np.ndarray, params: GridCRFParams
) -> float:
    """Mean-field free energy E_Q[E] - H(Q), written out pixel pair by pixel pair."""
    p = np.clip(probs.astype(np.float64), 1e-5, 1.0)
    q = q.astype(np.float64)
    total = 0.0
    height, width = valid.shape
    for r in range(height):
        for c in range(width):
            if not valid[r, c]:
                continue
            qi = q[:, r, c]
            total += float((qi * -np.log(p[:, r, c])).sum() + (qi * np.log(qi + 1e-30)).sum())
            for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
                if params.connectivity == 4 and dy and dx:
                    continue
                rr, cc = r + dy, c + dx
                if 0 <= rr < height and 0 <= cc < width and valid[rr, cc]:
                    w = 1.0 if not (dy and dx) else 1.0 / math.sqrt(2.0)
                    total += params.weight * w * float((qi * (1.0 - q[:, rr, cc])).sum())
    return total


@settings(max_examples=60, deadline=None)
@given(case=unaries(), params=params_strategy, sweeps=st.integers(1, 4))
def test_icm_never_raises_the_energy(
    case: tuple[np.ndarray, np.ndarray], params: GridCRFParams, sweeps: int
) -> None:
    probs, valid = case
    icm = GridCRFParams(
        weight=params.weight, connectivity=params.connectivity, iterations=0, icm_sweeps=sweeps
    )
    labels, _ = gridcrf_refine(probs, valid=valid, params=icm)
    before = grid_energy(np.argmax(probs, axis=0), probs, valid, params=icm)
    after = grid_energy(labels, probs, valid, params=icm)
    assert after <= before + 1e-6


@settings(max_examples=60, deadline=None)
@given(case=unaries(), params=params_strategy, iterations=st.integers(1, 4))
def test_mean_field_never_raises_its_free_energy(
    case: tuple[np.ndarray, np.ndarray], params: GridCRFParams, iterations: int
) -> None:
    # Mean field minimises the free energy of its marginals, not the energy of their argmax
    # (which can rise by a little on random unaries); the pixel classes it updates in turn
    # make each step an exact coordinate descent of it.
    probs, valid = case
    mf = GridCRFParams(
        weight=params.weight, connectivity=params.connectivity, iterations=iterations
    )
    _, q = gridcrf_refine(probs, valid=valid, params=mf)
    start = np.clip(probs, 1e-5, 1.0)
    start = start / start.sum(axis=0)
    assert _free_energy(q, probs, valid, mf) <= _free_energy(start, probs, valid, mf) + 1e-4


@pytest.mark.parametrize("connectivity", [4, 8])
def test_mean_field_does_not_oscillate_on_a_checkerboard(connectivity: int) -> None:
    # Updating every pixel at once flips a confident checkerboard back and forth (its free
    # energy rises); updating the pixel classes in turn settles it.
    rows, cols = np.indices((12, 12))
    p1 = np.where((rows + cols) % 2, 0.9, 0.1).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    valid = np.ones(p1.shape, dtype=bool)
    params = GridCRFParams(weight=3.0, connectivity=connectivity, iterations=3)
    _, q = gridcrf_refine(probs, valid=valid, params=params)
    assert _free_energy(q, probs, valid, params) < 0.5 * _free_energy(probs, probs, valid, params)


@pytest.mark.parametrize(
    "params",
    [
        GridCRFParams(),
        GridCRFParams(connectivity=4),
        GridCRFParams(iterations=0, icm_sweeps=5),
        GridCRFParams(iterations=3, icm_sweeps=2),
    ],
    ids=["meanfield-8", "meanfield-4", "icm-8", "meanfield+icm-8"],
)
def test_a_noisy_scene_gets_strictly_lower_energy_and_closer_to_the_truth(
    params: GridCRFParams,
) -> None:
    scene = blob_scene(96, noise=1.5)
    raw = np.argmax(scene.probs, axis=0)
    labels, _ = gridcrf_refine(scene.probs, valid=scene.valid, params=params)
    before = grid_energy(raw, scene.probs, scene.valid, params=params)
    after = grid_energy(labels, scene.probs, scene.valid, params=params)
    assert after < 0.8 * before, f"energy {before:.0f} -> {after:.0f}"
    raw_iou = iou(raw == 1, scene.truth, scene.valid)
    crf_iou = iou(labels == 1, scene.truth, scene.valid)
    assert crf_iou > raw_iou + 0.1, f"IoU to truth {raw_iou:.3f} -> {crf_iou:.3f}"


def test_nodata_pixels_are_never_changed_and_never_pull() -> None:
    nodata = (slice(30, 60), slice(10, 50))
    scene = blob_scene(96, nodata=nodata)
    params = GridCRFParams(iterations=3, icm_sweeps=1, weight=2.0)
    labels, out = gridcrf_refine(scene.probs, valid=scene.valid, params=params)
    invalid = ~scene.valid
    assert invalid.any()
    np.testing.assert_array_equal(out[:, invalid], scene.probs[:, invalid])
    np.testing.assert_array_equal(labels[invalid], np.argmax(scene.probs, axis=0)[invalid])
    # Whatever the model said under the nodata, the valid pixels come out the same.
    other = scene.probs.copy()
    other[:, invalid] = np.array([0.0, 1.0], dtype=np.float32)[:, None]
    labels2, out2 = gridcrf_refine(other, valid=scene.valid, params=params)
    np.testing.assert_array_equal(labels2[scene.valid], labels[scene.valid])
    np.testing.assert_array_equal(out2[:, scene.valid], out[:, scene.valid])
    np.testing.assert_allclose(out[:, scene.valid].sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "params",
    [GridCRFParams(), GridCRFParams(connectivity=4, iterations=3, icm_sweeps=2)],
    ids=["meanfield-8", "meanfield+icm-4"],
)
def test_blocks_with_the_halo_match_the_whole_scene_exactly(params: GridCRFParams) -> None:
    scene = blob_scene(160, nodata=(slice(0, 20), slice(100, 160)))
    whole_labels, whole = gridcrf_refine(scene.probs, valid=scene.valid, params=params)
    halo = gridcrf_halo_px(params)
    assert halo == (params.iterations + params.icm_sweeps) * (4 if params.connectivity == 8 else 2)
    # Cores of 27 pixels: block origins of every parity.
    size = 160
    cores = [(r, c) for r in range(0, size, 27) for c in range(0, size, 27)]
    labels = np.full(whole_labels.shape, 99, dtype=np.uint8)
    probs = np.full_like(whole, np.nan)
    for row, col in cores:
        # The read window clipped to the scene: beyond it nothing is valid anyway.
        r0, c0 = max(row - halo, 0), max(col - halo, 0)
        r1, c1 = min(row + 27 + halo, size), min(col + 27 + halo, size)
        lab, out = gridcrf_refine(
            scene.probs[:, r0:r1, c0:c1],
            valid=scene.valid[r0:r1, c0:c1],
            params=params,
            origin_px=(r0, c0),
        )
        core = (
            slice(row - r0, min(row + 27, size) - r0),
            slice(col - c0, min(col + 27, size) - c0),
        )
        scene_core = (slice(row, row + 27), slice(col, col + 27))
        labels[scene_core] = lab[core]
        probs[(slice(None), *scene_core)] = out[(slice(None), *core)]
    np.testing.assert_array_equal(labels, whole_labels)
    np.testing.assert_array_equal(probs, whole)
    # Without the halo the blocks do not agree: the halo is what makes them match.
    r0, c0 = 27, 54
    _, alone = gridcrf_refine(
        scene.probs[:, r0 : r0 + 27, c0 : c0 + 27],
        valid=scene.valid[r0 : r0 + 27, c0 : c0 + 27],
        params=params,
        origin_px=(r0, c0),
    )
    assert not np.array_equal(alone, whole[:, r0 : r0 + 27, c0 : c0 + 27])


def test_gridcrf_is_a_smoothing_method_with_its_own_parameters_and_halo() -> None:
    overrides = parse_overrides(["gridcrf.weight=2", "water.gridcrf.connectivity=4"])
    recipe = recipe_for("water", "gridcrf+morph", overrides)
    assert recipe.uses_gridcrf and recipe.uses_morph and not recipe.uses_crf
    assert recipe.gridcrf == GridCRFParams(weight=2.0, connectivity=4)
    morph_only = SmoothingRecipe(method="morph", morph=recipe.morph)
    assert halo_px(recipe, pixel_size_m=PIXEL) == 5 * 2 + halo_px(morph_only, pixel_size_m=PIXEL)
    assert smoothing_halo_px([recipe_for("roads", "gridcrf")], pixel_size_m=PIXEL) == 20
    with pytest.raises(ConfigError, match="whole number"):
        recipe_for("water", "gridcrf", parse_overrides(["gridcrf.iterations=2.5"]))
    with pytest.raises(ConfigError, match="must be 4 or 8"):
        recipe_for("water", "gridcrf", parse_overrides(["gridcrf.connectivity=6"]))


def test_smooth_block_runs_the_grid_crf_and_refuses_mixing_it_with_the_dense_one() -> None:
    scene = blob_scene(96, noise=1.5)
    common = {
        "image": scene.image,
        "valid": scene.valid,
        "pixel_size_m": PIXEL,
        "image_scale": SCALE,
    }
    labels, conf = smooth_block(
        scene.probs,
        class_names=("background", "water"),
        recipes={"water": SmoothingRecipe(method="gridcrf")},
        **common,  # type: ignore[arg-type]
    )
    expected, _ = gridcrf_refine(scene.probs, valid=scene.valid, params=GridCRFParams())
    np.testing.assert_array_equal(labels, expected)
    assert not np.array_equal(conf, scene.probs)
    three = np.concatenate([scene.probs, np.zeros_like(scene.probs[:1])])
    with pytest.raises(ConfigError, match=r"dense CRF and .* grid CRF"):
        smooth_block(
            three,
            class_names=("background", "water", "roads"),
            recipes={
                "water": SmoothingRecipe(method="crf"),
                "roads": SmoothingRecipe(method="gridcrf"),
            },
            **common,  # type: ignore[arg-type]
        )


def test_the_background_probability_is_never_negative() -> None:
    # Hypothesis found it: where the other classes take everything, their float32 sum passed
    # 1 by an ulp and left the background a probability of -1.2e-7 (its free energy NaN).
    probs = np.full((4, 22, 9), 0.25, dtype=np.float32)
    low, third = 3.3288947e-04, 0.33322236
    probs[:, 0, 0] = probs[:, 3, 2] = (low, third, third, third)
    probs[:, 4, 5] = (third, third, third, low)
    probs[:, 6, 3] = (third, low, third, third)
    valid = np.ones((22, 9), dtype=bool)
    params = GridCRFParams(weight=3.0, connectivity=4, iterations=3)
    _, q = gridcrf_refine(probs, valid=valid, params=params)
    assert (q >= 0).all()
    assert np.allclose(q.sum(axis=0), 1.0, atol=1e-5)
