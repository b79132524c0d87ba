"""Bridging centreline gaps: facing dead ends joined, T-junctions closed, in metres, any blocks."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geoseg.errors import ConfigError
from geoseg.vectorize.centerlines import centerline_halo_px, scene_centerlines
from geoseg.vectorize.centerlines.bridge import bridge_centerlines
from tests.vectorize.test_centerlines import (
    ONE_M,
    assert_same_lines,
    blockwise,
    coords,
    n_components,
    roads,
)


def lines(*xys: list[tuple[float, float]]) -> np.ndarray:
    return np.asarray([shapely.LineString(xy) for xy in xys], dtype=object)


def test_collinear_dead_ends_8_m_apart_become_one_line() -> None:
    a = [(0.5, 50.5), (20.5, 50.5), (40.5, 50.5)]
    b = [(48.5, 50.5), (70.5, 50.5), (90.5, 50.5)]
    out = bridge_centerlines(lines(a, b), pixel_size_m=ONE_M)
    assert len(out) == 1
    assert float(shapely.length(out[0])) == pytest.approx(90.0)
    np.testing.assert_array_equal(coords(out)[0], np.array(a + b))


def test_gaps_are_measured_in_metres_on_the_ground() -> None:
    # 8 pixels of 0.5 m (4 m) are bridged; 8 pixels of 4 m (32 m) are not.
    a, b = [(0.5, 5.5), (40.5, 5.5)], [(48.5, 5.5), (90.5, 5.5)]
    assert len(bridge_centerlines(lines(a, b), pixel_size_m=(0.5, 0.5))) == 1
    far = bridge_centerlines(lines(a, b), pixel_size_m=(4.0, 4.0))
    assert_same_lines(far, lines(a, b))
    # Non-square pixels: the gap runs along x, so dx counts.
    assert len(bridge_centerlines(lines(a, b), pixel_size_m=(4.0, 0.5))) == 2


def test_dead_ends_30_m_apart_stay_apart() -> None:
    given = lines([(0.5, 50.5), (40.5, 50.5)], [(70.5, 50.5), (90.5, 50.5)])
    assert_same_lines(bridge_centerlines(given, pixel_size_m=ONE_M), given)
    # ... unless the distance allows it.
    assert len(bridge_centerlines(given, pixel_size_m=ONE_M, bridge_m=31)) == 1


def test_ends_that_do_not_face_each_other_stay_apart() -> None:
    # A road going east ends 8 m west of where a road going north ends: perpendicular.
    perpendicular = lines([(0.5, 50.5), (40.5, 50.5)], [(40.5, 58.5), (40.5, 99.5)])
    assert_same_lines(bridge_centerlines(perpendicular, pixel_size_m=ONE_M), perpendicular)
    # Two parallel roads whose ends sit side by side, 8 m apart.
    parallel = lines([(0.5, 50.5), (40.5, 50.5)], [(0.5, 58.5), (40.5, 58.5)])
    assert_same_lines(bridge_centerlines(parallel, pixel_size_m=ONE_M), parallel)
    # Offset ends: 10 m along, 12 m aside (50 degrees off): apart; 10 m along, 5 m aside: joined.
    offset = lines([(0.5, 50.5), (40.5, 50.5)], [(50.5, 62.5), (90.5, 62.5)])
    assert len(bridge_centerlines(offset, pixel_size_m=ONE_M)) == 2
    near = lines([(0.5, 50.5), (40.5, 50.5)], [(50.5, 55.5), (90.5, 55.5)])
    assert len(bridge_centerlines(near, pixel_size_m=ONE_M)) == 1


def test_a_dead_end_pointing_at_a_road_joins_it_in_a_t() -> None:
    stem = [(0.5, 50.5), (20.5, 50.5), (42.5, 50.5)]
    bar = [(50.5, 0.5), (50.5, 99.5)]
    out = bridge_centerlines(lines(stem, bar), pixel_size_m=ONE_M)
    assert len(out) == 2 and n_components(out) == 1
    got = sorted(coords(out), key=len)
    np.testing.assert_array_equal(got[0], [(50.5, 0.5), (50.5, 50.5), (50.5, 99.5)])
    np.testing.assert_array_equal(got[1], [*stem, (50.5, 50.5)])
    # Pointing away from it, or 20 m short: no junction.
    away = lines(stem[::-1], [(-9.5, 0.5), (-9.5, 99.5)])
    assert len(bridge_centerlines(away, pixel_size_m=ONE_M)) == 2
    short = lines(stem, [(62.5, 0.5), (62.5, 99.5)])
    assert_same_lines(bridge_centerlines(short, pixel_size_m=ONE_M), short)


def test_each_dead_end_is_used_once_nearest_first() -> None:
    # The west road's end faces two ends: the nearer (6 m) wins, the other (11 m, from the
    # north-east) stays loose.
    west = [(0.5, 50.5), (40.5, 50.5)]
    near = [(46.5, 50.5), (76.5, 50.5)]
    far = [(60.5, 40.5), (50.5, 46.5)]
    out = bridge_centerlines(lines(west, near, far), pixel_size_m=ONE_M)
    assert len(out) == 2
    got = sorted(coords(out), key=len)
    np.testing.assert_array_equal(got[1], np.array(west + near))
    np.testing.assert_array_equal(got[0], np.array(far))  # untouched


def test_unbridged_lines_pass_through_and_order_is_canonical() -> None:
    keep = lines([(0.5, 90.5), (99.5, 90.5)])
    gap = lines([(0.5, 10.5), (40.5, 10.5)], [(48.5, 10.5), (90.5, 10.5)])
    one = bridge_centerlines(np.concatenate([keep, gap]), pixel_size_m=ONE_M)
    other = bridge_centerlines(np.concatenate([gap[::-1], keep]), pixel_size_m=ONE_M)
    assert_same_lines(one, other)
    assert len(one) == 2
    assert any(shapely.equals(g, keep[0]) for g in one)
    assert len(bridge_centerlines(np.empty(0, dtype=object), pixel_size_m=ONE_M)) == 0


def test_a_junction_end_is_not_a_dead_end() -> None:
    # Three lines meeting at a node: their ends there are taken, whatever they face.
    star = lines(
        [(0.5, 50.5), (50.5, 50.5)], [(50.5, 50.5), (99.5, 50.5)], [(50.5, 50.5), (50.5, 0.5)]
    )
    assert_same_lines(bridge_centerlines(star, pixel_size_m=ONE_M), star)


def test_bridged_network_does_not_depend_on_block_size() -> None:
    # An east-west road broken twice (4 px gaps in the mask, 10 m between its centreline
    # pieces), and a road from the north stopping 5 px short of it (10 m from its
    # centreline); the breaks lie near block borders of both block sizes.
    m = roads(
        (200, 200),
        [
            (100, -10, 100, 54, 3),
            (100, 65, 100, 124, 3),
            (100, 135, 100, 210, 3),
            (-10, 100, 88, 100, 3),
        ],
    )
    halo = centerline_halo_px(prune_m=20.0, pixel_size_m=ONE_M, max_road_width_m=10)
    kw = {"max_road_width_m": 10, "simplify_px": 1.0}
    whole = scene_centerlines(m, pixel_size_m=ONE_M, **kw)
    assert n_components(whole) == 4, "the mask's breaks break the network"
    bridged = bridge_centerlines(whole, pixel_size_m=ONE_M)
    assert n_components(bridged) == 1
    assert len(bridged) == 2  # the east-west road, whole, and the north road joining it
    for block in (64, 96):
        merged, _ = blockwise(m, halo=halo, tile=32, overlap=0, block=block, **kw)
        assert_same_lines(bridge_centerlines(merged, pixel_size_m=ONE_M), bridged)


def test_bad_parameters_are_refused() -> None:
    one = lines([(0.5, 0.5), (9.5, 0.5)])
    with pytest.raises(ConfigError, match="bridge_m"):
        bridge_centerlines(one, pixel_size_m=ONE_M, bridge_m=-1)
    with pytest.raises(ConfigError, match="max_angle_deg"):
        bridge_centerlines(one, pixel_size_m=ONE_M, max_angle_deg=120)
    with pytest.raises(ConfigError, match="pixel size"):
        bridge_centerlines(one, pixel_size_m=(0.0, 1.0))
    assert_same_lines(bridge_centerlines(one, pixel_size_m=ONE_M, bridge_m=0), one)
