"""Road centrelines: geometry of synthetic roads, spur pruning, and block-wise == whole scene."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.draw import disk, line

from geoseg.errors import ConfigError
from geoseg.tiling.grid import TilingSpec, plan_blocks
from geoseg.vectorize.centerlines import (
    BlockLines,
    block_centerlines,
    centerline_halo_px,
    line_lengths_m,
    merge_centerlines,
    scene_centerlines,
)
from geoseg.vectorize.geometry import pixels_to_crs

ONE_M = (1.0, 1.0)


def cross(n: int = 200, width: int = 7) -> np.ndarray:
    """Two perpendicular roads ``width`` px wide crossing in the middle of an n x n scene."""
    m = np.zeros((n, n), dtype=bool)
    a = n // 2 - width // 2
    m[a : a + width, :] = True
    m[:, a : a + width] = True
    return m


def roads(shape: tuple[int, int], segments: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Roads along straight segments ``(r0, c0, r1, c1, radius)``; ends may leave the scene."""
    m = np.zeros(shape, dtype=bool)
    for r0, c0, r1, c1, radius in segments:
        one = np.zeros(shape, dtype=bool)
        rr, cc = line(r0, c0, r1, c1)
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        one[rr[ok], cc[ok]] = True
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        m |= ndi.binary_dilation(one, structure=yy**2 + xx**2 <= radius * radius)
    return m


def coords(lines: np.ndarray) -> list[np.ndarray]:
    return [shapely.get_coordinates(g) for g in lines]


def assert_same_lines(a: np.ndarray, b: np.ndarray) -> None:
    """Same lines, same order, bitwise-equal vertices."""
    assert len(a) == len(b)
    for x, y in zip(coords(a), coords(b)):
        np.testing.assert_array_equal(x, y)


def n_components(lines: np.ndarray) -> int:
    """Connected components of a line network (lines touching anywhere are connected)."""
    n = len(lines)
    touch = shapely.intersects(lines[:, None], lines[None, :])
    i, j = np.nonzero(touch)
    return int(connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)))[0])


def blockwise(
    mask: np.ndarray,
    *,
    halo: int,
    tile: int = 96,
    overlap: int = 32,
    block: int = 96,
    pixel_size_m: tuple[float, float] = ONE_M,
    **kwargs: float,
) -> tuple[np.ndarray, list[BlockLines]]:
    """Run the pipeline's way: plan blocks, cut reflect-padded read windows, merge."""
    h, w = mask.shape
    spec = TilingSpec(tile=tile, overlap=overlap, block=block, halo=halo)
    pieces = []
    for b in plan_blocks(h, w, spec=spec):
        r, c = b.read.row_off, b.read.col_off
        pad = ((max(0, -r), max(0, b.read.row_end - h)), (max(0, -c), max(0, b.read.col_end - w)))
        window = mask[max(0, r) : min(h, b.read.row_end), max(0, c) : min(w, b.read.col_end)]
        # The reader reflects beyond the scene; centrelines must ignore it.
        window = np.pad(window, pad, mode="symmetric")
        assert window.shape == (b.read.height, b.read.width)
        pieces.append(
            block_centerlines(
                window,
                core=b.core_in_read,
                origin_px=(r, c),
                scene_shape=(h, w),
                pixel_size_m=pixel_size_m,
                **kwargs,
            )
        )
    return merge_centerlines(pieces), pieces


# --------------------------------------------------------------------------- whole scene


def test_cross_is_one_network_of_the_right_length_with_a_central_junction() -> None:
    lines = scene_centerlines(cross(), pixel_size_m=ONE_M, max_road_width_m=10)
    assert n_components(lines) == 1
    # Two 200 m roads; they run to the scene edges, so 3 % covers only the junction.
    total = float(shapely.length(lines).sum())
    assert total == pytest.approx(400.0, rel=0.03)
    ends = np.concatenate([c[[0, -1]] for c in coords(lines)])
    points, count = np.unique(ends, axis=0, return_counts=True)
    junction = points[count >= 3]
    assert len(junction) == 1
    assert np.hypot(*(junction[0] - 100.0)) < 3.0
    # Every other end is on the scene edge, exactly.
    edge = points[count == 1]
    assert len(edge) == 4
    assert np.all(np.any((edge == 0.0) | (edge == 200.0), axis=1))


