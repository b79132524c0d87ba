"""Per-block polygonization in scene pixel coordinates.

Polygons are traced in *scene pixel* coordinates (integers, exact in floating point), so
the pieces of one object cut by a block border share their border edges bit for bit and
merge exactly (see :mod:`geoseg.vectorize.merge`). They are moved to the scene CRS only
when final.

Connectivity is 4 (edge-sharing pixels), both for labelling and for tracing, so every
traced polygon is valid and "one object" means the same thing inside a block and across
block borders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

__all__ = ["BlockPolygons", "polygonize_block"]

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockPolygons:
    """Polygons of one class in one block core.

    ``geometries[i]`` is component ``labels[i]`` (1-based component id inside the block),
    in scene pixel coordinates, with ``pixels[i]`` pixels whose confidences sum to
    ``conf_sum[i]``. ``seam[i]`` is True when the component touches an inner block border.
    ``borders`` holds the component id of every pixel along each inner side of the core
    (top, bottom, left, right; ``None`` for scene edges), 0 where the class is absent.
    """

    geometries: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray
    conf_sum: np.ndarray
    seam: np.ndarray
    borders: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> BlockPolygons:
        """The subset where ``keep`` is True (borders unchanged)."""
        return BlockPolygons(
            geometries=self.geometries[keep],
            labels=self.labels[keep],
            pixels=self.pixels[keep],
            conf_sum=self.conf_sum[keep],
            seam=self.seam[keep],
            borders=self.borders,
        )


def _edges(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return lab[0, :], lab[-1, :], lab[:, 0], lab[:, -1]


def polygonize_block(
    mask: np.ndarray,
    *,
    confidence: np.ndarray,
    row_off: int,
    col_off: int,
    open_sides: tuple[bool, bool, bool, bool],
) -> BlockPolygons:
    """Trace the 4-connected components of ``mask`` (a block core) as polygons.

    Parameters
    ----------
    mask
        ``(h, w)`` bool: the class is present (and the pixel is valid).
    confidence
        ``(h, w)`` float: probability of the class, summed per polygon for its mean.
    row_off, col_off
        Scene pixel offset of the core's top-left corner.
    open_sides
        Top, bottom, left, right: whether the scene continues beyond that side.
    """
    lab, n = ndimage.label(mask, structure=_FOUR)
    lab = lab.astype(np.int32, copy=False)
    edges = _edges(lab)
    borders = tuple(e.copy() if o else None for e, o in zip(edges, open_sides, strict=True))
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return BlockPolygons(
            geometries=np.empty(0, dtype=object),
            labels=empty,
            pixels=empty,
            conf_sum=np.empty(0, dtype=np.float64),
            seam=np.empty(0, dtype=bool),
            borders=borders,  # type: ignore[arg-type]
        )
    # Over the class's pixels only: ``confidence`` is a strided crop of the block, which a
    # whole-array ``ravel`` would copy before bincount converted it to float64 again.
    ids = lab[mask]
    pixels = np.bincount(ids, minlength=n + 1)[1:]
    conf_sum = np.bincount(ids, weights=confidence[mask], minlength=n + 1)[1:]
    seam = np.zeros(n + 1, dtype=bool)
    for edge in borders:
        if edge is not None:
            seam[edge] = True
    transform = Affine.translation(col_off, row_off)
    geoms = np.empty(n, dtype=object)
    for shape, value in features.shapes(lab, mask=mask, connectivity=4, transform=transform):
        geoms[int(value) - 1] = shapely.geometry.shape(shape)
    return BlockPolygons(
        geometries=geoms,
        labels=np.arange(1, n + 1, dtype=np.int64),
        pixels=pixels.astype(np.int64),
        conf_sum=conf_sum,
        seam=seam[1:],
        borders=borders,  # type: ignore[arg-type]
    )
