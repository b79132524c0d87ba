"""The union of one object's block pieces by cancelling their shared pixel edges.

The pieces of an object cut by block borders tile it without overlapping, their vertices
lie on pixel corners and their edges are axis-parallel. Their union is then a matter of
bookkeeping on the pixel lattice, done here on flat NumPy arrays in memory linear in the
object's vertex count:

1. rings are oriented (exteriors counter-clockwise, holes clockwise, interior on the left
   of every edge) and the edges on block border lines are cut into unit edges;
2. a unit edge whose reverse also occurs is shared by two pieces: both are dropped;
3. the remaining edges are linked into rings: each edge continues with the one leaving its
   end vertex. Where two edges leave a vertex (two object pixels meeting diagonally) the
   right turn is taken, which keeps the two background pixels apart, so that the outer
   boundary and a hole touching it at that corner come out as a shell and a hole touching
   at a point (valid OGC), never as a self-touching ring;
4. the object is one 4-connected component, so exactly one ring runs counter-clockwise:
   the shell. The others are its holes.

A general overlay union (GEOS) builds a planar graph of the whole object with several
copies of its coordinates; for an object spanning a large scene (millions of vertices)
that graph would be the client's largest allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

__all__ = [
    "Rings",
    "drop_collinear",
    "join_pieces",
    "node_borders",
    "pack",
    "union_noded",
    "unpack",
    "without_collinear",
]

_POLYGON = shapely.GeometryType.POLYGON


@dataclass(frozen=True, slots=True)
class Rings:
    """One polygonal geometry as flat arrays, the form in which seam pieces are held.

    ``coords`` holds the closed rings one after another: int32 when every vertex is a
    pixel corner (8 bytes a vertex, against about 30 in a GEOS polygon), else float64.
    Ring ``i`` is ``coords[ring_off[i]:ring_off[i + 1]]``; polygon ``j`` has the rings
    ``part_off[j]:part_off[j + 1]``, its exterior first.
    """

    coords: np.ndarray
    ring_off: np.ndarray
    part_off: np.ndarray


def pack(geometries: Sequence[shapely.Geometry] | np.ndarray) -> list[Rings]:
    """Polygons or MultiPolygons -> one :class:`Rings` each (one conversion for all)."""
    geoms = np.asarray(geometries, dtype=object)
    if len(geoms) == 0:
        return []
    parts, owner = shapely.get_parts(geoms, return_index=True)
    kind, coords, (ring_off, part_off) = shapely.to_ragged_array(parts)
    if kind != _POLYGON:
        raise ValueError(f"seam pieces must be polygonal, not {kind.name}")
    lattice = coords.astype(np.int32)
    exact = (lattice == coords).all(axis=1)
    first_part = np.searchsorted(owner, np.arange(len(geoms) + 1))
    out = []
    for g in range(len(geoms)):
        p0, p1 = first_part[g], first_part[g + 1]
        r0, r1 = part_off[p0], part_off[p1]
        c0, c1 = ring_off[r0], ring_off[r1]
        on_lattice = bool(exact[c0:c1].all())
        out.append(
            Rings(
                # copies: the block's arrays can go
                coords=(lattice if on_lattice else coords)[c0:c1].copy(),
                ring_off=(ring_off[r0 : r1 + 1] - c0).astype(np.int32),
                part_off=(part_off[p0 : p1 + 1] - r0).astype(np.int32),
            )
        )
    return out


def _concat(pieces: Sequence[Rings]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The pieces' arrays end to end: coordinates and ``(ring, part)`` offsets."""
    n_coords = np.cumsum([0, *(len(p.coords) for p in pieces)])
    n_rings = np.cumsum([0, *(len(p.ring_off) - 1 for p in pieces)])
    ring_off = np.concatenate(
        [p.ring_off[:-1].astype(np.int64) + c for p, c in zip(pieces, n_coords, strict=False)]
        + [np.array([n_coords[-1]], dtype=np.int64)]
    )
    part_off = np.concatenate(
        [p.part_off[:-1].astype(np.int64) + r for p, r in zip(pieces, n_rings, strict=False)]
        + [np.array([n_rings[-1]], dtype=np.int64)]
    )
    dtype = np.result_type(*(p.coords.dtype for p in pieces))
    coords = np.concatenate([p.coords for p in pieces]).astype(dtype, copy=False)
    return coords.reshape(-1, 2), (ring_off, part_off)