def test_short_spur_is_pruned_and_long_branch_kept() -> None:
    m = np.zeros((120, 160), dtype=bool)
    m[57:64, :] = True  # main road, across the scene
    m[64:76, 40:45] = True  # spur: ~15 m of skeleton below the road
    m[64:110, 100:105] = True  # branch: ~48 m
    lines = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=20.0)
    assert n_components(lines) == 1
    below = [c for c in coords(lines) if c[:, 1].max() > 66]
    assert len(below) == 1  # the branch; the spur is gone
    assert below[0][:, 0].min() >= 100 and below[0][:, 1].max() > 105
    # Without pruning the spur is there.
    unpruned = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=0.0)
    assert any(c[:, 1].max() > 66 and c[:, 0].max() < 50 for c in coords(unpruned))


@pytest.mark.parametrize(
    ("pixel_size_m", "vertical_kept"), [((1.0, 2.0), True), ((2.0, 1.0), False)]
)
def test_prune_length_is_in_metres_on_anisotropic_pixels(
    pixel_size_m: tuple[float, float], vertical_kept: bool
) -> None:
    # Two spurs of the same 14 px of skeleton, one vertical and one horizontal: 28 m and
    # 14 m with 1 x 2 m pixels, the other way round with 2 x 1 m pixels.
    m = np.zeros((120, 160), dtype=bool)
    m[57:64, :] = True
    m[64:78, 40:45] = True  # vertical spur below the horizontal road
    m[:, 120:127] = True
    m[20:25, 127:141] = True  # horizontal spur right of the vertical road
    lines = scene_centerlines(m, pixel_size_m=pixel_size_m, prune_m=20.0)
    cs = coords(lines)
    vertical = any(c[:, 1].max() > 70 and c[:, 0].max() < 50 for c in cs)
    horizontal = any(c[:, 0].max() > 133 and c[:, 1].max() < 30 for c in cs)
    assert vertical is vertical_kept
    assert horizontal is not vertical_kept


def test_a_small_star_keeps_its_two_longest_arms() -> None:
    # Four arms of 14, 12, 10 and 8 px, all shorter than prune_m, 44 m in all: a blob of
    # road, not nothing. Its main axis (the two longest arms) stays as one line.
    m = roads((80, 80), [(40, 26, 40, 52, 1), (30, 40, 48, 40, 1)])
    lines = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=20.0)
    assert len(lines) == 1
    np.testing.assert_array_equal(coords(lines)[0][[0, -1]], [[26.5, 40.5], [52.5, 40.5]])


def test_a_forked_side_road_loses_its_forks_but_keeps_its_stem() -> None:
    # A 17 m side road ending in two 14 m forks: each fork is a spur at the fork's
    # junction, but the side road with its forks reaches 31 m > prune_m from the main road.
    m = roads((100, 100), [(20, -5, 20, 105, 2), (20, 50, 36, 50, 1), (36, 50, 46, 40, 1)])
    m |= roads((100, 100), [(36, 50, 46, 60, 1)])
    lines = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=20.0)
    assert len(lines) == 3
    stem = [c for c in coords(lines) if c[:, 1].max() > 30]
    assert len(stem) == 1
    assert np.all(stem[0][:, 0] == 50.5)  # straight down: the forks are gone
    assert stem[0][:, 1].max() == pytest.approx(37.5)


def test_diagonal_road_is_one_line_corner_to_corner() -> None:
    m = roads((200, 200), [(0, 0, 199, 199, 3)])
    lines = scene_centerlines(m, pixel_size_m=ONE_M)
    assert len(lines) == 1
    xy = coords(lines)[0]
    assert xy[0].tolist() == [0.0, 0.0] and xy[-1].tolist() == [200.0, 200.0]
    assert lines[0].length == pytest.approx(200 * math.sqrt(2), rel=0.01)


