"""Georeferencing polygons: pixel -> CRS coordinates, true areas, metric tolerances.

Areas are geodesic (on the CRS's ellipsoid), so ``area_m2`` is square metres whatever the
CRS: degrees in EPSG:4326, feet in a State Plane CRS, or a projection with large scale
distortion such as Web Mercator. A scene without a CRS gets planar areas in pixel units
times the pixel size, which is all that can be said.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.crs import CRS

__all__ = [
    "geodesic_areas",
    "pixel_size_m",
    "pixels_to_crs",
    "simplify_polygons",
]


@functools.lru_cache(maxsize=16)
def _geo(crs_wkt: str) -> tuple[pyproj.Geod, pyproj.Transformer | None]:
    pcrs = pyproj.CRS.from_wkt(crs_wkt)
    geod = pcrs.get_geod()
    if geod is None:
        geod = pyproj.Geod(ellps="WGS84")
    if pcrs.is_geographic:
        # always_xy: coordinates come as (x=lon, y=lat) from the raster transform.
        # A geographic CRS whose axes may be lat/lon: normalise to lon/lat order.
        return geod, pyproj.Transformer.from_crs(pcrs, pcrs, always_xy=True)
    geodetic = pcrs.geodetic_crs or pyproj.CRS.from_epsg(4326)
    return geod, pyproj.Transformer.from_crs(pcrs, geodetic, always_xy=True)


def pixels_to_crs(geometries: np.ndarray, transform: Affine) -> np.ndarray:
    """Apply a raster's affine transform to geometries in pixel coordinates."""
    if len(geometries) == 0:
        return geometries

    a, b, c, d, e, f = transform[:6]

    def fn(xy: np.ndarray) -> np.ndarray:
        # In place on shapely's own copy of the coordinates: for a polygon of millions of
        # vertices every extra copy is tens of MB.
        x = xy[:, 0].copy() if d else None
        xy[:, 0] *= a
        if b:
            xy[:, 0] += b * xy[:, 1]
        xy[:, 0] += c
        xy[:, 1] *= e
        if x is not None:
            xy[:, 1] += d * x
        xy[:, 1] += f
        return xy

    return shapely.transform(geometries, fn)


def simplify_polygons(geometries: np.ndarray, *, tolerance_px: float) -> np.ndarray:
    """Douglas-Peucker simplification of polygons in pixel coordinates, each kept valid.

    GEOS's topology-preserving variant keeps every polygon's rings from crossing each
    other or themselves; a polygon for which it still yields an invalid or empty result
    keeps its pixel outline. Each polygon is simplified on its own, so polygons that
    touch at a corner or come within about ``tolerance_px`` of each other may overlap
    after simplification (polygons of one class never share an edge: they are separate
    4-connected components).
    """
    if tolerance_px <= 0 or len(geometries) == 0:
        return geometries
    simple = shapely.simplify(geometries, tolerance_px, preserve_topology=True)
    bad = ~shapely.is_valid(simple) | shapely.is_empty(simple)
    if bad.any():
        simple = simple.copy()
        simple[bad] = geometries[bad]
    return np.asarray(simple, dtype=object)


def _lonlat(geometries: np.ndarray, crs: CRS) -> tuple[np.ndarray, pyproj.Geod]:
    geod, tr = _geo(crs.to_wkt())
    if tr is None:
        return geometries, geod

    def fn(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tr.transform(x, y)

    return shapely.transform(geometries, fn, interleaved=False), geod


def geodesic_areas(geometries: np.ndarray, *, crs: CRS | None) -> np.ndarray:
    """Area in square metres of each geometry (given in ``crs`` coordinates): the geodesic
    area of its exterior rings less that of its holes, whatever their orientation.

    Without a CRS the area is planar in the transform's units: all that can be said.
    Works ring by ring on one flat coordinate array converted to lon/lat in place, with
    no geographic copy of the geometries.
    """
    out = np.zeros(len(geometries), dtype=np.float64)
    if len(geometries) == 0:
        return out
    if crs is None:
        return np.asarray(shapely.area(geometries), dtype=np.float64)
    geod, tr = _geo(crs.to_wkt())
    kind, coords, offsets = shapely.to_ragged_array(np.asarray(geometries, dtype=object))
    lon, lat = np.ascontiguousarray(coords[:, 0]), np.ascontiguousarray(coords[:, 1])
    del coords
    if tr is not None:
        tr.transform(lon, lat, inplace=True)
    ring_off, poly_off = offsets[0], offsets[1]
    # The owning geometry of each polygon: itself, or its MultiPolygon.
    if kind == shapely.GeometryType.MULTIPOLYGON:
        owner = np.repeat(np.arange(len(geometries)), np.diff(offsets[2]))
    else:
        owner = np.arange(len(geometries))
    for p in range(len(poly_off) - 1):
        for r in range(poly_off[p], poly_off[p + 1]):
            a, b = ring_off[r], ring_off[r + 1]
            area = abs(geod.polygon_area_perimeter(lon[a:b], lat[a:b])[0])
            out[owner[p]] += area if r == poly_off[p] else -area
    return out


def pixel_size_m(
    transform: Affine, *, crs: CRS | None, row: float, col: float
) -> tuple[float, float]:
    """Ground size ``(dx, dy)`` in metres of the pixel at ``(row, col)``.

    Geodesic distances to the next pixel in x and y; for a CRS without units (or no CRS)
    the transform's own units are returned.
    """
    if crs is None:
        return abs(transform.a), abs(transform.e)
    geod, tr = _geo(crs.to_wkt())
    pts = [transform @ (col + dc, row + dr) for dc, dr in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))]
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if tr is not None:
        xs, ys = tr.transform(xs, ys)
    _, _, dx = geod.inv(xs[0], ys[0], xs[1], ys[1])
    _, _, dy = geod.inv(xs[0], ys[0], xs[2], ys[2])
    if not (math.isfinite(dx) and math.isfinite(dy)) or dx <= 0 or dy <= 0:
        return abs(transform.a), abs(transform.e)
    return float(dx), float(dy)