def unpack(pieces: Sequence[Rings]) -> np.ndarray:
    """:class:`Rings` -> shapely geometries: a Polygon each, a MultiPolygon if several."""
    out = np.empty(len(pieces), dtype=object)
    if not pieces:
        return out
    coords, offsets = _concat(pieces)
    polys = shapely.from_ragged_array(_POLYGON, coords.astype(np.float64), offsets)
    n_parts = np.array([len(p.part_off) - 1 for p in pieces])
    start = np.concatenate([[0], np.cumsum(n_parts)])
    for i, (a, n) in enumerate(zip(start[:-1], n_parts, strict=True)):
        out[i] = polys[a] if n == 1 else shapely.MultiPolygon(list(polys[a : a + n]))
    return out


def join_pieces(pieces: list[Rings], *, xs: np.ndarray, ys: np.ndarray) -> shapely.Geometry:
    """The union of ``pieces``, without collinear vertices.

    Parameters
    ----------
    pieces
        Polygons (:func:`pack`) with integer (pixel corner) coordinates and axis-parallel
        edges, that tile one 4-connected object and meet only along the lines
        ``x = xs[i]`` and ``y = ys[j]``. The list is emptied once their coordinates are
        read, so that the caller's last references to them can go before the union is built.
    xs, ys
        The vertical and horizontal block border lines.

    Returns
    -------
    shapely.Geometry
        One polygon. Pieces that break the assumptions above (say, two objects) get
        GEOS's coverage union of the noded pieces instead (its general union if they are
        not even a coverage), whatever its shape.
    """
    coords, offsets = _concat(pieces)
    pieces.clear()
    if coords.dtype == np.int32:
        joined = _cancel(coords, offsets, xs=xs, ys=ys)
        if joined is not None:
            return joined
    parts = list(shapely.from_ragged_array(_POLYGON, coords.astype(np.float64), offsets))
    del coords
    return union_noded(parts, xs=xs, ys=ys)


def union_noded(
    pieces: list[shapely.Geometry], *, xs: np.ndarray, ys: np.ndarray
) -> shapely.Geometry:
    """GEOS's union of ``pieces`` (see :func:`join_pieces`), without collinear vertices.

    The pieces are noded on the border lines (:func:`node_borders`) so that their coverage
    union can drop the shared edges; pieces that are not a coverage even then (off the
    lattice) get the general union. ``pieces`` is emptied once noded.
    """
    # Noded piece by piece: the temporaries stay the size of one piece.
    noded = np.concatenate([node_borders([p], xs=xs, ys=ys) for p in pieces])
    pieces.clear()
    try:
        union = shapely.coverage_union_all(noded)
    except shapely.errors.GEOSException:  # not a coverage after all (off the lattice)
        union = shapely.union_all(noded)
    del noded
    return without_collinear(*shapely.to_ragged_array(np.asarray([union], dtype=object)))


def _cancel(
    coords: np.ndarray, offsets: tuple[np.ndarray, ...], *, xs: np.ndarray, ys: np.ndarray
) -> shapely.Geometry | None:
    """Steps 1-4 of the module's description; ``None`` where an assumption fails."""
    if len(coords) == 0:
        return None
    ring_off, part_off = offsets
    sx, sy, ring_start = _oriented_edges(coords, ring_off, part_off)
    sx, sy, ring_start, on_line = _node(sx, sy, ring_start, xs=xs, ys=ys)
    ex, ey = _ends(sx, sy, ring_start)
    d = _directions(ex - sx, ey - sy)
    if d is None:
        return None
    x0, y0 = int(min(sx.min(), ex.min())), int(min(sy.min(), ey.min()))
    width = int(max(sx.max(), ex.max())) - x0 + 1
    sv = (sy.astype(np.int64) - y0) * width + (sx - x0)  # vertex ids need 64 bits
    ev = (ey.astype(np.int64) - y0) * width + (ex - x0)
    del ex, ey
    keep = ~_shared(sv, ev, d, on_line)
    sx, sy, sv, ev, d = sx[keep], sy[keep], sv[keep], ev[keep], d[keep]
    del keep, on_line, ring_start
    nxt = _successors(sv, ev, d)
    del sv, ev, d
    if nxt is None:
        return None
    order, ring_offsets = _cycles(nxt)
    del nxt
    x, y = sx[order], sy[order]
    del sx, sy, order
    return _polygon(x, y, ring_offsets)