def test_ring_road_stays_a_closed_ring_and_a_road_joins_it() -> None:
    m = np.zeros((200, 200), dtype=bool)
    m[disk((100, 100), 40)] = True
    m[disk((100, 100), 33)] = False
    lines = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=20.0)
    assert len(lines) == 1 and lines[0].is_closed
    # Centre radius 36.5; an 8-connected digital circle is up to ~5 % longer.
    assert lines[0].length == pytest.approx(2 * math.pi * 36.5, rel=0.06)
    m[97:104, :70] = True  # a road from the left edge into the ring
    joined = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=20.0)
    assert len(joined) == 2 and n_components(joined) == 1
    loop = [g for g in joined if g.is_closed]
    assert len(loop) == 1
    road = next(g for g in joined if not g.is_closed)
    # The loop starts and ends at the junction where the road ends.
    assert (
        shapely.get_coordinates(loop[0])[0].tolist()
        in coords(np.array([road]))[0][[0, -1]].tolist()
    )


def test_empty_mask_and_tiny_fragments_give_no_lines() -> None:
    m = np.zeros((60, 60), dtype=bool)
    assert len(scene_centerlines(m, pixel_size_m=ONE_M)) == 0
    m[20:23, 20:32] = True  # a 12 m blob, shorter than prune_m
    assert len(scene_centerlines(m, pixel_size_m=ONE_M, prune_m=20.0)) == 0
    assert len(scene_centerlines(m, pixel_size_m=ONE_M, prune_m=5.0)) == 1


def test_road_leaving_the_scene_ends_on_the_edge_and_a_short_stub_to_it_is_kept() -> None:
    m = np.zeros((100, 150), dtype=bool)
    m[40:47, :90] = True  # from the left edge to x = 90
    m[:40, 60:65] = True  # a 40 px stub up to the top edge...
    m[47:60, 20:25] = True  # ...and a real 13 px spur below
    lines = scene_centerlines(m, pixel_size_m=ONE_M, prune_m=50.0)
    ends = np.concatenate([c[[0, -1]] for c in coords(lines)])
    assert any(e[0] == 0.0 for e in ends)  # exactly on the left scene edge
    assert any(e[1] == 0.0 for e in ends)  # the stub reaches the top edge: not a spur
    assert not any(c[:, 1].max() > 50 for c in coords(lines))  # the spur is pruned


def test_same_input_gives_same_output() -> None:
    m = roads((150, 150), [(-5, 10, 160, 140, 3), (70, -5, 60, 160, 2), (0, 120, 149, 20, 4)])
    a = scene_centerlines(m, pixel_size_m=ONE_M, simplify_px=1.0)
    b = scene_centerlines(m.copy(), pixel_size_m=ONE_M, simplify_px=1.0)
    assert_same_lines(a, b)


def test_simplification_drops_vertices_but_keeps_ends() -> None:
    m = roads((150, 150), [(10, 0, 140, 149, 3)])  # shallow slope: staircase skeleton
    raw = scene_centerlines(m, pixel_size_m=ONE_M)
    simple = scene_centerlines(m, pixel_size_m=ONE_M, simplify_px=1.0)
    assert len(raw) == len(simple) == 1
    a, b = coords(raw)[0], coords(simple)[0]
    assert len(b) < len(a) / 10
    np.testing.assert_array_equal(a[[0, -1]], b[[0, -1]])
    assert shapely.hausdorff_distance(raw[0], simple[0]) <= 1.0


# --------------------------------------------------------------------------- blocks


def test_cross_in_3x3_blocks_equals_the_whole_scene() -> None:
    m = cross()
    halo = centerline_halo_px(prune_m=20.0, pixel_size_m=ONE_M, max_road_width_m=10)
    whole = scene_centerlines(m, pixel_size_m=ONE_M, max_road_width_m=10)
    merged, pieces = blockwise(m, halo=halo, max_road_width_m=10)
    assert len(pieces) == 9  # cores 94, 94, 12: the last read windows overrun the scene
    assert_same_lines(merged, whole)
    assert float(shapely.length(merged).sum()) == pytest.approx(
        float(shapely.length(whole).sum()), abs=1.0
    )
    # Each arm is cut at block borders and the two sides meet bit for bit.
    seam_ends = [
        xy[0 if start else -1]
        for p in pieces
        for xy, s0, s1 in zip(coords(p.geometries), p.seam_start, p.seam_end)
        for start, flag in ((True, s0), (False, s1))
        if flag
    ]
    assert len(seam_ends) >= 8
    _, count = np.unique(np.array(seam_ends), axis=0, return_counts=True)
    assert np.all(count == 2)


