"""Road centrelines: skeleton -> pixel graph -> pruned lines, exact across block borders.

A block's road mask (core plus halo) is thinned with ``skimage.morphology.skeletonize``
(Zhang-Suen, 8-connected). Skeleton pixels become the vertices of a graph whose edges join
8-neighbours, except a diagonal edge whose two pixels also share a skeleton 4-neighbour
(the redundant triangles at corners and junctions). Pixels of degree other than 2 are
*nodes*; the runs of degree-2 pixels between them are *chains*, and a chain is one line.

Spurs are pruned on the whole read window, in metres: a terminal chain (a free end, the
*tip*, on one side and a junction on the other) whose *height* (the farthest reach from
the junction, counting spurs already pruned further out) is below ``prune_m`` is removed,
repeatedly until none is left. When every branch of a junction is such a spur, the
longest two stay (a small blob keeps its main axis). Finally connected pieces shorter than
``prune_m`` are dropped. Ends that run off the read window (into the scene beyond the
halo) or off the scene are *anchored*: the road goes on there, so they are never tips.

Block-wise == whole-scene. Thinning and pruning are local: a pixel's fate depends only on
the mask within about one road width (thinning) plus ``prune_m`` (pruning) of it, so with
the halo of :func:`centerline_halo_px` the graph inside the core and one pixel around it is
the whole-scene graph. Lines are then cut where a chain crosses the core border: a chain
step from pixel ``P`` inside the core to ``Q`` outside ends at the midpoint ``(P + Q) / 2``.
The neighbouring block computes the same midpoint from its side, bit for bit (coordinates
are half-integers), so :func:`merge_centerlines` joins pieces by exact endpoint equality
and drops the midpoint again. The merged lines equal the whole-scene lines exactly
(coordinates and order), simplified or not: simplification runs on whole lines only.
That holds when every block sees the same mask around its border. A real model does not
quite (each block's tiles see different context), so skeletons may cross a border a pixel
or two apart: :func:`merge_centerlines` then snaps loose cut ends across the border within
a few pixels instead of leaving the road broken there.

The scene edge is treated the same in every block and in a whole-scene call: the mask is
edge-replicated outwards, so a road leaving the image runs straight to the edge and its
line ends exactly on it (a cut at the scene edge, not a seam).

Limits: a raw pixel chain is up to ~8 % longer than the road for oblique directions (the
8-connected staircase); ``simplify_px`` of about 1 removes that. A dead end inside the
scene stops about half a road width short of the road's end (thinning erodes ends). A hole
left in the mask splits the line around it: fill small holes first (the roads smoothing
recipe does).

Coordinates are scene *pixel* coordinates: the centre of pixel ``(row, col)`` is
``(col + 0.5, row + 0.5)``; :func:`geoseg.vectorize.geometry.pixels_to_crs` moves the final
lines to the scene CRS and :func:`line_lengths_m` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.crs import CRS
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order
from skimage.morphology import skeletonize

from geoseg.errors import ConfigError
from geoseg.vectorize.geometry import _lonlat

__all__ = [
    "BlockLines",
    "block_centerlines",
    "centerline_halo_px",
    "line_lengths_m",
    "merge_centerlines",
    "scene_centerlines",
]

_OPEN, _SELF_LOOP, _RING = 0, 1, 2  # chain kinds: node to node, node to itself, no node
_EMPTY_F = np.empty((0, 2), dtype=np.float64)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockLines:
    """Centrelines of one block core, in scene pixel coordinates.

    ``geometries[i]`` is a LineString. ``seam_start[i]`` / ``seam_end[i]`` say that its first
    / last point lies on an inner border of the core (the scene continues in a neighbouring
    block) and must be joined there by :func:`merge_centerlines`. Lines without a seam end
    are final: canonically oriented and simplified with ``simplify_px``. Seam pieces are
    raw (simplifying a piece would move the vertices a whole line keeps).
    """

    geometries: np.ndarray
    seam_start: np.ndarray
    seam_end: np.ndarray
    simplify_px: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.geometries)
        if len(self.seam_start) != n or len(self.seam_end) != n:
            raise ConfigError(
                f"BlockLines arrays differ in length: {n} geometries, "
                f"{len(self.seam_start)} seam_start, {len(self.seam_end)} seam_end"
            )

    @property
    def seam(self) -> np.ndarray:
        """True for pieces that must be merged on the client."""
        return np.asarray(self.seam_start | self.seam_end)

    def __len__(self) -> int:
        return len(self.geometries)

    def select(self, keep: np.ndarray) -> BlockLines:
        """The subset where ``keep`` is True."""
        return BlockLines(
            geometries=self.geometries[keep],
            seam_start=self.seam_start[keep],
            seam_end=self.seam_end[keep],
            simplify_px=self.simplify_px,
        )


# --------------------------------------------------------------------------- parameters


def _pixel_size(pixel_size_m: tuple[float, float]) -> tuple[float, float]:
    try:
        dx, dy = (float(v) for v in pixel_size_m)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pixel size {pixel_size_m!r} must be a pair (dx_m, dy_m)") from err
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise ConfigError(f"pixel size {pixel_size_m!r} must be two positive metre values")
    return dx, dy


def _non_negative(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"{name} {value!r} must be a finite number >= 0")
    return v


def _width_px(max_road_width_m: float, dx: float, dy: float) -> int:
    return math.ceil(_non_negative("max_road_width_m", max_road_width_m) / min(dx, dy))


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


# --------------------------------------------------------------------------- pixel graph


@dataclass(frozen=True, slots=True)
class _Graph:
    rows: np.ndarray  # work-array row of each skeleton pixel (row-major order)
    cols: np.ndarray
    ei: np.ndarray  # edges (ei < ej), 8-neighbours minus redundant diagonals
    ej: np.ndarray
    ew: np.ndarray  # edge length in metres


def _step_m(dr: np.ndarray, dc: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Length in metres of unit pixel steps ``(dr, dc)``."""
    diag = math.hypot(dx, dy)
    return np.where((dr != 0) & (dc != 0), diag, np.where(dr != 0, dy, dx))