def _oriented_edges(
    coords: np.ndarray, ring_off: np.ndarray, part_off: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge start points of every ring (closing points dropped), interior on the left.

    Returns the start x, start y (``coords``' integer type) and each ring's first edge
    index (length ``rings + 1``). Ring order is not kept.
    """
    n_rings = len(ring_off) - 1
    x, y, ring_start = _open(coords, ring_off)
    exterior = np.zeros(n_rings, dtype=bool)
    exterior[part_off[:-1]] = True
    flip = (_areas2(x, y, ring_start) > 0) != exterior
    lengths = np.diff(ring_start)
    if lengths[flip].sum() * 2 > len(x):
        # Most vertices are in rings to reverse (all of them for rasterio's polygons):
        # reverse the whole arrays, which reverses every ring and their order, and then
        # only the rings that were right before.
        x, y = x[::-1].copy(), y[::-1].copy()
        ring_start = len(x) - ring_start[::-1]
        flip, lengths = ~flip[::-1], lengths[::-1]
    rings = np.flatnonzero(flip)
    if len(rings):
        n = lengths[rings]
        start = np.repeat(ring_start[rings], n)
        k = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        n = np.repeat(n, n)
        # Ring [s, e) read backwards from its first point: s, e - 1, e - 2, ..., s + 1.
        src = start + (n - k) % n
        dst = start + k
        x[dst], y[dst] = x[src], y[src]
    return x, y, ring_start


def _areas2(x: np.ndarray, y: np.ndarray, ring_start: np.ndarray) -> np.ndarray:
    """Twice the signed area of each ring given by its edge start points (shoelace).

    int64: exact, products of coordinates included (wrapping partial sums still add up
    to the exact total, which fits).
    """
    if len(ring_start) < 2:
        return np.zeros(0, dtype=np.int64)
    ex, ey = _ends(x, y, ring_start)
    cross = x.astype(np.int64)
    cross *= ey
    del ey
    other = ex.astype(np.int64)
    del ex
    other *= y
    cross -= other
    del other
    return np.add.reduceat(cross, ring_start[:-1])


def _node(
    sx: np.ndarray, sy: np.ndarray, ring_start: np.ndarray, *, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the edges lying on border lines into unit edges; flags the unit edges."""
    ex, ey = _ends(sx, sy, ring_start)
    dx = ex - sx
    del ex
    dy = ey - sy
    del ey
    on = ((dx == 0) & np.isin(sx, xs)) | ((dy == 0) & np.isin(sy, ys))
    count = np.abs(dx)
    count += np.abs(dy)
    count[~on] = 1
    ux = np.sign(dx).astype(np.int8)
    ux[~on] = 0
    del dx
    uy = np.sign(dy).astype(np.int8)
    uy[~on] = 0
    del dy
    ends = np.cumsum(count, dtype=np.int64)
    # int32 indices where they fit: these arrays are the largest of the join
    total = int(ends[-1]) if len(ends) else 0
    idx: type[np.signedinteger[Any]] = np.int32 if total < 2**31 - 1 else np.int64
    src = np.repeat(np.arange(len(sx), dtype=idx), count)
    step: np.ndarray = np.arange(len(src), dtype=idx)
    step -= np.repeat((ends - count).astype(idx), count)
    del count
    nx = ux[src].astype(sx.dtype)
    del ux
    nx *= step
    nx += sx[src]
    ny = uy[src].astype(sy.dtype)
    del uy
    ny *= step
    ny += sy[src]
    del step
    starts = np.concatenate([[0], ends])[ring_start]
    return nx, ny, starts, on[src]


def _ends(sx: np.ndarray, sy: np.ndarray, ring_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each edge's end point: the next edge's start, the ring's first for its last edge."""
    nxt = np.arange(1, len(sx) + 1, dtype=np.int64)
    nxt[ring_start[1:] - 1] = ring_start[:-1]
    return sx[nxt], sy[nxt]


def _directions(dx: np.ndarray, dy: np.ndarray) -> np.ndarray | None:
    """Direction code (0-3) of every edge; ``None`` if one is not axis-parallel."""
    if np.any((dx != 0) == (dy != 0)):
        return None
    return np.where(dx > 0, 0, np.where(dy > 0, 1, np.where(dx < 0, 2, 3))).astype(np.int8)


def _shared(sv: np.ndarray, ev: np.ndarray, d: np.ndarray, on_line: np.ndarray) -> np.ndarray:
    """Unit edges on border lines whose reverse is an edge too (interior on both sides)."""
    on = np.flatnonzero(on_line)
    key = sv[on] * 4 + d[on]
    reverse = ev[on] * 4 + (d[on] + 2) % 4
    out = np.zeros(len(sv), dtype=bool)
    out[on] = np.isin(key, reverse)
    return out


def _successors(sv: np.ndarray, ev: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """The edge that continues each edge: the one leaving its end, the right turn if two do."""
    n = len(sv)
    if n == 0:
        return None
    order = np.argsort(sv, kind="stable")
    sorted_sv = sv[order]
    pos = np.searchsorted(sorted_sv, ev)
    if pos.max() >= n or np.any(sorted_sv[pos] != ev):
        return None  # an edge ends where nothing leaves: not a closed boundary
    # Two edges leave a vertex where two object pixels meet diagonally (sorted next to
    # each other); the bool arrays keep the temporaries small for millions of edges.
    pair = np.zeros(n, dtype=bool)
    pair[:-1] = sorted_sv[1:] == sorted_sv[:-1]
    del sorted_sv
    two = pair[pos]
    del pair
    nxt = order[pos]
    right = (d + 3) % 4
    swap = np.flatnonzero(two & (d[nxt] != right))
    nxt[swap] = order[pos[swap] + 1]
    del order, pos
    if np.any(two & (d[nxt] != right)):
        return None
    # Every edge must be some edge's successor exactly once (a permutation).
    if np.bincount(nxt, minlength=n).max(initial=1) != 1:
        return None
    return nxt


def _cycles(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cycles of permutation ``nxt``: edges in ring order, and the rings' offsets.

    Runs of consecutive edges (``nxt[i] == i + 1``) are walked as one step, so the Python
    loop is over the places where rings were cut and re-linked, not over edges.
    """
    n = len(nxt)
    idx = np.arange(n)
    is_end = nxt != idx + 1
    ends = np.flatnonzero(is_end)
    starts = np.concatenate([[0], ends[:-1] + 1])
    run_of_start = np.full(n, -1, dtype=np.int64)
    run_of_start[starts] = np.arange(len(starts))
    run_next = run_of_start[nxt[ends]]  # the run that follows each run
    seen = np.zeros(len(starts), dtype=bool)
    sequence: list[int] = []
    ring_runs: list[int] = []
    for r0 in range(len(starts)):
        if seen[r0]:
            continue
        r, k = r0, 0
        while not seen[r]:
            seen[r] = True
            sequence.append(r)
            r = int(run_next[r])
            k += 1
        ring_runs.append(k)
    seq = np.asarray(sequence, dtype=np.int64)
    lengths = (ends - starts + 1)[seq]
    first = np.repeat(starts[seq] - (np.cumsum(lengths) - lengths), lengths)
    order = first + np.arange(int(lengths.sum()), dtype=np.int64)
    run_off = np.concatenate([[0], np.cumsum(ring_runs)])
    edge_off = np.concatenate([[0], np.cumsum(lengths)])[run_off]
    return order, edge_off


def _polygon(x: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> shapely.Geometry | None:
    """One polygon from the rings' edge start points (shell = the one counter-clockwise ring).

    Collinear vertices are dropped here, on the integer edge arrays, before the float64
    coordinates GEOS needs are made: for millions of vertices that order is the difference
    between one float copy and three.
    """
    area2 = _areas2(x, y, offsets)
    shells = np.flatnonzero(area2 > 0)
    if len(shells) != 1:
        return None
    rings = np.concatenate([shells, np.flatnonzero(area2 <= 0)])
    del area2
    coords, ring_off = _closed(x, y, offsets, keep=_turns(x, y, offsets), rings=rings)
    return shapely.from_ragged_array(_POLYGON, coords, (ring_off, np.array([0, len(rings)])))[0]


def _open(coords: np.ndarray, ring_off: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed rings -> their x and y without the closing points, and each ring's start."""
    body = np.ones(len(coords), dtype=bool)
    body[ring_off[1:] - 1] = False
    starts = np.asarray(ring_off, dtype=np.int64) - np.arange(len(ring_off))
    return coords[body, 0], coords[body, 1], starts


def _closed(
    x: np.ndarray, y: np.ndarray, offsets: np.ndarray, *, keep: np.ndarray, rings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Open rings -> the float64 coordinates and offsets of closed rings, in ``rings``
    order, of their ``keep`` vertices only (each ring closed by its first kept vertex)."""
    if len(rings) == 0:
        return np.empty((0, 2), dtype=np.float64), np.zeros(1, dtype=np.int64)
    counts = np.add.reduceat(keep, offsets[:-1])
    kept_at = np.flatnonzero(keep)  # kept vertices, ring by ring in the input's order
    kept_off = np.concatenate([[0], np.cumsum(counts)])
    lengths = counts[rings] + 1
    ring_off = np.concatenate([[0], np.cumsum(lengths)])
    src = np.repeat(kept_off[rings] - ring_off[:-1], lengths)
    src += np.arange(int(ring_off[-1]), dtype=np.int64)
    src[ring_off[1:] - 1] = kept_off[rings]  # the closing vertex is the ring's first
    idx = kept_at[src]
    del src, kept_at
    coords = np.empty((len(idx), 2), dtype=np.float64)
    coords[:, 0] = x[idx]
    coords[:, 1] = y[idx]
    return coords, ring_off


def _turns(x: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Whether each ring vertex (edge start) is a corner: not between two others on a
    horizontal or vertical line. Rings given by their edge start points (not closed)."""
    first, last = offsets[:-1], offsets[1:] - 1
    nxt = np.arange(1, len(x) + 1, dtype=np.int64)
    nxt[last] = first  # cyclic
    same_x = x == x[nxt]  # vertex i and its successor share x
    same_y = y == y[nxt]
    del nxt
    prev_x = np.empty_like(same_x)  # vertex i and its predecessor share x
    prev_x[1:] = same_x[:-1]
    prev_x[first] = same_x[last]
    prev_y = np.empty_like(same_y)
    prev_y[1:] = same_y[:-1]
    prev_y[first] = same_y[last]
    return ~((prev_x & same_x) | (prev_y & same_y))


def drop_collinear(geom: shapely.Geometry) -> shapely.Geometry:
    """``geom`` (axis-parallel polygonal, integer coordinates) without collinear vertices."""
    return without_collinear(*shapely.to_ragged_array(np.asarray([geom], dtype=object)))


def without_collinear(
    kind: shapely.GeometryType, coords: np.ndarray, offsets: tuple[np.ndarray, ...]
) -> shapely.Geometry:
    """Rebuild a ragged polygon array (:func:`shapely.to_ragged_array`) of one geometry
    without the vertices lying between two others on a horizontal or vertical line.

    Works on the flat coordinate array (rings closed, ``offsets[0]`` their bounds): no
    GEOS copy of the rings is made, which matters for an object of millions of vertices.
    """
    x, y, starts = _open(coords, offsets[0])
    keep = _turns(x, y, starts)
    out, ring_off = _closed(x, y, starts, keep=keep, rings=np.arange(len(starts) - 1))
    return shapely.from_ragged_array(kind, out, (ring_off, *offsets[1:]))[0]


def node_borders(
    polygons: Sequence[shapely.Geometry], *, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """``polygons`` with a vertex at every integer point of their edges on the border lines.

    Parameters
    ----------
    polygons
        Polygons with integer (pixel corner) coordinates and axis-parallel edges.
    xs, ys
        The vertical lines ``x = xs[i]`` and horizontal lines ``y = ys[j]`` (block borders).

    Returns
    -------
    numpy.ndarray
        The polygons (MultiPolygons split into their parts), same shapes, more vertices.
    """
    parts = shapely.get_parts(np.asarray(polygons, dtype=object))
    rings, ring_of = shapely.get_rings(parts, return_index=True)  # exterior first
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    n = len(coords)
    is_edge = np.zeros(n, dtype=bool)  # coords[i] -> coords[i + 1] is an edge of one ring
    is_edge[:-1] = ring_idx[:-1] == ring_idx[1:]
    step = np.zeros_like(coords)
    step[:-1] = coords[1:] - coords[:-1]
    on_line = is_edge & (
        ((step[:, 0] == 0) & np.isin(coords[:, 0], xs))
        | ((step[:, 1] == 0) & np.isin(coords[:, 1], ys))
    )
    count = np.where(on_line, np.abs(step).sum(axis=1), 1).astype(np.int64)
    count = np.maximum(count, 1)
    src = np.repeat(np.arange(n), count)
    offset = np.arange(len(src)) - np.repeat(np.cumsum(count) - count, count)
    unit = np.where(on_line[:, None], np.sign(step), 0.0)
    dense = coords[src] + offset[:, None] * unit[src]
    noded_rings = shapely.linearrings(dense, indices=ring_idx[src])
    return np.asarray(shapely.polygons(noded_rings, indices=ring_of), dtype=object)
