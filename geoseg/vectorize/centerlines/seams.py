"""Joining the centreline pieces of all blocks across their borders (on the client)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from geoseg.errors import ConfigError
from geoseg.vectorize.centerlines.lines import (
    BlockLines,
    _canonical,
    _finish,
    _key,
    _non_negative,
    _sort,
    _walk_groups,
)

__all__ = ["merge_centerlines"]


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
    order = sorted(range(len(coords)), key=lambda k: _key(coords[k][0]))
    for members, ring in _walk_groups(link, order):
        parts: list[np.ndarray] = []
        for p, first in members:
            xy = coords[p] if first == 0 else coords[p][::-1]
            if parts:  # both sides hold a cut point (the same one unless snapped): drop them
                parts[-1] = parts[-1][:-1]
                xy = xy[1:]
            parts.append(xy)
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
