"""Tiling invariants: blocks partition the scene, tiles cover every read window, halos."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.tiling import blend
from geoseg.tiling.blend import BlendAccumulator, blend_weights
from geoseg.tiling.grid import TilingSpec, core_size, plan_blocks, tile_origins


@st.composite
def specs(draw: st.DrawFn) -> TilingSpec:
    tile = draw(st.sampled_from([32, 64, 96, 128]))
    overlap = draw(st.integers(0, tile // 2))
    halo = draw(st.one_of(st.none(), st.integers(overlap, overlap + 40)))
    block = draw(st.integers(tile, 4 * tile))
    return TilingSpec(tile=tile, overlap=overlap, block=block, halo=halo)


@settings(max_examples=150, deadline=None)
@given(spec=specs(), height=st.integers(1, 700), width=st.integers(1, 700))
def test_block_cores_partition_the_scene(spec: TilingSpec, height: int, width: int) -> None:
    cover = np.zeros((height, width), dtype=np.int32)
    for b in plan_blocks(height, width, spec=spec):
        c = b.core
        assert c.row_off >= 0 and c.col_off >= 0
        assert c.row_end <= height and c.col_end <= width
        cover[c.row_off : c.row_end, c.col_off : c.col_end] += 1
    assert (cover == 1).all(), "every pixel belongs to exactly one block core"


@settings(max_examples=150, deadline=None)
@given(spec=specs(), height=st.integers(1, 700), width=st.integers(1, 700))
def test_read_window_is_core_plus_halo_and_at_least_a_tile(
    spec: TilingSpec, height: int, width: int
) -> None:
    halo = spec.halo_px
    for b in plan_blocks(height, width, spec=spec):
        r, c = b.read, b.core
        assert r.row_off == c.row_off - halo and r.col_off == c.col_off - halo
        assert r.row_end >= c.row_end + halo and r.col_end >= c.col_end + halo
        assert r.height >= spec.tile and r.width >= spec.tile
        top, bottom, left, right = b.open_sides
        assert top == (c.row_off > 0) and left == (c.col_off > 0)
        assert bottom == (c.row_end < height) and right == (c.col_end < width)


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 3000),
    tile=st.sampled_from([32, 64, 128, 512]),
    data=st.data(),
)
def test_tiles_cover_the_window_without_gaps_or_spill(
    length: int, tile: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, tile // 2))
    origins = tile_origins(length, tile=tile, stride=tile - overlap)
    covered = np.zeros(max(length, tile), dtype=bool)
    for o in origins:
        covered[o : o + tile] = True
        assert o >= 0
        assert o + tile <= max(length, tile), "no tile reaches beyond the window"
    assert covered[:length].all()
    assert origins == sorted(set(origins)), "no tile is computed twice"
    if length > tile:
        gaps = np.diff(origins)
        assert (gaps <= tile - overlap).all() and (gaps > 0).all()


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(40, 300),
    w=st.integers(40, 300),
    tile=st.sampled_from([32, 64]),
    data=st.data(),
)
def test_blending_constant_tiles_gives_the_constants_back(
    h: int, w: int, tile: int, data: st.DataObject
) -> None:
    """Every pixel is covered and the blend is a convex combination (snapped edge tiles too).

    This cannot see the window weights themselves (the accumulator divides by their sum):
    see test_raw_blend_weights_of_a_tile_grid_sum_to_one.
    """
    overlap = data.draw(st.integers(0, tile // 2))
    h, w = max(h, tile), max(w, tile)
    acc = BlendAccumulator(2, (h, w), tile=tile, overlap=overlap)
    p = np.stack([np.full((tile, tile), 0.25), np.full((tile, tile), 0.75)]).astype(np.float32)
    ones = np.ones((tile, tile), dtype=bool)
    for r in tile_origins(h, tile=tile, stride=tile - overlap):
        for c in tile_origins(w, tile=tile, stride=tile - overlap):
            acc.add(p, row=r, col=c, valid=ones)
    probs, covered = acc.result()
    assert covered.all()
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs[1], 0.75, rtol=1e-5)


def _grid_weight_sum(window: np.ndarray, *, stride: int, rows: int, cols: int) -> np.ndarray:
    """The raw window weights of a regular ``rows x cols`` tile grid, summed per pixel."""
    t = window.shape[0]
    total = np.zeros(((rows - 1) * stride + t, (cols - 1) * stride + t), dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            total[r * stride : r * stride + t, c * stride : c * stride + t] += window
    return total


def _interior(total: np.ndarray, overlap: int) -> np.ndarray:
    """All but the outer ramps of the grid's border tiles (no neighbour blends there)."""
    return total[overlap : total.shape[0] - overlap, overlap : total.shape[1] - overlap]


