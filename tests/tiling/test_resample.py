"""A model's pixel grid over a scene, and probabilities brought back to the scene grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.resample import model_grid, to_scene_grid


def _grid(scene: int, ratio: float):
    grid = model_grid(scene_height=scene, scene_width=scene, scene_pixel_m=ratio, model_pixel_m=1.0)
    assert grid is not None
    return grid


def test_scenes_near_the_models_pixel_size_are_read_as_they_are() -> None:
    for ratio in (0.85, 1.0, 1.2):
        assert (
            model_grid(scene_height=100, scene_width=100, scene_pixel_m=ratio, model_pixel_m=1.0)
            is None
        )
    assert model_grid(scene_height=9, scene_width=9, scene_pixel_m=1, model_pixel_m=None) is None


def test_the_grid_divides_the_scene_exactly() -> None:
    grid = _grid(1500, 0.3)  # a 0.3 m scene for a 1 m model
    assert (grid.height, grid.width) == (450, 450)
    assert grid.row_factor == pytest.approx(1500 / 450)
    assert grid.downsamples
    assert not _grid(100, 1.6).downsamples


def test_much_coarser_pixels_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"10 m, 10 times the 1 m .* \(at most 2 times coarser\)"):
        model_grid(scene_height=10, scene_width=10, scene_pixel_m=10.0, model_pixel_m=1.0)


@settings(max_examples=60, deadline=None)
@given(
    ratio=st.sampled_from([0.25, 0.3, 0.5, 0.7, 1.5, 2.0]),
    r0=st.integers(-40, 200),
    c0=st.integers(-40, 200),
    h=st.integers(1, 120),
    w=st.integers(1, 120),
)
def test_a_windows_model_cover_interpolates_every_scene_pixel(
    ratio: float, r0: int, c0: int, h: int, w: int
) -> None:
    grid = _grid(300, ratio)
    window = PixelWindow(row_off=r0, col_off=c0, height=h, width=w)
    cover = grid.cover(window)
    probs = np.ones((2, cover.height, cover.width), dtype=np.float32)
    valid = np.ones((cover.height, cover.width), dtype=bool)
    out = to_scene_grid(probs, valid, grid=grid, model_window=cover, window=window)
    assert out.shape == (2, h, w)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_a_linear_field_comes_back_exactly_and_positions_are_pixel_centres() -> None:
    grid = _grid(60, 0.25)  # 4 scene pixels per model pixel
    window = PixelWindow(row_off=8, col_off=0, height=20, width=30)
    cover = grid.cover(window)
    rows = np.arange(cover.row_off, cover.row_end, dtype=np.float32)
    field = np.broadcast_to((rows + 0.5)[:, None] * 4.0, (cover.height, cover.width))
    out = to_scene_grid(
        field[None].copy(),
        np.ones(field.shape, dtype=bool),
        grid=grid,
        model_window=cover,
        window=window,
    )
    # a model pixel's centre (i + 0.5) * 4 in scene pixels: interpolated at scene centres
    expected = np.arange(window.row_off, window.row_end, dtype=np.float32) + 0.5
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-4)


def test_model_pixels_without_data_do_not_pull_their_neighbours_down() -> None:
    grid = _grid(40, 0.5)
    window = PixelWindow(row_off=0, col_off=0, height=40, width=40)
    cover = grid.cover(window)
    probs = np.zeros((2, cover.height, cover.width), dtype=np.float32)
    probs[1] = 0.8
    valid = np.ones((cover.height, cover.width), dtype=bool)
    valid[:, : cover.width // 2] = False
    probs[1][~valid] = 0.0  # what a predictor leaves where there is no data
    out = to_scene_grid(probs, valid, grid=grid, model_window=cover, window=window)
    reached = out[1] > 0
    np.testing.assert_allclose(out[1][reached], 0.8, rtol=1e-6)
