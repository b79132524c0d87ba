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

    def fn(xy: np.ndarray) -> np.ndarray:
        a, b, c, d, e, f = transform[:6]
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

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
    """Area in square metres of each geometry (given in ``crs`` coordinates).

    Without a CRS the area is planar in the transform's units: all that can be said.
    """
    out = np.zeros(len(geometries), dtype=np.float64)
    if len(geometries) == 0:
        return out
    if crs is None:
        return np.asarray(shapely.area(geometries), dtype=np.float64)
    lonlat, geod = _lonlat(geometries, crs)
    for i, g in enumerate(lonlat):
        out[i] = abs(geod.geometry_area_perimeter(g)[0])
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