@settings(max_examples=120, deadline=None)
@given(
    tile=st.sampled_from([32, 64, 96, 128, 256]),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    data=st.data(),
)
def test_raw_blend_weights_of_a_tile_grid_sum_to_one(
    tile: int, rows: int, cols: int, data: st.DataObject
) -> None:
    """The windows themselves sum to one inside a regular grid, with no division to hide it."""
    overlap = data.draw(st.integers(0, tile // 2))
    total = _grid_weight_sum(
        blend_weights(tile, overlap), stride=tile - overlap, rows=rows, cols=cols
    )
    # (empty for a single tile with overlap = tile / 2: all of it is an outer ramp)
    np.testing.assert_allclose(_interior(total, overlap), 1.0, rtol=0, atol=1e-6)


def _ramp_half_a_pixel_off(tile: int, overlap: int) -> np.ndarray:
    w = np.ones(tile)
    if overlap:
        up = np.sin(0.5 * np.pi * np.arange(overlap) / overlap) ** 2  # edges, not centres
        w[:overlap], w[tile - overlap :] = up, up[::-1]
    return w


def _ramp_not_squared(tile: int, overlap: int) -> np.ndarray:
    w = np.ones(tile)
    if overlap:
        up = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap], w[tile - overlap :] = up, up[::-1]
    return w


@pytest.mark.parametrize("wrong", [_ramp_half_a_pixel_off, _ramp_not_squared])
def test_weight_sum_check_catches_a_wrong_ramp(wrong, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The check above can fail: with a wrong ramp the interior is not one."""
    monkeypatch.setattr(blend, "ramp", wrong)
    total = _grid_weight_sum(blend.blend_weights(64, 16), stride=48, rows=3, cols=3)
    assert np.abs(_interior(total, 16) - 1.0).max() > 1e-3


def test_nodata_pixels_carry_no_weight() -> None:
    acc = BlendAccumulator(1, (64, 64), tile=64, overlap=16)
    valid = np.ones((64, 64), dtype=bool)
    valid[:, :10] = False
    acc.add(np.ones((1, 64, 64), np.float32), row=0, col=0, valid=valid)
    probs, covered = acc.result()
    assert not covered[:, :10].any() and covered[:, 10:].all()
    assert (probs[0, :, :10] == 0).all() and np.allclose(probs[0, :, 10:], 1.0)


def test_full_blocks_hold_whole_strides() -> None:
    spec = TilingSpec(tile=512, overlap=64, block=2048)
    core = core_size(spec)
    read = core + 2 * spec.halo_px
    assert (read - spec.overlap) % spec.stride == 0, "no snapped tile inside a full block"
    assert abs(core - 2048) <= spec.stride


def test_scene_smaller_than_one_tile_is_one_padded_block() -> None:
    spec = TilingSpec(tile=128, overlap=32, block=256)
    (block,) = plan_blocks(50, 70, spec=spec)
    assert (block.core.height, block.core.width) == (50, 70)
    assert block.read.height >= 128 and block.read.width >= 128
    assert block.open_sides == (False, False, False, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 500}, "not a positive multiple of 32; try 512"),
        ({"tile": 128, "overlap": 100}, "overlap 100"),
        ({"tile": 128, "overlap": 32, "halo": 16}, "halo 16 is smaller than the tile overlap"),
        ({"tile": 512, "block": 256}, "block size 256 is smaller than the tile 512"),
    ],
)
def test_bad_tiling_is_one_clear_error(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TilingSpec(**kwargs)