def test_too_small_halo_breaks_block_equality() -> None:
    # A 15 m spur that crosses a block border: with the proper halo both blocks see that it
    # ends and prune it; with a 4 px halo the upper block sees it run off its read window.
    m = np.zeros((200, 200), dtype=bool)
    m[80:87, :] = True
    m[87:102, 50:55] = True  # skeleton reaches below row 94, the first core border
    whole = scene_centerlines(m, pixel_size_m=ONE_M, max_road_width_m=10)
    halo = centerline_halo_px(prune_m=20.0, pixel_size_m=ONE_M, max_road_width_m=10)
    good, _ = blockwise(m, halo=halo, max_road_width_m=10)
    assert_same_lines(good, whole)
    bad, _ = blockwise(m, halo=4, tile=32, overlap=0, block=94, max_road_width_m=10)
    assert len(bad) != len(whole)


segment = st.tuples(
    st.integers(-20, 140), st.integers(-20, 140), st.integers(-20, 140), st.integers(-20, 140),
    st.integers(0, 4),
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(segment, min_size=1, max_size=5),
    size=st.tuples(st.integers(40, 130), st.integers(40, 130)),
    block=st.sampled_from([32, 64, 96]),
    pixel_size_m=st.sampled_from([(1.0, 1.0), (0.6, 0.9), (2.0, 1.0)]),
    prune_m=st.sampled_from([0.0, 6.0, 20.0]),
    simplify_px=st.sampled_from([0.0, 1.0]),
)
def test_blockwise_equals_whole_scene(
    segments: list[tuple[int, int, int, int, int]],
    size: tuple[int, int],
    block: int,
    pixel_size_m: tuple[float, float],
    prune_m: float,
    simplify_px: float,
) -> None:
    m = roads(size, segments)
    # Roads are at most 9 px wide: 10 px in metres along the coarser axis.
    width_m = 10 * max(pixel_size_m)
    kw = {"prune_m": prune_m, "simplify_px": simplify_px, "max_road_width_m": width_m}
    halo = centerline_halo_px(prune_m=prune_m, pixel_size_m=pixel_size_m, max_road_width_m=width_m)
    whole = scene_centerlines(m, pixel_size_m=pixel_size_m, **kw)
    merged, _ = blockwise(
        m, halo=halo, tile=32, overlap=0, block=block, pixel_size_m=pixel_size_m, **kw
    )
    assert_same_lines(merged, whole)


def test_merge_does_not_depend_on_the_order_of_blocks() -> None:
    m = roads((150, 150), [(-5, 10, 160, 140, 3), (70, -5, 60, 160, 2), (0, 120, 149, 20, 4)])
    halo = centerline_halo_px(prune_m=20.0, pixel_size_m=ONE_M, max_road_width_m=10)
    merged, pieces = blockwise(m, halo=halo, tile=32, overlap=0, block=40, max_road_width_m=10)
    assert sum(int(p.seam.sum()) for p in pieces) > 0
    assert_same_lines(merge_centerlines(pieces[::-1]), merged)


def test_a_missing_neighbour_leaves_a_loose_end() -> None:
    m = cross(120)
    halo = centerline_halo_px(prune_m=20.0, pixel_size_m=ONE_M, max_road_width_m=10)
    _, pieces = blockwise(m, halo=halo, tile=32, overlap=0, block=40, max_road_width_m=10)
    lines = merge_centerlines(pieces[1:])  # the top-left block failed
    assert len(lines) > 0
    assert all(g.is_valid for g in lines)


def _two_blocks(left: np.ndarray, right: np.ndarray, *, halo: int = 40) -> list[BlockLines]:
    """Cores cols 0-99 and 100-199 of a 60 x 200 scene, each block seeing its own mask.

    A real model gives neighbouring blocks slightly different masks near their border
    (different tiles and context): here the two blocks read different masks outright.
    """
    h, w = left.shape
    out = []
    for mask, c0, c1 in ((left, 0, 100), (right, 100, 200)):
        r0, r1 = max(0, c0 - halo), min(w, c1 + halo)
        out.append(
            block_centerlines(
                mask[:, r0:r1],
                core=(slice(0, h), slice(c0 - r0, c1 - r0)),
                origin_px=(0, r0),
                scene_shape=(h, w),
                pixel_size_m=ONE_M,
                simplify_px=1.0,
                max_road_width_m=10,
            )
        )
    return out


