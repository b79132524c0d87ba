"""The scene-anchored tile grid: which tiles a block predicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.tiling.grid import PixelWindow, TileGrid, TilingSpec, plan_blocks, tile_origins


def test_the_grid_is_whole_image_tiling() -> None:
    grid = TileGrid(height=1000, width=700, tile=256, stride=192)
    scene = PixelWindow(row_off=0, col_off=0, height=1000, width=700)
    rows = tile_origins(1000, tile=256, stride=192)
    cols = tile_origins(700, tile=256, stride=192)
    assert grid.covering(scene) == [(r, c) for r in rows for c in cols]
    assert rows[-1] == 1000 - 256, "the last row of tiles ends at the scene's edge"


def test_a_scene_smaller_than_a_tile_has_one_tile_beyond_it() -> None:
    grid = TileGrid(height=100, width=300, tile=256, stride=192)
    tiles = grid.covering(PixelWindow(row_off=0, col_off=0, height=100, width=300))
    assert tiles == [(0, 0), (0, 44)]
    assert grid.span(tiles) == PixelWindow(row_off=0, col_off=0, height=256, width=300)


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 900),
    width=st.integers(1, 900),
    tile=st.sampled_from([32, 64, 128]),
    overlap_frac=st.sampled_from([0, 4, 8, 16]),
    data=st.data(),
)
def test_covering_tiles_cover_the_window_and_no_other(
    height: int, width: int, tile: int, overlap_frac: int, data: st.DataObject
) -> None:
    stride = tile - (tile * overlap_frac) // 32
    grid = TileGrid(height=height, width=width, tile=tile, stride=stride)
    r0 = data.draw(st.integers(0, height - 1))
    c0 = data.draw(st.integers(0, width - 1))
    window = PixelWindow(
        row_off=r0,
        col_off=c0,
        height=data.draw(st.integers(1, height - r0)),
        width=data.draw(st.integers(1, width - c0)),
    )
    tiles = grid.covering(window)
    assert tiles == sorted(tiles), "raster order, the blending order"
    seen = np.zeros((max(height, tile), max(width, tile)), dtype=bool)
    for r, c in tiles:
        tile_window = PixelWindow(row_off=r, col_off=c, height=tile, width=tile)
        assert tile_window.intersection(window) is not None, "a tile that misses the window"
        seen[r : r + tile, c : c + tile] = True
    assert seen[
        window.relative_to(
            PixelWindow(row_off=0, col_off=0, height=seen.shape[0], width=seen.shape[1])
        )
    ].all()
    span = grid.span(tiles)
    assert span.intersection(window) == window, "the span holds the window"


@settings(max_examples=50, deadline=None)
@given(
    height=st.integers(200, 2000),
    width=st.integers(200, 2000),
    block=st.sampled_from([256, 512, 1024]),
    halo=st.integers(32, 200),
)
def test_every_block_sees_the_same_tiles_where_it_reads(
    height: int, width: int, block: int, halo: int
) -> None:
    """Blocks of any size and halo predict tiles of the one grid, and together all of it."""
    grid = TileGrid(height=height, width=width, tile=256, stride=224)
    scene = PixelWindow(row_off=0, col_off=0, height=height, width=width)
    everything = set(grid.covering(scene))
    spec = TilingSpec(tile=256, overlap=32, block=block, halo=halo)
    union: set[tuple[int, int]] = set()
    for b in plan_blocks(height, width, spec=spec):
        inside = b.read.intersection(scene)
        assert inside is not None
        union |= set(grid.covering(inside))
    assert union == everything


def test_bad_grids_are_refused() -> None:
    with pytest.raises(ConfigError, match="stride"):
        TileGrid(height=10, width=10, tile=64, stride=0)
    with pytest.raises(ConfigError, match="positive"):
        TileGrid(height=0, width=10, tile=64, stride=32)
    with pytest.raises(ConfigError, match="no tiles"):
        TileGrid(height=10, width=10, tile=64, stride=32).span([])


@pytest.mark.parametrize("length", [100, 300, 1000, 1024])
def test_a_margin_puts_the_scene_edges_inside_tiles(length: int) -> None:
    grid = TileGrid(height=length, width=length, tile=256, stride=192, margin=64)
    tiles = grid.covering(PixelWindow(row_off=0, col_off=0, height=length, width=length))
    rows = sorted({r for r, _ in tiles})
    assert rows[0] == -64, "the first tile starts a margin before the scene"
    assert rows[-1] + 256 == max(length + 64, 256 - 64), "the last ends a margin after it"
    assert all(b - a <= 192 for a, b in itertools.pairwise(rows))
    with pytest.raises(ConfigError, match="margin"):
        TileGrid(height=10, width=10, tile=64, stride=32, margin=64)
