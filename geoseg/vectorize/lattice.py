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
copies of its coordinates; for an object spanning a 32768^2 scene (millions of vertices)
that graph was the client's largest allocation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

__all__ = ["drop_collinear", "join_pieces", "node_borders", "union_noded", "without_collinear"]


def join_pieces(
    pieces: list[shapely.Geometry], *, xs: np.ndarray, ys: np.ndarray
) -> shapely.Geometry:
    """The union of ``pieces``, without collinear vertices.

    Parameters
    ----------
    pieces
        Polygons with integer (pixel corner) coordinates and axis-parallel edges, that
        tile one 4-connected object and meet only along the lines ``x = xs[i]`` and
        ``y = ys[j]``. The list is emptied once their coordinates are read, so that the
        caller's last references to them can go before the union is built.
    xs, ys
        The vertical and horizontal block border lines.

    Returns
    -------
    shapely.Geometry
        One polygon. Pieces that break the assumptions above (say, two objects) get
        GEOS's coverage union of the noded pieces instead (its general union if they are
        not even a coverage), whatever its shape.
    """
    kind, coords, offsets = shapely.to_ragged_array(
        shapely.get_parts(np.asarray(pieces, dtype=object))
    )
    pieces.clear()
    lattice = coords.astype(np.int32)  # pixel corners: exact, and half the memory
    if np.array_equal(lattice, coords):
        del coords
        joined = _cancel(kind, lattice, offsets, xs=xs, ys=ys)
        if joined is not None:
            return joined
        coords = lattice.astype(np.float64)
    del lattice
    parts = list(shapely.from_ragged_array(kind, coords, offsets))
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
    kind: shapely.GeometryType,
    coords: np.ndarray,
    offsets: tuple[np.ndarray, ...],
    *,
    xs: np.ndarray,
    ys: np.ndarray,
) -> shapely.Geometry | None:
    """Steps 1-4 of the module's description; ``None`` where an assumption fails."""
    if kind != shapely.GeometryType.POLYGON or len(coords) == 0:
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
    return _polygon(sx[order], sy[order], ring_offsets)