def _graph(skel: np.ndarray, dx: float, dy: float) -> _Graph:
    w = skel.shape[1]
    lin = np.flatnonzero(skel)
    rows, cols = lin // w, lin % w
    sp = np.pad(skel, 1)
    r1, c1 = rows + 1, cols + 1  # padded coordinates

    def has(dr: int, dc: int) -> np.ndarray:
        return np.asarray(sp[r1 + dr, c1 + dc])

    east, south, west = has(0, 1), has(1, 0), has(0, -1)
    # A diagonal step is redundant when the two pixels also meet through a 4-neighbour.
    steps = (
        (0, 1, east),
        (1, 0, south),
        (1, 1, has(1, 1) & ~east & ~south),
        (1, -1, has(1, -1) & ~west & ~south),
    )
    ei_parts, ej_parts, ew_parts = [], [], []
    for dr, dc, ok in steps:
        src = np.flatnonzero(ok)
        dst = np.searchsorted(lin, lin[src] + dr * w + dc)
        ei_parts.append(src)
        ej_parts.append(dst)
        ew_parts.append(np.full(len(src), math.hypot(dx * abs(dc), dy * abs(dr))))
    return _Graph(
        rows=rows,
        cols=cols,
        ei=np.concatenate(ei_parts),
        ej=np.concatenate(ej_parts),
        ew=np.concatenate(ew_parts),
    )


@dataclass(frozen=True, slots=True)
class _Chains:
    seq: np.ndarray  # pixel indices of all chains, concatenated, end nodes included
    off: np.ndarray  # chain c is seq[off[c]:off[c + 1]]
    kind: np.ndarray  # _OPEN, _SELF_LOOP or _RING (a ring repeats its first pixel last)
    deg: np.ndarray  # degree of every pixel in the alive graph


