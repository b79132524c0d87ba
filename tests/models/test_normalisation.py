"""Normalisation transforms: each one's math, chains, nodata, validation, input units."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import ModelCardError
from geoseg.models.normalisation import (
    LOG1P_FLOOR,
    Normaliser,
    Transform,
    input_scaling,
    transform_from_dict,
    transform_to_dict,
)

X = np.array([[[0.0, 1.0], [250.0, 4000.0]], [[-2.0, 0.5], [2.0, 10.0]]])  # (2, 2, 2)


def run(*steps: Transform, image: np.ndarray = X) -> np.ndarray:
    bands = image.shape[0]
    return Normaliser(steps, bands=bands, typical=(0.0,) * bands).apply(image)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (Transform(op="scale", params={"factor": 0.005}), X * 0.005),
        (Transform(op="scale", params={"factor": [2.0, 3.0]}), X * np.array([2, 3])[:, None, None]),
        (Transform(op="affine", params={"scale": 2.75e-5, "offset": -0.2}), X * 2.75e-5 - 0.2),
        (Transform(op="divide", params={"divisor": 10000}), X / 10000),
        (Transform(op="clip", params={"min": 0, "max": 1}), np.clip(X, 0, 1)),
        (Transform(op="clip", params={"max": [5.0, 1.0]}), np.minimum(X, [[[5.0]], [[1.0]]])),
        (Transform(op="log1p"), np.log1p(np.maximum(X, np.float32(LOG1P_FLOOR)))),
        (
            Transform(op="zscore", params={"mean": [1.0, 2.0], "std": [2.0, 4.0]}),
            (X - np.array([1.0, 2.0])[:, None, None]) / np.array([2.0, 4.0])[:, None, None],
        ),
        (Transform(op="sigmoid", params={"gain": 5, "shift": -1}), 1 / (1 + np.exp(-(5 * X - 1)))),
    ],
    ids=lambda v: v.op if isinstance(v, Transform) else "",
)
def test_each_transform_computes_its_formula(step: Transform, expected: np.ndarray) -> None:
    out = run(step)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


def test_log1p_of_values_at_or_below_minus_one_stays_finite() -> None:
    out = run(Transform(op="log1p"), image=np.array([[[-1.0, -5.0, 0.0]]]))
    assert np.isfinite(out).all()
    assert out[0, 0, 0] == out[0, 0, 1] < -13  # ln(1e-6): the darkest value the chain gives


def test_sigmoid_saturates_without_overflow_or_nan() -> None:
    with np.errstate(all="raise"):  # the chain itself silences what it expects
        out = run(
            Transform(op="sigmoid", params={"gain": 1.0, "shift": 0.0}),
            image=np.array([[[-1e6, 0.0, 1e6]]]),
        )
    np.testing.assert_array_equal(out, [[[0.0, 0.5, 1.0]]])


def test_the_dynamic_world_chain_is_the_published_notebook_formula() -> None:
    a = np.array([1.7417268007636313, 2.289154079164943])
    b = np.array([2.023298706048351, 2.6171674549378166])
    dn = np.array([[[0, 500, 1200, 9000]], [[30, 2200, 4000, 16000]]], dtype=np.int16)
    chain = (
        Transform(op="scale", params={"factor": 0.005}),
        Transform(op="log1p"),
        Transform(op="zscore", params={"mean": tuple(a), "std": tuple(b)}),
        Transform(op="sigmoid", params={"gain": 5.0, "shift": -1.0}),
    )
    x = (np.log(dn * 0.005 + 1) - a[:, None, None]) / b[:, None, None]
    e = np.exp(x * 5 - 1)
    np.testing.assert_allclose(run(*chain, image=dn), e / (e + 1), rtol=0, atol=2e-7)


def test_a_zscore_chain_is_bit_identical_to_the_format_1_normalisation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(3, 17, 19), dtype=np.uint8)
    mean, std = (96.80563477975639, 95.8, 79.7), (45.06818000745671, 40.8, 36.9)
    out = run(Transform(op="zscore", params={"mean": mean, "std": std}), image=image)
    # What TorchSegmenter.normalise computed before cards had transforms.
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    old = np.empty(image.shape, dtype=np.float32)
    np.subtract(image, m, out=old, dtype=np.float32)
    np.divide(old, s, out=old)
    np.testing.assert_array_equal(out, old)


def test_nodata_pixels_take_the_chains_value_at_the_typical_input() -> None:
    chain = (Transform(op="scale", params={"factor": 0.005}), Transform(op="log1p"))
    norm = Normaliser(chain, bands=2, typical=(1000.0, 2000.0))
    valid = np.array([[True, False], [True, True]])
    out = norm(X, valid)
    np.testing.assert_allclose(out[:, 0, 1], np.log1p([5.0, 10.0]), rtol=1e-6)
    np.testing.assert_allclose(out[:, valid], norm.apply(X)[:, valid])
    # A z-score fills with exactly 0, as format-1 cards always did.
    z = Normaliser(
        (Transform(op="zscore", params={"mean": (3.0, 4.0), "std": (2.0, 2.0)}),),
        bands=2,
        typical=(3.0, 4.0),
    )
    assert (z(X, valid)[:, 0, 1] == 0).all()


def test_normalising_into_a_given_buffer_needs_no_new_array() -> None:
    out = np.empty(X.shape, dtype=np.float32)
    norm = Normaliser((Transform(op="divide", params={"divisor": 2}),), bands=2, typical=(0, 0))
    assert norm(X, np.ones((2, 2), bool), out=out) is out
    np.testing.assert_allclose(out, X / 2)


def test_an_empty_chain_passes_values_through_as_float32() -> None:
    image = X.astype(np.int32)
    out = run(image=image)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"op": "gamma"}, "unknown normalisation op 'gamma'; valid: scale, affine, divide"),
        ({"op": "scale"}, "'scale' needs factor; missing 'factor'"),
        ({"op": "scale", "factor": 2, "offset": 1}, "takes no parameter 'offset'"),
        ({"op": "clip"}, "'clip' needs min, max or both"),
        ({"op": "clip", "min": 2, "max": 1}, "clip min 2.0 exceeds max 1.0"),
        ({"op": "zscore", "mean": [1], "std": [0]}, "zscore.std must not be 0"),
        ({"op": "zscore", "mean": [1], "std": [-1]}, "zscore std must be positive"),
        ({"op": "divide", "divisor": 0}, "divide.divisor must not be 0"),
        ({"op": "scale", "factor": "big"}, "scale.factor must be a number, got 'big'"),
        ({"op": "scale", "factor": []}, "scale.factor is an empty list"),
        ({"op": "scale", "factor": float("nan")}, "scale.factor must be finite"),
        ({"factor": 2}, "a normalisation step must be an object with an 'op'"),
    ],
)
def test_bad_steps_are_one_line_errors(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ModelCardError, match=message) as err:
        transform_from_dict(raw)
    assert "\n" not in str(err.value)


def test_steps_roundtrip_through_their_json_form() -> None:
    raw = {"op": "zscore", "mean": [1.5, 2.0], "std": [3.0, 4.0]}
    step = transform_from_dict(raw)
    assert step.params == {"mean": (1.5, 2.0), "std": (3.0, 4.0)}
    assert transform_to_dict(step) == raw
    assert transform_from_dict(transform_to_dict(step)) == step


def test_per_band_parameters_must_match_the_band_count() -> None:
    step = Transform(op="scale", params={"factor": [1.0, 2.0, 3.0]})
    with pytest.raises(ModelCardError, match=r"scale\.factor has 3 values for 2 bands"):
        step.check_bands(2, model="m")
    step.check_bands(3, model="m")


def test_input_scaling_prefers_the_files_metadata_then_the_preset() -> None:
    preset = ((1e-4,) * 3, (-0.1,) * 3)
    # No reflectance_scale: the model reads stored values, whatever the scene says.
    assert input_scaling(None, (1, 2), preset=preset) is None
    # Metadata on the model's bands wins over the preset.
    got = input_scaling(
        1.0, (2, 3), file_scales=(1.0, 2.75e-5, 2.75e-5), file_offsets=(0, -0.2, -0.2),
        preset=preset,
    )  # fmt: skip
    assert got == ((2.75e-5, 2.75e-5), (-0.2, -0.2))
    # No metadata (GDAL's 1 and 0): the preset, times the card's factor.
    assert input_scaling(
        10000.0, (1, 3), file_scales=(1.0,) * 3, file_offsets=(0.0,) * 3, preset=preset
    ) == ((1.0, 1.0), (-1000.0, -1000.0))
    # Neither: stored values, taken to be in the model's units already.
    assert input_scaling(1.0, (1,), file_scales=(1.0,), file_offsets=(0.0,)) is None
