"""Geodesic areas and the pixel-to-CRS transform."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.vectorize.geometry import geodesic_areas, pixels_to_crs

UTM = CRS.from_epsg(32633)


def _geodesic(ring: shapely.LinearRing) -> float:
    """One ring's geodesic area, straight from pyproj."""
    tr = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    lon, lat = tr.transform(*np.asarray(ring.coords).T)
    return abs(pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])


def test_holes_are_subtracted_and_multipolygon_parts_added_whatever_their_orientation() -> None:
    outer = shapely.box(500_000, 5_000_000, 501_000, 5_001_000)
    hole = shapely.box(500_100, 5_000_100, 500_200, 5_000_200)
    holed = outer.difference(hole)  # GEOS: clockwise shell, counter-clockwise hole
    island = shapely.box(502_000, 5_000_000, 502_100, 5_000_100)  # counter-clockwise
    geoms = np.array([holed, shapely.MultiPolygon([holed, island]), island], dtype=object)
    area = geodesic_areas(geoms, crs=UTM)
    expected_holed = _geodesic(outer.exterior) - _geodesic(hole.exterior)
    assert area[0] == pytest.approx(expected_holed, rel=1e-9)
    # Parts of mixed orientation add up (a signed sum would subtract the island).
    assert area[1] == pytest.approx(expected_holed + _geodesic(island.exterior), rel=1e-9)
    assert area[2] == pytest.approx(_geodesic(island.exterior), rel=1e-9)
    # UTM near its central meridian: close to the planar area, not equal (scale factor).
    assert area[0] == pytest.approx(holed.area, rel=2e-3) and area[0] != holed.area


def test_no_crs_gives_planar_areas_and_nothing_gives_nothing() -> None:
    geoms = np.array([shapely.box(0, 0, 3, 2)], dtype=object)
    assert geodesic_areas(geoms, crs=None).tolist() == [6.0]
    assert len(geodesic_areas(np.empty(0, dtype=object), crs=UTM)) == 0


@pytest.mark.parametrize(
    "transform",
    [Affine(10, 0, 500_000, 0, -10, 5_000_000), Affine(7, 2, 100, -1.5, -9, 40)],
    ids=["north-up", "rotated"],
)
def test_pixels_to_crs_applies_the_affine_transform(transform: Affine) -> None:
    px = shapely.Polygon([(0, 0), (5, 0), (5, 3), (0, 3)], [[(1, 1), (1, 2), (2, 2), (2, 1)]])
    (out,) = pixels_to_crs(np.array([px], dtype=object), transform)
    expected = [transform @ tuple(xy) for xy in shapely.get_coordinates(px)]
    np.testing.assert_allclose(shapely.get_coordinates(out), expected, rtol=1e-12)