def _chains(g: _Graph, alive: np.ndarray) -> _Chains:
    """Split the alive skeleton into chains between nodes, in a deterministic order."""
    n = len(g.rows)
    live = alive[g.ei] & alive[g.ej]
    ei, ej = g.ei[live], g.ej[live]
    deg = np.bincount(ei, minlength=n) + np.bincount(ej, minlength=n)
    inner = alive & (deg == 2)
    ii = inner[ei] & inner[ej]
    nn = ~inner[ei] & ~inner[ej]
    mixed = ~ii & ~nn
    # For each inner pixel next to nodes: its node neighbours (at most 2), smallest first.
    p = np.where(inner[ei[mixed]], ei[mixed], ej[mixed])
    q = np.where(inner[ei[mixed]], ej[mixed], ei[mixed])
    order = np.lexsort((q, p))
    p, q = p[order], q[order]
    first = np.ones(len(p), dtype=bool)
    first[1:] = p[1:] != p[:-1]
    nb1 = np.full(n, -1, dtype=np.int64)
    nb2 = np.full(n, -1, dtype=np.int64)
    nb1[p[first]] = q[first]
    nb2[p[~first]] = q[~first]

    parts: list[np.ndarray] = []
    kinds: list[int] = []
    inner_idx = np.flatnonzero(inner)
    if len(inner_idx):
        a, b = ei[ii], ej[ii]
        adj = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)).tocsr()
        ncomp, lab = connected_components(adj, directed=False)
        # Start each run of inner pixels at its smallest end pixel (next to a node), or at
        # its smallest pixel for a ring without nodes: a DFS from a super node through the
        # starts then walks every run from one end to the other, contiguously.
        start = np.full(ncomp, -1, dtype=np.int64)
        ends = np.flatnonzero(nb1 >= 0)
        uc, fi = np.unique(lab[ends], return_index=True)
        start[uc] = ends[fi]
        uc, fi = np.unique(lab[inner_idx], return_index=True)
        missing = start[uc] < 0
        start[uc[missing]] = inner_idx[fi[missing]]
        starts = np.sort(start[uc])
        sa = np.concatenate([a, np.full(len(starts), n)])
        sb = np.concatenate([b, starts])
        sgraph = coo_matrix((np.ones(len(sa)), (sa, sb)), shape=(n + 1, n + 1)).tocsr()
        walk = depth_first_order(sgraph, n, directed=False, return_predecessors=False)[1:]
        is_start = np.zeros(n, dtype=bool)
        is_start[starts] = True
        cuts = np.flatnonzero(is_start[walk])
        for run in np.split(walk, cuts[1:]):
            head = nb1[run[0]]
            if head < 0:
                parts.append(np.concatenate([run, run[:1]]))
                kinds.append(_RING)
                continue
            tail = nb2[run[0]] if len(run) == 1 else nb1[run[-1]]
            parts.append(np.concatenate([[head], run, [tail]]))
            kinds.append(_SELF_LOOP if head == tail else _OPEN)
    pairs = np.column_stack([ei[nn], ej[nn]])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    parts.extend(pairs)
    kinds.extend([_OPEN] * len(pairs))
    lengths = np.array([len(x) for x in parts], dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    seq = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
    return _Chains(seq=seq, off=off, kind=np.asarray(kinds, dtype=np.int8), deg=deg)


# --------------------------------------------------------------------------- pruning


def _prune_pass(
    g: _Graph,
    ch: _Chains,
    *,
    alive: np.ndarray,
    reach: np.ndarray,
    anchored: np.ndarray,
    prune_m: float,
    dx: float,
    dy: float,
) -> bool:
    """Remove this round's spurs (in place); False when there were none."""
    seq, off, deg = ch.seq, ch.off, ch.deg
    m = len(off) - 1
    if m == 0:
        return False
    cid = np.repeat(np.arange(m), np.diff(off))
    last = off[1:] - 1
    step = np.zeros(len(seq))
    step[:-1] = _step_m(np.diff(g.rows[seq]), np.diff(g.cols[seq]), dx, dy)
    step[last] = 0.0
    dist = np.concatenate([[0.0], np.cumsum(step)[:-1]])
    from_head = dist - dist[off[:-1]][cid]
    length = np.add.reduceat(step, off[:-1])
    from_tail = length[cid] - from_head
    heads, tails = seq[off[:-1]], seq[last]
    anchored_chain = np.logical_or.reduceat(anchored[seq], off[:-1])
    open_ = ch.kind == _OPEN
    tip_head = open_ & (deg[heads] == 1) & (deg[tails] >= 3)
    tip_tail = open_ & (deg[tails] == 1) & (deg[heads] >= 3)
    loop = ch.kind == _SELF_LOOP
    # Height of what hangs from the attachment node, seen from that node.
    r = reach[seq]
    at_head = from_head + r
    at_head[off[:-1]] = -np.inf  # the attachment node's own reach is not this branch's
    at_tail = from_tail + r
    at_tail[last] = -np.inf
    around = np.minimum(from_head, from_tail) + r
    around[off[:-1]] = -np.inf
    around[last] = -np.inf
    h_tail = np.maximum.reduceat(at_head, off[:-1])  # tip at the tail, attached at head
    h_head = np.maximum.reduceat(at_tail, off[:-1])
    h_loop = np.maximum.reduceat(around, off[:-1])
    height = np.where(tip_tail | loop, h_tail, h_head)
    height = np.where(loop, h_loop, height)
    cand = (tip_tail | tip_head | loop) & ~anchored_chain & (height < prune_m)
    if not cand.any():
        return False
    idx = np.flatnonzero(cand)
    attach = np.where(tip_head[idx], tails[idx], heads[idx])
    ends_at = np.where(loop[idx], 2, 1)
    taken = np.bincount(attach, weights=ends_at, minlength=len(deg))
    # A junction whose branches are all spurs keeps its longest ones (two ends' worth).
    order = np.lexsort((idx, -height[idx], attach))
    idx, attach, ends_at = idx[order], attach[order], ends_at[order]
    group_start = np.ones(len(idx), dtype=bool)
    group_start[1:] = attach[1:] != attach[:-1]
    csum = np.cumsum(ends_at)
    base = np.maximum.accumulate(np.where(group_start, csum - ends_at, 0))
    before = csum - ends_at - base
    keep = (deg[attach] - taken[attach] == 0) & (before < 2)
    idx, attach = idx[~keep], attach[~keep]
    if len(idx) == 0:
        return False
    np.maximum.at(reach, attach, height[idx])
    drop = np.zeros(m, dtype=bool)
    drop[idx] = True
    gone = seq[drop[cid]]
    alive[gone] = False
    alive[attach] = True  # the attachment node stays
    return True


def _prune(g: _Graph, *, anchored: np.ndarray, prune_m: float, dx: float, dy: float) -> np.ndarray:
    """Alive mask of skeleton pixels after spur pruning and the small-fragment filter."""
    n = len(g.rows)
    alive = np.ones(n, dtype=bool)
    if n == 0:
        return alive
    reach = np.zeros(n)
    if prune_m > 0:
        while _prune_pass(
            g,
            _chains(g, alive),
            alive=alive,
            reach=reach,
            anchored=anchored,
            prune_m=prune_m,
            dx=dx,
            dy=dy,
        ):
            pass
    live = alive[g.ei] & alive[g.ej]
    adj = coo_matrix((np.ones(live.sum()), (g.ei[live], g.ej[live])), shape=(n, n)).tocsr()
    ncomp, lab = connected_components(adj, directed=False)
    total = np.bincount(lab[g.ei[live]], weights=g.ew[live], minlength=ncomp)
    held = np.bincount(lab[anchored & alive], minlength=ncomp) > 0
    small = (total <= 0) | ((total < prune_m) & ~held)
    return np.asarray(alive & ~small[lab])


# --------------------------------------------------------------------------- lines


def _key(xy: np.ndarray) -> tuple[float, float]:
    return float(xy[1]), float(xy[0])  # row-major: y first


def _canonical(xy: np.ndarray, *, free_ring: bool) -> np.ndarray:
    """Orient a line (and rotate a ring without nodes) so equal lines get equal vertices."""
    if free_ring:
        ring = xy[:-1]
        s = int(np.lexsort((ring[:, 0], ring[:, 1]))[0])
        ring = np.roll(ring, -s, axis=0)
        if len(ring) > 2 and _key(ring[-1]) < _key(ring[1]):
            ring = np.concatenate([ring[:1], ring[:0:-1]])
        return np.concatenate([ring, ring[:1]])
    if _key(xy[-1]) < _key(xy[0]) or (
        _key(xy[-1]) == _key(xy[0]) and len(xy) > 2 and _key(xy[-2]) < _key(xy[1])
    ):
        return np.ascontiguousarray(xy[::-1])
    return xy


def _finish(lines: list[np.ndarray], simplify_px: float) -> np.ndarray:
    if not lines:
        return np.empty(0, dtype=object)
    index = np.repeat(np.arange(len(lines)), [len(x) for x in lines])
    geoms = shapely.linestrings(np.concatenate(lines), indices=index)
    if simplify_px > 0 and len(geoms):
        geoms = shapely.simplify(geoms, simplify_px, preserve_topology=True)
    return np.asarray(geoms, dtype=object)


def _sort(geoms: np.ndarray) -> np.ndarray:
    """Deterministic order: by first, last and second vertex (row-major), then length."""
    if len(geoms) == 0:
        return geoms
    xy, index = shapely.get_coordinates(geoms, return_index=True)
    first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    last = np.r_[first[1:] - 1, len(index) - 1]
    a, b, z = xy[first], xy[first + 1], xy[last]
    order = np.lexsort(
        (shapely.length(geoms), b[:, 0], b[:, 1], z[:, 0], z[:, 1], a[:, 0], a[:, 1])
    )
    return geoms[order]


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


def merge_centerlines(
    pieces: Sequence[BlockLines], *, snap_px: float = 3.0, min_isolated_px: float = 3.0
) -> np.ndarray:
    """Join the lines of all blocks into whole lines, in a deterministic order (client side).

    Seam pieces meeting at the same cut point (bitwise equal coordinates, one from each
    side of a block border) are concatenated and the cut point is dropped, which restores
    the whole-scene line; the merged lines are then oriented canonically and simplified.
    Final lines pass through. Lines are sorted by their first, last and second vertices, so
    the result does not depend on the order of ``pieces``.

    Real models do not give neighbouring blocks bit-identical masks near their border, so
    their skeletons may cross it a pixel or two apart (or one crosses diagonally through a
    pixel corner and the other straight). A seam end left without its exact partner is
    therefore *snapped*: to the nearest loose seam end of another block on the same
    border line, reaching it from the other side, within ``snap_px`` (the two pieces are
    joined like an exact pair, the jog between them is a single segment); failing that,
    its cut point is moved onto the nearest end of a line of another block across the
    border within ``snap_px`` (the neighbour saw a junction or dead end just there), so
    the network stays connected. Otherwise (a failed block, a road the neighbour dropped)
    it stays a loose end.

    Finally identical lines (two chains around a tiny hole that simplify to the same
    segment) are kept once, and lines shorter than ``min_isolated_px`` that touch no
    other line (slivers of a road crossing a block or scene corner) are dropped.

    Raises
    ------
    ConfigError
        If the blocks were simplified with different tolerances, or a tolerance is negative.
    """
    snap = _non_negative("snap_px", snap_px)
    min_isolated = _non_negative("min_isolated_px", min_isolated_px)
    tols = {p.simplify_px for p in pieces if len(p)}
    if len(tols) > 1:
        raise ConfigError(f"blocks were simplified with different tolerances {sorted(tols)}")
    tol = tols.pop() if tols else 0.0
    done: list[np.ndarray] = []
    done_block: list[np.ndarray] = []
    coords: list[np.ndarray] = []
    seams: list[tuple[bool, bool]] = []
    owner: list[int] = []
    for k, block in enumerate(pieces):
        seam = block.seam
        done.append(block.geometries[~seam])
        done_block.append(np.full(int((~seam).sum()), k))
        for g, a, b in zip(
            block.geometries[seam], block.seam_start[seam], block.seam_end[seam], strict=True
        ):
            coords.append(shapely.get_coordinates(g))
            seams.append((bool(a), bool(b)))
            owner.append(k)
    at: dict[tuple[float, float], list[tuple[int, int]]] = {}
    for i, (xy, (sa, sb)) in enumerate(zip(coords, seams, strict=True)):
        for end, is_seam in ((0, sa), (1, sb)):
            if is_seam:
                at.setdefault(_key(xy[-end]), []).append((i, end))
    link: dict[tuple[int, int], tuple[int, int]] = {}
    for ends in at.values():
        if len(ends) == 2:
            link[ends[0]], link[ends[1]] = ends[1], ends[0]
    if snap > 0:
        loose = [
            (i, end)
            for i, (sa, sb) in enumerate(seams)
            for end, is_seam in ((0, sa), (1, sb))
            if is_seam and (i, end) not in link
        ]
        _snap_seam_ends(coords, owner, loose, link, snap)
        loose = [e for e in loose if e not in link]
        finals = np.concatenate(done) if done else np.empty(0, dtype=object)
        _snap_to_line_ends(
            coords,
            owner,
            seams,
            loose,
            finals,
            np.concatenate(done_block) if done else [],
            snap,
        )
    merged: list[np.ndarray] = []
    seen = np.zeros(len(coords), dtype=bool)
    for i in sorted(range(len(coords)), key=lambda k: _key(coords[k][0])):
        if seen[i]:
            continue
        # Walk back to a loose end of the group (or around a ring to the start).
        p, leave, ring = i, 0, False
        while (nxt := link.get((p, leave))) is not None:
            if nxt[0] == i:
                ring = True
                break
            p, leave = nxt[0], 1 - nxt[1]
        p, first = (i, 0) if ring else (p, leave)
        start = p
        parts: list[np.ndarray] = []
        while True:
            seen[p] = True
            xy = coords[p] if first == 0 else coords[p][::-1]
            if parts:  # both sides hold a cut point (the same one unless snapped): drop them
                parts[-1] = parts[-1][:-1]
                xy = xy[1:]
            parts.append(xy)
            nxt = link.get((p, 1 - first))
            if nxt is None or nxt[0] == start:
                break
            p, first = nxt
        line = np.concatenate(parts)
        if ring:  # the cut point opens and closes the walk
            line = np.concatenate([line[1:-1], line[1:2]])
        merged.append(_canonical(line, free_ring=ring))
    out = np.concatenate([*done, _finish(merged, tol)]) if done or merged else np.empty(0)
    return _sort(_clean(np.asarray(out, dtype=object), min_isolated))


def _crossing(xy: np.ndarray, end: int) -> list[tuple[int, float, float]]:
    """``(axis, border, side)`` of each border line a seam end's cut point lies on.

    A cut point is the midpoint of a step from a pixel centre inside the core to one
    outside, so it lies on a border line ``x = integer`` or ``y = integer`` (both for a
    diagonal step through a pixel corner); ``side`` is the sign of the inner vertex
    relative to that line, i.e. which block the piece belongs to.
    """
    cut, inner = (xy[0], xy[1]) if end == 0 else (xy[-1], xy[-2])
    out = []
    for axis in (0, 1):
        if float(cut[axis]).is_integer() and inner[axis] != cut[axis]:
            out.append((axis, float(cut[axis]), float(np.sign(inner[axis] - cut[axis]))))
    return out


def _snap_seam_ends(
    coords: list[np.ndarray],
    owner: list[int],
    loose: list[tuple[int, int]],
    link: dict[tuple[int, int], tuple[int, int]],
    snap: float,
) -> None:
    """Pair loose seam ends of different blocks across the same border line (in place)."""
    cut = {e: coords[e[0]][-e[1]] for e in loose}
    cross = {e: _crossing(coords[e[0]], e[1]) for e in loose}
    pairs = []
    for n, a in enumerate(loose):
        for b in loose[n + 1 :]:
            if owner[a[0]] == owner[b[0]]:
                continue
            d = float(np.hypot(*(cut[a] - cut[b])))
            if d > snap:
                continue
            facing = any(
                ax == bx and la == lb and sa == -sb
                for ax, la, sa in cross[a]
                for bx, lb, sb in cross[b]
            )
            if facing:
                ka, kb = sorted((_key(cut[a]), _key(cut[b])))
                pairs.append((d, ka, kb, a, b))
    # Closest pairs first; ties broken by position, never by block order.
    for _, _, _, a, b in sorted(pairs, key=lambda t: t[:3]):
        if a not in link and b not in link:
            link[a], link[b] = b, a


def _snap_to_line_ends(
    coords: list[np.ndarray],
    owner: list[int],
    seams: list[tuple[bool, bool]],
    loose: list[tuple[int, int]],
    finals: np.ndarray,
    final_owner: np.ndarray | list[int],
    snap: float,
) -> None:
    """Move a loose cut point onto the nearest line end across its border (in place)."""
    if not loose:
        return
    ends: list[np.ndarray] = []
    ends_owner: list[int] = []
    for g, k in zip(finals, final_owner, strict=True):
        xy = shapely.get_coordinates(g)
        ends += [xy[0], xy[-1]]
        ends_owner += [int(k), int(k)]
    for xy, k, flags in zip(coords, owner, seams, strict=True):
        for end, is_seam in ((0, flags[0]), (1, flags[1])):
            if not is_seam:  # a node or scene-edge end; cut points are not targets
                ends.append(xy[-end])
                ends_owner.append(k)
    if not ends:
        return
    pts = np.asarray(ends)
    blocks = np.asarray(ends_owner)
    for i, end in loose:
        xy = coords[i]
        cut = xy[-end]
        d = np.hypot(pts[:, 0] - cut[0], pts[:, 1] - cut[1])
        ok = (d <= snap) & (blocks != owner[i])
        across = np.zeros(len(pts), dtype=bool)
        for axis, border, side in _crossing(xy, end):
            across |= np.sign(pts[:, axis] - border) == -side
        cand = np.flatnonzero(ok & across)
        if len(cand) == 0:
            continue
        best = cand[np.lexsort((pts[cand, 0], pts[cand, 1], d[cand]))[0]]
        xy = xy.copy()
        xy[-end] = pts[best]
        coords[i] = xy


def _clean(lines: np.ndarray, min_isolated: float) -> np.ndarray:
    """Drop repeated lines and short lines that touch no other line."""
    if len(lines) == 0:
        return lines
    norm = shapely.normalize(lines)
    seen: set[bytes] = set()
    keep = np.ones(len(lines), dtype=bool)
    for i, wkb in enumerate(shapely.to_wkb(norm)):
        if wkb in seen:
            keep[i] = False
        seen.add(wkb)
    lines = lines[keep]
    if min_isolated > 0:
        short = np.flatnonzero(shapely.length(lines) < min_isolated)
        if len(short):
            tree = shapely.STRtree(lines)
            src, dst = tree.query(lines[short], predicate="intersects")
            touched = np.bincount(src[short[src] != dst], minlength=len(short)) > 0
            drop = np.zeros(len(lines), dtype=bool)
            drop[short[~touched]] = True
            lines = lines[~drop]
    return lines


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


def line_lengths_m(lines: np.ndarray, *, crs: CRS | None) -> np.ndarray:
    """Geodesic length in metres of each line (given in ``crs`` coordinates).

    Without a CRS the length is planar in the coordinates' units.
    """
    out = np.zeros(len(lines), dtype=np.float64)
    if len(lines) == 0:
        return out
    if crs is None:
        return np.asarray(shapely.length(lines), dtype=np.float64)
    lonlat, geod = _lonlat(np.asarray(lines, dtype=object), crs)
    xy, index = shapely.get_coordinates(lonlat, return_index=True)
    same = index[1:] == index[:-1]
    _, _, dist = geod.inv(xy[:-1, 0][same], xy[:-1, 1][same], xy[1:, 0][same], xy[1:, 1][same])
    np.add.at(out, index[1:][same], dist)
    return out
