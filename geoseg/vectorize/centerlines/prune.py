"""Spur pruning and the small-piece filter, in metres, on a block's skeleton graph.

A terminal chain whose height (the farthest reach from its junction, counting spurs
already pruned further out) is below ``prune_m`` is removed, repeatedly; a junction whose
branches are all spurs keeps its longest two. Connected pieces shorter than ``prune_m``
are then dropped. Anchored pixels (where the road runs on beyond the read window) are
never tips.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geoseg.vectorize.centerlines.graph import _OPEN, _SELF_LOOP, _Chains, _chains, _Graph, _step_m


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