def _loose_cut_ends(lines: np.ndarray, border: float = 100.0) -> int:
    ends = np.concatenate([c[[0, -1]] for c in coords(lines)])
    return int(np.sum(ends[:, 0] == border))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([(30, -5, 30, 205, 3)], [(31, -5, 31, 205, 3)]),  # one pixel apart
        ([(30, -5, 30, 205, 3)], [(32, -5, 32, 205, 3)]),  # two pixels apart
        ([(30, -5, 30, 205, 3)], [(28, -5, 36, 205, 3)]),  # straight vs oblique
        ([(5, 60, 55, 140, 3)], [(6, 60, 56, 140, 3)]),  # diagonal, one pixel apart
    ],
    ids=["1px", "2px", "straight-oblique", "diagonal"],
)
def test_skeletons_crossing_a_border_pixels_apart_are_joined(
    left: list[tuple[int, int, int, int, int]], right: list[tuple[int, int, int, int, int]]
) -> None:
    pieces = _two_blocks(roads((60, 200), left), roads((60, 200), right))
    exact = merge_centerlines(pieces, snap_px=0.0)
    assert len(exact) == 2 and _loose_cut_ends(exact) == 2, "the crossings do differ"
    lines = merge_centerlines(pieces)
    assert len(lines) == 1 and _loose_cut_ends(lines) == 0
    whole = scene_centerlines(roads((60, 200), left), pixel_size_m=ONE_M, max_road_width_m=10)
    assert lines[0].length == pytest.approx(whole[0].length, abs=3.0)
    assert lines[0].is_valid
    # Order of blocks does not matter.
    assert_same_lines(merge_centerlines(pieces[::-1]), lines)


def test_crossings_further_apart_than_the_tolerance_stay_apart() -> None:
    pieces = _two_blocks(
        roads((60, 200), [(20, -5, 20, 205, 3)]), roads((60, 200), [(40, -5, 40, 205, 3)])
    )
    assert len(merge_centerlines(pieces)) == 2
    assert len(merge_centerlines(pieces, snap_px=25.0)) == 1


def _piece(xy: list[tuple[float, float]], start: bool = False, end: bool = False) -> BlockLines:
    return BlockLines(
        geometries=np.array([shapely.LineString(xy)], dtype=object),
        seam_start=np.array([start]),
        seam_end=np.array([end]),
    )


def test_a_loose_cut_end_snaps_to_the_neighbours_line_end_across_the_border() -> None:
    # The left block's skeleton crosses x = 100; the right block saw a junction just
    # past the border instead, where its lines end.
    left = _piece([(90.5, 50.5), (99.5, 50.5), (100.0, 50.5)], end=True)
    right = BlockLines(
        geometries=np.array(
            [
                shapely.LineString([(101.5, 51.5), (140.5, 51.5)]),
                shapely.LineString([(101.5, 51.5), (101.5, 10.5)]),
            ],
            dtype=object,
        ),
        seam_start=np.zeros(2, dtype=bool),
        seam_end=np.zeros(2, dtype=bool),
    )
    lines = merge_centerlines([left, right])
    assert n_components(lines) == 1
    assert [101.5, 51.5] in [c[-1].tolist() for c in coords(lines)] + [
        c[0].tolist() for c in coords(lines)
    ]
    # A line end on the same side of the border is not a partner.
    same_side = _piece([(99.5, 60.5), (90.5, 60.5)])
    apart = merge_centerlines([left, same_side])
    assert n_components(apart) == 2


def test_seam_ends_of_blocks_on_the_same_side_are_not_joined() -> None:
    # Blocks above each other, both left of x = 100: their ends on x = 100 come from the
    # same side and belong to different roads.
    upper = _piece([(90.5, 98.5), (99.5, 98.5), (100.0, 98.5)], end=True)
    lower = _piece([(90.5, 100.5), (99.5, 100.5), (100.0, 100.5)], end=True)
    assert len(merge_centerlines([upper, lower])) == 2


