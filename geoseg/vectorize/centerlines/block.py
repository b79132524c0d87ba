"""Centrelines of one block core (a Dask task), the halo that makes them exact, a whole scene."""

from __future__ import annotations

import math

import numpy as np
from skimage.morphology import skeletonize

from geoseg.errors import ConfigError
from geoseg.vectorize.centerlines.graph import _RING, _chains, _graph
from geoseg.vectorize.centerlines.lines import (
    BlockLines,
    _canonical,
    _finish,
    _non_negative,
    _pixel_size,
    _sort,
    _width_px,
)
from geoseg.vectorize.centerlines.prune import _prune
from geoseg.vectorize.centerlines.seams import merge_centerlines

__all__ = ["block_centerlines", "centerline_halo_px", "scene_centerlines"]


def centerline_halo_px(
    *, prune_m: float, pixel_size_m: tuple[float, float], max_road_width_m: float = 30.0
) -> int:
    """Halo (pixels on each side) for block-wise centrelines to equal the whole scene.

    ``ceil(prune_m / min(dx, dy)) + ceil(max_road_width_m / min(dx, dy)) + 3``. Thinning
    changes the skeleton up to about one object width from where the mask is cut (measured:
    at most the width), and a spur decision looks at most ``prune_m`` along the skeleton,
    which spans at most ``prune_m / min(dx, dy)`` pixels; 3 pixels cover the cut step and
    the diagonal test around the core border. Objects wider than ``max_road_width_m``
    (squares, parking lots) crossing a block border may get a slightly different skeleton
    near that border than in a whole-scene run.
    """
    dx, dy = _pixel_size(pixel_size_m)
    prune_px = math.ceil(_non_negative("prune_m", prune_m) / min(dx, dy))
    return prune_px + _width_px(max_road_width_m, dx, dy) + 3


