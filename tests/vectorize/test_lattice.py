"""Joining an object's block pieces by edge cancellation on the pixel lattice: the result is
the object's whole-scene polygon exactly, valid, with diagonal pixel contacts as OGC wants."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geoseg.vectorize.lattice import join_pieces, pack, unpack
from geoseg.vectorize.polygons import polygonize_block

_FOUR = ndimage.generate_binary_structure(2, 1)


def _polygons(mask: np.ndarray, *, row_off: int = 0, col_off: int = 0) -> list[shapely.Geometry]:
    return list(
        polygonize_block(
            mask,
            confidence=mask.astype(float),
            row_off=row_off,
            col_off=col_off,
            open_sides=(True,) * 4,
        ).geometries
    )


def _pieces(mask: np.ndarray, block: int) -> tuple[list[shapely.Geometry], np.ndarray, np.ndarray]:
    """The polygons of every block of ``mask``, and the block border lines."""
    h, w = mask.shape
    pieces = []
    for r in range(0, h, block):
        for c in range(0, w, block):
            sub = mask[r : r + block, c : c + block]
            pieces.extend(_polygons(sub, row_off=r, col_off=c))
    xs = np.arange(block, w, block, dtype=np.float64)
    ys = np.arange(block, h, block, dtype=np.float64)
    return pieces, xs, ys


def _largest_object(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=_FOUR)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == 1 + int(np.argmax(sizes))


def _no_general_union() -> contextlib.AbstractContextManager[object]:
    """The lattice join must not need its GEOS fallback."""
    return mock.patch.object(shapely, "coverage_union_all", side_effect=AssertionError)


def _canon(g: shapely.Geometry) -> bytes:
    return bytes(shapely.to_wkb(shapely.normalize(g)))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(8, 60),
    w=st.integers(8, 60),
    block=st.integers(3, 16),
    density=st.floats(0.5, 0.7),
)
def test_pieces_join_into_the_whole_object(
    seed: int, h: int, w: int, block: int, density: float
) -> None:
    # Speckled masks: objects full of holes and of pixels meeting only at a corner.
    mask = _largest_object(np.random.default_rng(seed).random((h, w)) < density)
    if not mask.any():
        return
    (whole,) = _polygons(mask)
    geoms, xs, ys = _pieces(mask, block)
    pieces = pack(geoms)
    with _no_general_union():
        joined = join_pieces(pieces, xs=xs, ys=ys)
    assert not pieces  # emptied: the caller's references can go
    assert joined.geom_type == "Polygon" and joined.is_valid
    assert _canon(joined) == _canon(shapely.simplify(whole, 0))
    # No collinear vertices left: as few as the outline needs.
    assert shapely.get_num_coordinates(joined) == shapely.get_num_coordinates(
        shapely.simplify(whole, 0)
    )


@pytest.mark.parametrize("block", [4, 3, 8])
def test_a_diagonal_contact_makes_a_hole_touching_the_shell(block: int) -> None:
    # A loop of pixels from (3, 3) round to (4, 4): the pixels meet only at the corner
    # x = y = 4 (a block corner when block is 4), and the background they enclose reaches
    # the outside only through that point. Valid OGC: a shell and a hole touching at it.
    mask = np.zeros((8, 8), dtype=bool)
    for r, c in [(3, 3), (2, 3), (1, 3), (1, 4), (1, 5), (1, 6), (2, 6), (3, 6), (4, 6), (4, 5)]:
        mask[r, c] = True
    mask[4, 4] = True
    pieces, xs, ys = _pieces(mask, block)
    with _no_general_union():
        joined = join_pieces(pack(pieces), xs=xs, ys=ys)
    assert joined.is_valid, shapely.is_valid_reason(joined)
    assert len(joined.interiors) == 1
    assert joined.interiors[0].intersection(joined.exterior).equals(shapely.Point(4, 4))
    assert joined.equals(shapely.union_all(_polygons(mask)))
    assert joined.area == mask.sum()


def test_two_objects_fall_back_to_a_general_union() -> None:
    a, b = shapely.box(0, 0, 4, 4), shapely.box(6, 0, 8, 4)
    joined = join_pieces(pack([a, b]), xs=np.array([4.0]), ys=np.array([]))
    assert joined.geom_type == "MultiPolygon" and joined.equals(shapely.union_all([a, b]))


def test_off_lattice_pieces_fall_back_to_a_general_union() -> None:
    a, b = shapely.box(0.5, 0, 4, 4), shapely.box(4, 0, 8, 4.25)
    joined = join_pieces(pack([a, b]), xs=np.array([4.0]), ys=np.array([]))
    assert joined.is_valid and joined.equals(shapely.union_all([a, b]))


def test_pack_and_unpack_round_trip_exactly() -> None:
    ring = shapely.box(0, 0, 10, 10).exterior
    holed = shapely.Polygon(ring, [shapely.box(2, 2, 4, 4, ccw=False).exterior])
    geoms = [
        shapely.box(0, 0, 3, 2),
        holed,
        shapely.MultiPolygon([shapely.box(20, 0, 21, 1), holed]),
        shapely.box(0.5, 0, 2, 2),  # off the lattice: kept in float64
    ]
    packed = pack(geoms)
    assert [p.coords.dtype for p in packed] == [np.int32] * 3 + [np.float64]
    back = unpack(packed)
    assert [g.geom_type for g in back] == ["Polygon", "Polygon", "MultiPolygon", "Polygon"]
    assert all(shapely.equals_exact(a, b, 0) for a, b in zip(back, geoms, strict=True))
    assert pack([]) == [] and len(unpack([])) == 0
