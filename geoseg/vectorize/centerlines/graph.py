"""Skeleton pixels as a graph, split into chains between nodes.

Skeleton pixels become the vertices of a graph whose edges join 8-neighbours, except a
diagonal edge whose two pixels also share a skeleton 4-neighbour (the redundant triangles
at corners and junctions). Pixels of degree other than 2 are *nodes*; the runs of degree-2
pixels between them are *chains*, and a chain is one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order

_OPEN, _SELF_LOOP, _RING = 0, 1, 2  # chain kinds: node to node, node to itself, no node


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
