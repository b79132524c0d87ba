"""Split-and-merge segmentation of a spectral index (Horowitz & Pavlidis), a method without
weights: ``--model splitmerge:ndwi`` (``mndwi``, ``ndvi``; ``splitmerge:ndwi:0.1`` for a fixed
threshold, else Otsu's over the scene, as for the per-pixel methods of
:mod:`geoseg.models.spectral`).

Split: a quadtree cell is *homogeneous* when the variance of the index over its valid pixels
is at most ``max_variance`` and the class decision ``index > threshold`` is the same for all
of them (or for at least ``agreement`` of them); a cell that is not is split into four
quadrants, down to ``min_region`` pixels. Each leaf is labelled by the rule applied to its
mean (mean index > threshold). Merge: adjacent leaves with the same label are one region.
Leaves smaller than ``min_region`` never exist, so a speck smaller than a ``min_region``
square that does not dominate its cell's mean is absorbed by its surroundings.

With ``agreement=1`` (the default) a cell stays whole only when all its pixels lie on one
side of the threshold, and then so do the means of all its sub-cells: the class raster is
exactly the threshold of the mean of each ``min_region`` cell of the scene-aligned grid,
and the quadtree (and ``max_variance``) shape only the regions. With ``agreement < 1`` a
homogeneous cell's mean also overrules a minority of its pixels, at every scale.

The quadtree is anchored to the scene, not the block: its roots are the ``max_region``
squares at multiples of ``max_region`` in scene pixel coordinates, and every cell below one
is a power-of-two square aligned the same way. A block therefore sees the same cells as the
whole scene wherever it starts (pass its read window's ``origin``), provided it holds every
root cell its core touches: a halo of ``max_region - 1`` pixels (:func:`splitmerge_halo_px`).
Pixels outside the block or the scene, nodata and pixels whose index is undefined do not
count in any cell and get no class.

The statistics are sums of integers (the index minus the threshold in steps of 1/4096,
rounded up, so a pixel's step is positive exactly when its index is above the threshold):
they do not depend on the order of summation, so blocks and the whole scene agree bit for
bit, not to within rounding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geoseg.errors import ConfigError
from geoseg.models.card import ModelCard

__all__ = [
    "PREFIX",
    "SplitMerge",
    "SplitMergeParams",
    "is_splitmerge",
    "split_merge",
    "splitmerge_halo_px",
]

PREFIX = "splitmerge"
STEPS = 4096  # index quantisation steps per unit: exact integer sums (see the module docs)
_MAX_ROOT = 512  # with |step| <= 2 * STEPS, a root's sums of squares times counts fit int64


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitMergeParams:
    """How cells are split.

    Parameters
    ----------
    max_region
        Root cell size in pixels (a power of two, at most 512); the quadtree's anchor.
    min_region
        Smallest cell in pixels (a power of two, at most ``max_region``). 2 keeps rivers a
        few pixels wide at 30 m; 4 and more absorb them (``benchmarks/splitmerge.py``).
    max_variance
        A cell with a larger index variance is split (0.01: a standard deviation of 0.1).
    agreement
        Fraction of a cell's valid pixels that must take the same side of the threshold
        (1.0: all of them), in (0.5, 1].
    """

    max_region: int = 256
    min_region: int = 2
    max_variance: float = 0.01
    agreement: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_region", "min_region"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"splitmerge {name}={value!r} must be a positive integer")
            if value & (value - 1):
                raise ConfigError(
                    f"splitmerge {name}={value} must be a power of two, e.g. "
                    f"{1 << (value.bit_length() - 1)}"
                )
        if self.max_region > _MAX_ROOT:
            raise ConfigError(f"splitmerge max_region={self.max_region} must be <= {_MAX_ROOT}")
        if self.min_region > self.max_region:
            raise ConfigError(
                f"splitmerge min_region={self.min_region} exceeds max_region={self.max_region}"
            )
        if not (math.isfinite(self.max_variance) and self.max_variance >= 0):
            raise ConfigError(f"splitmerge max_variance={self.max_variance!r} must be >= 0")
        if not 0.5 < self.agreement <= 1.0:
            raise ConfigError(f"splitmerge agreement={self.agreement!r} must be in (0.5, 1]")

    @classmethod
    def from_card(cls, params: Any) -> SplitMergeParams:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(params).items() if k in names})


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitMerge:
    """One block's split-and-merge result (arrays over the block, ``(H, W)``).

    ``leaves``: the quadtree leaf of each pixel (ids >= 0, not necessarily consecutive; -1
    where there is no valid index); ``regions``: the merged region of each pixel (-1
    likewise; None when not asked for); ``labels``: 1 above
    the threshold, 0 below, 255 without a valid index; ``excess``: the leaf's mean index
    minus the threshold (NaN without a valid index).
    """

    leaves: np.ndarray
    regions: np.ndarray | None
    labels: np.ndarray
    excess: np.ndarray


def _cell_sums(a: np.ndarray, size: int) -> np.ndarray:
    """Integer sums over ``size x size`` cells of ``a`` (whose shape is a multiple of it)."""
    rows, cols = a.shape[0] // size, a.shape[1] // size
    return a.reshape(rows, size, cols, size).sum(axis=(1, 3), dtype=np.int64)


def _pool2(a: np.ndarray) -> np.ndarray:
    out: np.ndarray = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return out


def _grow(a: np.ndarray, k: int) -> np.ndarray:
    return a if k == 1 else np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def split_merge(
    index: np.ndarray,
    valid: np.ndarray,
    *,
    threshold: float,
    params: SplitMergeParams | None = None,
    origin: tuple[int, int] = (0, 0),
    merge: bool = True,
) -> SplitMerge:
    """Split a block of index values into homogeneous quadtree cells and merge them.

    Parameters
    ----------
    index
        ``(H, W)`` index values in [-1, 1]; NaN where undefined.
    valid
        ``(H, W)`` bool, False on nodata and outside the scene.
    threshold
        The class decision is ``index > threshold``.
    params
        Split rule; default :class:`SplitMergeParams`.
    origin
        ``(row, col)`` of ``index[0, 0]`` in the scene's pixel grid (a block's read window
        offsets, negative beyond the top/left edge); ``(0, 0)`` for a whole scene.
    merge
        Also merge the leaves into regions (``regions`` is None otherwise: the labels do
        not need it).

    Raises
    ------
    ConfigError
        On mismatched shapes or a threshold outside [-1, 1].
    """
    p = params or SplitMergeParams()
    if index.ndim != 2 or valid.shape != index.shape or valid.dtype != np.bool_:
        raise ConfigError(
            f"index must be (H, W) with a bool valid mask of the same shape, got "
            f"{index.shape} and {valid.dtype} {valid.shape}"
        )
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold {threshold!r} must lie in [-1, 1]")
    height, width = index.shape
    root, small = p.max_region, p.min_region
    row0, col0 = int(origin[0]), int(origin[1])
    # The frame of whole root cells around the block, in scene coordinates.
    top, left = (row0 // root) * root, (col0 // root) * root
    bottom, right = -(-(row0 + height) // root) * root, -(-(col0 + width) // root) * root
    inner = (slice(row0 - top, row0 - top + height), slice(col0 - left, col0 - left + width))

    ok = valid & np.isfinite(index)
    diff = (index.astype(np.float64) - float(threshold)) * STEPS
    steps = np.zeros((bottom - top, right - left), dtype=np.int32)
    steps[inner] = np.where(ok, np.ceil(np.nan_to_num(diff, nan=0.0)), 0.0).astype(np.int32)
    okf = np.zeros(steps.shape, dtype=np.int32)
    okf[inner] = ok
    above = (steps > 0).astype(np.int32)  # ceil: a step > 0 exactly where index > threshold
    # Pyramid of sums from min_region cells up to the roots: count, sum, sum of squares,
    # count above. Level i holds cells of min_region * 2**i pixels.
    n_levels = (root // small).bit_length()
    count = [_cell_sums(okf, small)]
    total = [_cell_sums(steps, small)]
    squares = [_cell_sums(steps * steps, small)]
    ups = [_cell_sums(above, small)]
    del okf, above
    for _ in range(n_levels - 1):
        for stack in (count, total, squares, ups):
            stack.append(_pool2(stack[-1]))

    # Top down: a cell whose parent was split becomes a leaf if homogeneous (or smallest).
    shape_min = count[0].shape
    leaf_size = np.zeros(shape_min, dtype=np.int32)  # per min_region cell: its leaf's level
    open_cells = np.ones(count[-1].shape, dtype=bool)
    limit = p.max_variance * float(STEPS) ** 2
    for level in range(n_levels - 1, -1, -1):
        n, s, ss, a = count[level], total[level], squares[level], ups[level]
        if level == 0:
            leaf = open_cells
        else:
            nf = n.astype(np.float64)
            spread = (ss * n - s * s).astype(np.float64)  # n^2 variance, exact in int64
            same = np.maximum(a, n - a) >= p.agreement * nf
            leaf = open_cells & ((n == 0) | ((spread <= limit * nf * nf) & same))
        leaf_size[_grow(leaf, 2**level)] = level
        open_cells = _grow(open_cells & ~leaf, 2)

    # Each min cell's leaf: its top-left min cell (a unique key) and the leaf's sums.
    rows = np.arange(shape_min[0])[:, None]
    cols = np.arange(shape_min[1])[None, :]
    k = 1 << leaf_size
    key = ((rows // k) * k) * shape_min[1] + (cols // k) * k
    leaf_n = np.zeros(shape_min, dtype=np.int64)
    leaf_s = np.zeros(shape_min, dtype=np.int64)
    for level in range(n_levels):
        here = leaf_size == level
        if here.any():
            leaf_n[here] = _grow(count[level], 2**level)[here]
            leaf_s[here] = _grow(total[level], 2**level)[here]

    _, leaf_id = np.unique(key, return_inverse=True)
    leaves = _grow(leaf_id.reshape(shape_min).astype(np.int32), small)[inner].copy()
    leaves[~ok] = -1
    fg = _grow(leaf_s > 0, small)[inner]
    labels = np.where(ok, fg, 255).astype(np.uint8)
    mean = (leaf_s / (np.maximum(leaf_n, 1) * float(STEPS))).astype(np.float32)
    excess = np.where(ok, _grow(mean, small)[inner], np.float32(np.nan))
    regions = _merge(leaves, labels) if merge else None
    return SplitMerge(
        leaves=leaves, regions=regions, labels=labels, excess=excess.astype(np.float32)
    )


def _merge(leaves: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Regions: leaves joined wherever two of their pixels with one label touch (4-way)."""
    n_leaves = int(leaves.max()) + 1
    if n_leaves <= 0:
        return leaves.copy()
    pairs = []
    for axis in (0, 1):
        head = [slice(None), slice(None)]
        tail = [slice(None), slice(None)]
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        a, b = leaves[tuple(head)], leaves[tuple(tail)]
        join = (a >= 0) & (a != b) & (labels[tuple(head)] == labels[tuple(tail)])
        pairs.append(np.stack([a[join], b[join]]))  # b >= 0 too: both labels are 0 or 1
    # One entry per touching pixel pair: duplicates only add up (no sort needed).
    edges = np.concatenate(pairs, axis=1)
    graph = coo_matrix(
        (np.ones(edges.shape[1], dtype=np.int32), (edges[0], edges[1])),
        shape=(n_leaves, n_leaves),
    )
    _, region_of = connected_components(graph, directed=False)
    regions = np.where(leaves >= 0, region_of[np.maximum(leaves, 0)], -1)
    return regions.astype(np.int32)


def is_splitmerge(source: str) -> bool:
    """Whether a ``--model`` value names split-and-merge (``splitmerge:ndwi``)."""
    return source.split(":", 1)[0].strip().lower() == PREFIX


def splitmerge_halo_px(card: ModelCard) -> int:
    """Halo a block needs for split-and-merge to match the whole scene (0 for other cards):
    every root cell its core touches must lie in its read window."""
    if card.params.get("segmentation") != PREFIX:
        return 0
    return SplitMergeParams.from_card(card.params).max_region - 1