def test_repeated_lines_and_isolated_slivers_are_dropped() -> None:
    a = shapely.LineString([(10.5, 10.5), (40.5, 10.5)])
    block = BlockLines(
        geometries=np.array(
            [
                a,
                shapely.LineString([(40.5, 10.5), (10.5, 10.5)]),  # a again, reversed
                shapely.LineString([(40.5, 10.5), (41.5, 11.5)]),  # short, touches a: kept
                shapely.LineString([(70.5, 70.5), (71.5, 71.5)]),  # short, alone: dropped
            ],
            dtype=object,
        ),
        seam_start=np.zeros(4, dtype=bool),
        seam_end=np.zeros(4, dtype=bool),
    )
    lines = merge_centerlines([block])
    assert len(lines) == 2
    assert sum(g.equals(a) for g in lines) == 1
    assert len(merge_centerlines([block], min_isolated_px=0.0)) == 3


# --------------------------------------------------------------------------- lengths, halo


def test_line_lengths_in_metres() -> None:
    m = np.zeros((50, 120), dtype=bool)
    m[20:25, :] = True
    lines = scene_centerlines(m, pixel_size_m=(10.0, 10.0), max_road_width_m=60)
    assert len(lines) == 1
    # 10 m pixels in UTM 33N near the central meridian: 120 px = 1200 m within scale error.
    utm = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    in_crs = pixels_to_crs(lines, utm)
    assert line_lengths_m(in_crs, crs=CRS.from_epsg(32633))[0] == pytest.approx(1200, rel=1e-3)
    # The same line in degrees at 60 N: one degree of longitude is ~55.8 km there.
    deg = Affine(0.001, 0.0, 10.0, 0.0, -0.001, 60.0)
    lonlat = pixels_to_crs(lines, deg)
    assert line_lengths_m(lonlat, crs=CRS.from_epsg(4326))[0] == pytest.approx(
        0.12 * 55_800, rel=0.01
    )
    assert line_lengths_m(in_crs, crs=None)[0] == pytest.approx(1200.0)
    assert len(line_lengths_m(np.empty(0, dtype=object), crs=CRS.from_epsg(4326))) == 0


def test_halo_formula() -> None:
    assert centerline_halo_px(prune_m=20.0, pixel_size_m=(1.0, 1.0), max_road_width_m=10) == 33
    # The finer axis counts: a 20 m spur spans up to 40 px of 0.5 m.
    assert centerline_halo_px(prune_m=20.0, pixel_size_m=(0.5, 2.0), max_road_width_m=30) == 103
    with pytest.raises(ConfigError, match="prune_m"):
        centerline_halo_px(prune_m=-1.0, pixel_size_m=ONE_M)


def test_bad_arguments_raise_config_errors() -> None:
    m = np.zeros((20, 20), dtype=bool)

    def call(mask: np.ndarray = m, **change: Any) -> BlockLines:
        kw: dict[str, Any] = {
            "core": (slice(5, 15), slice(5, 15)),
            "origin_px": (0, 0),
            "scene_shape": (20, 20),
            "pixel_size_m": ONE_M,
        }
        return block_centerlines(mask, **{**kw, **change})

    assert len(call()) == 0
    with pytest.raises(ConfigError, match="2-D"):
        call(np.zeros(5, dtype=bool))
    with pytest.raises(ConfigError, match="pixel size"):
        call(pixel_size_m=(0.0, 1.0))
    with pytest.raises(ConfigError, match="inside the mask"):
        call(core=(slice(5, 25), slice(5, 15)))
    with pytest.raises(ConfigError, match="leave the"):
        call(origin_px=(-10, 0))
    with pytest.raises(ConfigError, match="simplify_px"):
        call(simplify_px=-1.0)
    a = BlockLines(
        geometries=np.array([shapely.LineString([(0, 0), (1, 1)])]),
        seam_start=np.array([False]),
        seam_end=np.array([False]),
        simplify_px=1.0,
    )
    with pytest.raises(ConfigError, match="tolerances"):
        merge_centerlines([a, replace(a, simplify_px=0.0)])
    with pytest.raises(ConfigError, match="differ in length"):
        replace(a, seam_end=np.array([False, True]))
