"""Per-block polygonization: one valid polygon per 4-connected object, in scene pixels."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geoseg.vectorize.polygons import BlockPolygons, polygonize_block

CLOSED = (False, False, False, False)


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_each_object_is_one_polygon_with_its_pixel_count_and_confidence() -> None:
    mask = _mask(
        [
            "##....",
            "##..#.",
            "....#.",
            "....##",
        ]
    )
    conf = np.where(mask, 0.5, 0.0)
    conf[0, 0] = 0.9
    polys = polygonize_block(mask, confidence=conf, row_off=0, col_off=0, open_sides=CLOSED)
    assert len(polys) == 2
    assert polys.labels.tolist() == [1, 2]
    assert polys.pixels.tolist() == [4, 4]
    assert polys.conf_sum == pytest.approx([0.9 + 0.5 * 3, 0.5 * 4])
    assert all(shapely.is_valid(polys.geometries))
    # area in pixels equals the pixel count: edges follow pixel borders exactly
    assert shapely.area(polys.geometries).tolist() == [4.0, 4.0]
    assert shapely.equals(polys.geometries[0], shapely.box(0, 0, 2, 2))
    assert not polys.seam.any()


def test_coordinates_are_scene_pixels_offset_by_the_block_origin() -> None:
    mask = _mask(["...", ".#.", "..."])
    polys = polygonize_block(
        mask, confidence=mask * 1.0, row_off=2048, col_off=4096, open_sides=CLOSED
    )
    (geom,) = polys.geometries
    # x is the column, y the row; integers, so pieces from neighbouring blocks match exactly
    assert shapely.equals(geom, shapely.box(4097, 2049, 4098, 2050))
    assert (shapely.get_coordinates(geom) % 1 == 0).all()


def test_pixels_touching_only_at_a_corner_are_separate_objects() -> None:
    mask = _mask(["#.", ".#"])
    polys = polygonize_block(mask, confidence=mask * 1.0, row_off=0, col_off=0, open_sides=CLOSED)
    assert len(polys) == 2 and polys.pixels.tolist() == [1, 1]
    assert all(shapely.is_valid(polys.geometries))


def test_a_hole_stays_a_hole_and_an_island_in_it_is_its_own_polygon() -> None:
    mask = _mask(
        [
            "#####",
            "#...#",
            "#.#.#",
            "#...#",
            "#####",
        ]
    )
    polys = polygonize_block(mask, confidence=mask * 1.0, row_off=0, col_off=0, open_sides=CLOSED)
    assert len(polys) == 2
    ring, island = polys.geometries
    assert len(ring.interiors) == 1 and ring.area == 16 and polys.pixels[0] == 16
    assert island.area == 1 and shapely.within(island, shapely.Polygon(ring.interiors[0]))
    assert all(shapely.is_valid(polys.geometries))


def test_objects_touching_an_inner_border_are_seams_and_scene_edges_are_not() -> None:
    mask = _mask(
        [
            "#.....",
            "......",
            "..##..",
            "......",
            ".....#",
        ]
    )
    # the scene continues above and to the right of this core; left and bottom are scene edges
    open_sides = (True, False, False, True)
    polys = polygonize_block(
        mask, confidence=mask * 1.0, row_off=0, col_off=0, open_sides=open_sides
    )
    assert polys.pixels.tolist() == [1, 2, 1]
    assert polys.seam.tolist() == [True, False, True]
    top, bottom, left, right = polys.borders
    assert bottom is None and left is None
    assert top is not None and right is not None
    # border labels let the client merge with the neighbour's pieces along that side
    assert top.tolist() == [1, 0, 0, 0, 0, 0]
    assert right.tolist() == [0, 0, 0, 0, 3]


def test_an_empty_core_gives_no_polygon_but_keeps_its_borders() -> None:
    mask = np.zeros((3, 4), dtype=bool)
    polys = polygonize_block(
        mask, confidence=np.zeros((3, 4)), row_off=0, col_off=0, open_sides=(True,) * 4
    )
    assert len(polys) == 0 and polys.geometries.dtype == object
    assert [len(b) for b in polys.borders if b is not None] == [4, 4, 3, 3]
    assert all((b == 0).all() for b in polys.borders if b is not None)


def test_confidence_counts_only_the_object_s_own_pixels() -> None:
    mask = _mask(["##.", "...", "..#"])
    conf = np.full((3, 3), 0.99)  # high elsewhere: must not leak into the objects
    conf[0, :2] = [0.2, 0.4]
    conf[2, 2] = 0.7
    # a strided view, as a worker passes a crop of its block
    big = np.zeros((6, 6))
    big[::2, ::2] = conf
    polys = polygonize_block(
        mask, confidence=big[::2, ::2], row_off=0, col_off=0, open_sides=CLOSED
    )
    mean = polys.conf_sum / polys.pixels
    assert mean == pytest.approx([0.3, 0.7])


def test_select_keeps_the_chosen_polygons_and_the_borders() -> None:
    mask = _mask(["#.#.#"])
    polys = polygonize_block(
        mask, confidence=mask * 1.0, row_off=0, col_off=0, open_sides=(True, False, False, False)
    )
    some = polys.select(np.array([True, False, True]))
    assert isinstance(some, BlockPolygons)
    assert some.labels.tolist() == [1, 3] and len(some) == 2
    assert shapely.equals(some.geometries[1], shapely.box(4, 0, 5, 1))
    assert some.borders is polys.borders
