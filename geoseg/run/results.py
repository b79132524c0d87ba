"""What one block yields: its class labels, finished polygons and the pieces at its seams.

Workers build these values (:mod:`geoseg.run.task`); the client writes them
(:mod:`geoseg.run.outputs`) and the journal stores them (:mod:`geoseg.run.journal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from geoseg.run.plan import RunPlan
from geoseg.vectorize.centerlines import BlockLines
from geoseg.vectorize.geometry import geodesic_areas, pixels_to_crs, simplify_polygons
from geoseg.vectorize.polygons import BlockPolygons

__all__ = ["BlockResult", "ClassPolygons", "finish_polygons"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassPolygons:
    """Finished polygons of one class from one block, in the scene CRS."""

    geometries: np.ndarray
    area_m2: np.ndarray
    confidence: np.ndarray
    pixels: np.ndarray
    keys: np.ndarray  # (n, 2): block index, component id -> deterministic order


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockResult:
    """What a worker sends back for one block: small arrays and polygons."""

    index: int
    classes: np.ndarray
    interior: Mapping[str, ClassPolygons]
    seams: Mapping[str, BlockPolygons]
    timings: Mapping[str, float]
    device: str
    precision: str = "fp32"
    worker: str = ""
    peak_rss_mb: float = 0.0
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    lines: Mapping[str, BlockLines] = field(default_factory=dict)


def finish_polygons(
    geoms_px: np.ndarray,
    pixels: np.ndarray,
    conf_sum: np.ndarray,
    keys: np.ndarray,
    *,
    plan: RunPlan,
) -> ClassPolygons:
    """Pixel-space polygons -> CRS polygons with area, confidence, min-area filter."""
    scene = plan.scene
    geoms = pixels_to_crs(geoms_px, scene.transform)
    area = geodesic_areas(geoms, crs=scene.crs)
    keep = area >= plan.min_area_m2
    if plan.simplify_px > 0 and keep.any():
        # area_m2 is the area of the geometry written; the minimum applies to it too.
        simple = simplify_polygons(geoms_px[keep], tolerance_px=plan.simplify_px)
        geoms = geoms.copy()
        geoms[keep] = pixels_to_crs(simple, scene.transform)
        area[keep] = geodesic_areas(geoms[keep], crs=scene.crs)
        keep &= area >= plan.min_area_m2
    return ClassPolygons(
        geometries=geoms[keep],
        area_m2=area[keep],
        confidence=(conf_sum / np.maximum(pixels, 1))[keep],
        pixels=pixels[keep],
        keys=keys[keep],
    )