def _check_core(core: tuple[slice, slice], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    if len(core) != 2 or not all(isinstance(s, slice) for s in core):
        raise ConfigError(f"core {core!r} must be a pair of slices (rows, cols)")
    bounds: list[int] = []
    for s, size in zip(core, shape, strict=True):
        if s.step not in (None, 1) or not isinstance(s.start, int) or not isinstance(s.stop, int):
            raise ConfigError(f"core slice {s} must have integer start and stop, step 1")
        if not 0 <= s.start < s.stop <= size:
            raise ConfigError(f"core slice {s} does not lie inside the mask (size {size})")
        bounds += [s.start, s.stop]
    return bounds[0], bounds[1], bounds[2], bounds[3]


def block_centerlines(
    mask: np.ndarray,
    *,
    core: tuple[slice, slice],
    origin_px: tuple[int, int],
    scene_shape: tuple[int, int],
    pixel_size_m: tuple[float, float],
    prune_m: float = 20.0,
    simplify_px: float = 0.0,
    max_road_width_m: float = 30.0,
) -> BlockLines:
    """Centrelines of a road mask inside one block core (runs on a Dask worker).

    Parameters
    ----------
    mask
        ``(H, W)`` bool, roads over the block's read window (core plus halo), False on
        nodata. Pixels outside the scene are ignored (the reader's reflect padding may
        hold anything there).
    core
        The core inside the read window (``Block.core_in_read``); it must lie in the scene.
    origin_px
        ``(row, col)`` of ``mask[0, 0]`` in the scene (``Block.read.row_off / col_off``;
        negative where the read window starts before the scene).
    scene_shape
        ``(height, width)`` of the scene in pixels: tells inner core borders (lines are
        cut there and merged later) from scene edges (lines end on them), and places the
        scene edge even when a read window overruns it beyond a thin neighbouring block.
    pixel_size_m
        ``(dx, dy)`` in metres, one value for the whole scene (all blocks must agree).
    prune_m
        Spurs (terminal branches) shorter than this are removed, and so are connected
        pieces shorter than this; 0 keeps everything. Diagonal steps count
        ``hypot(dx, dy)``.
    simplify_px
        Douglas-Peucker tolerance in pixels for final lines (0 = none). Seam pieces stay
        raw and are simplified once merged, so block-wise output equals a whole scene.
    max_road_width_m
        Widest road expected. Sets how far the mask is edge-replicated beyond the scene
        edge so that a road leaving the image runs to the edge; use the same value in
        :func:`centerline_halo_px`.

    Returns
    -------
    BlockLines
        Lines in scene pixel coordinates (pixel ``(r, c)`` has centre ``(c + 0.5, r + 0.5)``).
        Final lines come first in canonical order, then the seam pieces.

    Raises
    ------
    ConfigError
        If the mask, core, windows or sizes are malformed.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"road mask must be 2-D (H, W); got shape {mask.shape}")
    r0, r1, c0, c1 = _check_core(core, mask.shape)
    dx, dy = _pixel_size(pixel_size_m)
    prune = _non_negative("prune_m", prune_m)
    tol = _non_negative("simplify_px", simplify_px)
    pad = _width_px(max_road_width_m, dx, dy) + 2
    oy, ox = (int(v) for v in origin_px)
    sh, sw = (int(v) for v in scene_shape)
    if sh <= 0 or sw <= 0:
        raise ConfigError(f"scene size {scene_shape!r} must be positive")
    if oy + r0 < 0 or ox + c0 < 0 or oy + r1 > sh or ox + c1 > sw:
        raise ConfigError(
            f"core rows {oy + r0}:{oy + r1}, cols {ox + c0}:{ox + c1} leave the "
            f"{sh}x{sw} scene; check origin_px {origin_px!r} and scene_shape"
        )
    empty = BlockLines(
        geometries=np.empty(0, dtype=object),
        seam_start=np.empty(0, dtype=bool),
        seam_end=np.empty(0, dtype=bool),
        simplify_px=tol,
    )
    # Keep the in-scene part of the read window and edge-replicate it outwards on every
    # side: beyond the scene edge as in a whole-scene run, beyond the read window as a
    # stand-in that only the halo sees. Skeleton pixels in that padding are anchored.
    ya, yb = max(0, -oy), min(mask.shape[0], sh - oy)
    xa, xb = max(0, -ox), min(mask.shape[1], sw - ox)
    inside = mask[ya:yb, xa:xb].astype(bool, copy=False)
    if not inside[r0 - ya : r1 - ya, c0 - xa : c1 - xa].any():
        return empty  # the skeleton lies in the mask: nothing can cross the core
    work = np.pad(inside, pad, mode="edge")
    wy, wx = oy + ya - pad, ox + xa - pad  # scene position of work[0, 0]
    skel = skeletonize(work)
    g = _graph(skel, dx, dy)
    hh, ww = inside.shape
    anchored = (g.rows < pad) | (g.rows >= pad + hh) | (g.cols < pad) | (g.cols >= pad + ww)
    alive = _prune(g, anchored=anchored, prune_m=prune, dx=dx, dy=dy)
    ch = _chains(g, alive)
    sr, sc = g.rows + wy, g.cols + wx  # scene row / col of every skeleton pixel
    in_core = (sr >= oy + r0) & (sr < oy + r1) & (sc >= ox + c0) & (sc < ox + c1)
    in_scene = (sr >= 0) & (sr < sh) & (sc >= 0) & (sc < sw)
    centre = np.column_stack([sc + 0.5, sr + 0.5])

    def mid(p: int, q: int) -> np.ndarray:
        # Half-integers: exact, and the same whichever block computes it.
        return np.array([(sc[p] + sc[q] + 1) * 0.5, (sr[p] + sr[q] + 1) * 0.5])

    final: list[np.ndarray] = []
    pieces: list[np.ndarray] = []
    flags: list[tuple[bool, bool]] = []
    for c in range(len(ch.off) - 1):
        s = ch.seq[ch.off[c] : ch.off[c + 1]]
        kind = int(ch.kind[c])
        inn = in_core[s]
        if not inn.any():
            continue
        if inn.all():
            final.append(_canonical(centre[s], free_ring=kind == _RING))
            continue
        if kind == _RING:  # start outside the core so no run wraps around the seam
            s = np.roll(s[:-1], -int(np.flatnonzero(~inn[:-1])[0]))
            s = np.concatenate([s, s[:1]])
            inn = in_core[s]
        edges = np.diff(np.concatenate([[False], inn, [False]]).astype(np.int8))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            xy = [centre[s[a:b]]]
            seam_a = seam_b = False
            if a > 0:
                xy.insert(0, mid(s[a], s[a - 1])[None])
                seam_a = bool(in_scene[s[a - 1]])
            if b < len(s):
                xy.append(mid(s[b - 1], s[b])[None])
                seam_b = bool(in_scene[s[b]])
            line = np.concatenate(xy)
            if seam_a or seam_b:
                pieces.append(line)
                flags.append((seam_a, seam_b))
            else:  # ends on nodes or on the scene edge: already whole
                final.append(_canonical(line, free_ring=False))
    done = _sort(_finish(final, tol))
    raw = _finish(pieces, 0.0)
    f = np.array(flags, dtype=bool).reshape(-1, 2)
    return BlockLines(
        geometries=np.concatenate([done, raw]).astype(object),
        seam_start=np.concatenate([np.zeros(len(done), dtype=bool), f[:, 0]]),
        seam_end=np.concatenate([np.zeros(len(done), dtype=bool), f[:, 1]]),
        simplify_px=tol,
    )


def scene_centerlines(
    mask: np.ndarray,
    *,
    pixel_size_m: tuple[float, float],
    prune_m: float = 20.0,
    simplify_px: float = 0.0,
    max_road_width_m: float = 30.0,
) -> np.ndarray:
    """Centrelines of a whole scene held in memory (the reference block-wise runs match)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ConfigError(f"road mask must be a non-empty 2-D array; got shape {mask.shape}")
    h, w = mask.shape
    lines = block_centerlines(
        mask,
        core=(slice(0, h), slice(0, w)),
        origin_px=(0, 0),
        scene_shape=(h, w),
        pixel_size_m=pixel_size_m,
        prune_m=prune_m,
        simplify_px=simplify_px,
        max_road_width_m=max_road_width_m,
    )
    return merge_centerlines([lines])