def _oriented_edges(
    coords: np.ndarray, ring_off: np.ndarray, part_off: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge start points of every ring (closing points dropped), interior on the left.

    Returns the start x, start y (``coords``' integer type) and each ring's first edge
    index (length ``rings + 1``).
    """
    n_rings = len(ring_off) - 1
    body = np.ones(len(coords), dtype=bool)
    body[ring_off[1:] - 1] = False
    x, y = coords[body, 0], coords[body, 1]
    del body
    ring_start = np.asarray(ring_off, dtype=np.int64) - np.arange(n_rings + 1)
    exterior = np.zeros(n_rings, dtype=bool)
    exterior[part_off[:-1]] = True
    flip = (_areas2(x, y, ring_start) > 0) != exterior
    idx = np.arange(len(x), dtype=np.int64)
    ring_of = np.repeat(np.arange(n_rings), np.diff(ring_start))
    flipped = flip[ring_of]
    # Ring [s, e) read backwards from its first point: s, e - 1, e - 2, ..., s + 1.
    s, e = ring_start[:-1][ring_of[flipped]], ring_start[1:][ring_of[flipped]]
    idx[flipped] = s + (e - idx[flipped]) % (e - s)
    del ring_of, flipped, s, e
    return x[idx], y[idx], ring_start


def _areas2(x: np.ndarray, y: np.ndarray, ring_start: np.ndarray) -> np.ndarray:
    """Twice the signed area of each ring given by its edge start points (shoelace).

    int64: exact, products of coordinates included (wrapping partial sums still add up
    to the exact total, which fits).
    """
    if len(ring_start) < 2:
        return np.zeros(0, dtype=np.int64)
    ex, ey = _ends(x, y, ring_start)
    cross = x.astype(np.int64) * ey - ex.astype(np.int64) * y
    return np.add.reduceat(cross, ring_start[:-1])


def _node(
    sx: np.ndarray, sy: np.ndarray, ring_start: np.ndarray, *, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the edges lying on border lines into unit edges; flags the unit edges."""
    ex, ey = _ends(sx, sy, ring_start)
    dx, dy = ex - sx, ey - sy
    del ex, ey
    on = ((dx == 0) & np.isin(sx, xs)) | ((dy == 0) & np.isin(sy, ys))
    count = np.where(on, np.abs(dx) + np.abs(dy), 1)
    ux = np.where(on, np.sign(dx), 0).astype(np.int8)
    uy = np.where(on, np.sign(dy), 0).astype(np.int8)
    del dx, dy
    src = np.repeat(np.arange(len(sx)), count)
    step = np.arange(len(src), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    nx = (sx[src] + step * ux[src]).astype(sx.dtype)
    ny = (sy[src] + step * uy[src]).astype(sy.dtype)
    del step
    starts = np.concatenate([[0], np.cumsum(count)])[ring_start]
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
    if len(sv) == 0:
        return None
    order = np.argsort(sv, kind="stable")
    sorted_sv = sv[order]
    pos = np.searchsorted(sorted_sv, ev)
    if np.any(pos >= len(sv)) or np.any(sorted_sv[np.minimum(pos, len(sv) - 1)] != ev):
        return None  # an edge ends where nothing leaves: not a closed boundary
    nxt = order[pos]
    second = np.minimum(pos + 1, len(sv) - 1)
    two = (pos + 1 < len(sv)) & (sorted_sv[second] == ev)
    right = ((d + 3) % 4).astype(np.int8)
    use_second = two & (d[nxt] != right)
    nxt[use_second] = order[second[use_second]]
    if np.any(two & (d[nxt] != right)):
        return None
    # Every edge must be some edge's successor exactly once (a permutation).
    if np.bincount(nxt, minlength=len(sv)).max(initial=1) != 1:
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


def _polygon(sx: np.ndarray, sy: np.ndarray, offsets: np.ndarray) -> shapely.Geometry | None:
    """One polygon from closed-up rings (shell = the one counter-clockwise ring)."""
    n_rings = len(offsets) - 1
    area2 = _areas2(sx, sy, offsets)
    shells = np.flatnonzero(area2 > 0)
    if len(shells) != 1:
        return None
    rings = np.concatenate([shells, np.flatnonzero(area2 <= 0)])
    lengths = np.diff(offsets)[rings] + 1  # each ring closed by repeating its first point
    src = np.repeat(offsets[rings] - (np.cumsum(lengths) - lengths), lengths)
    pos = np.arange(int(lengths.sum()), dtype=np.int64)
    closing = np.cumsum(lengths) - 1
    src = src + pos
    src[closing] = offsets[rings]  # the closing point is the ring's first
    coords = np.column_stack([sx[src], sy[src]]).astype(np.float64)
    ring_off = np.concatenate([[0], np.cumsum(lengths)])
    return without_collinear(
        shapely.GeometryType.POLYGON, coords, (ring_off, np.array([0, n_rings]))
    )


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
    ring_off = offsets[0]
    first, last = ring_off[:-1], ring_off[1:] - 1  # each ring's first and closing point
    prev = np.empty_like(coords)
    prev[1:] = coords[:-1]
    prev[first] = coords[last - 1]  # the ring is cyclic: before the first, its last point
    nxt = np.empty_like(coords)
    nxt[:-1] = coords[1:]
    nxt[last] = coords[last]  # closing points are dropped below whatever this says
    keep = ~(
        ((prev[:, 0] == coords[:, 0]) & (coords[:, 0] == nxt[:, 0]))
        | ((prev[:, 1] == coords[:, 1]) & (coords[:, 1] == nxt[:, 1]))
    )
    del prev, nxt
    keep[last] = False
    counts = np.add.reduceat(keep, first) if len(first) else np.zeros(0, dtype=np.int64)
    new_off = np.zeros(len(first) + 1, dtype=ring_off.dtype)
    np.cumsum(counts + 1, out=new_off[1:])
    out = np.empty((int(new_off[-1]), 2), dtype=coords.dtype)
    closing = new_off[1:] - 1
    body = np.ones(len(out), dtype=bool)
    body[closing] = False
    out[body] = coords[keep]
    out[closing] = out[new_off[:-1]]  # close each ring with its first kept vertex
    return shapely.from_ragged_array(kind, out, (new_off, *offsets[1:]))[0]


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
