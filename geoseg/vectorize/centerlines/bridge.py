"""Bridging small gaps in a merged centreline network (on the client, whole scene).

A road mask breaks where trees, shadows or a weak prediction interrupt the road, and its
centrelines then stop on both sides of the gap. :func:`bridge_centerlines` joins such
*dead ends* (line ends no other line starts, ends or passes at) when they face each other:

- **end to end**: two dead ends of different lines closer than ``bridge_m``, each pointing
  at the other within ``max_angle_deg`` (its direction is taken over the last
  ``direction_m`` of its line), are joined by a straight segment and their lines become
  one line;
- **end to line** (a T-junction): a dead end pointing within ``max_angle_deg`` at the
  nearest point of another line closer than ``bridge_m`` is extended to that point, which
  becomes a vertex of the other line.

Candidates are taken greedily, shortest gap first (ties by position), each dead end used
once; a dead end facing another dead end across the same gap is joined end to end rather
than to a line. Distances and angles are in metres on the ground: the coordinates are scene
pixels scaled by the pixel size, as for the spur length ``prune_m``. The function runs on
the whole merged line set, so its result does not depend on how the scene was cut into
blocks; lines that are not bridged pass through unchanged (same vertices, same order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely

from geoseg.errors import ConfigError
from geoseg.vectorize.centerlines.lines import (
    _canonical,
    _key,
    _non_negative,
    _pixel_size,
    _sort,
    _walk_groups,
)

__all__ = ["BRIDGE_ANGLE_DEG", "BRIDGE_M", "bridge_centerlines"]

# Defaults a run uses (not run options): gaps up to 15 m, dead ends facing within 45°.
BRIDGE_M = 15.0
BRIDGE_ANGLE_DEG = 45.0
# A dead end's direction: over this much of its line (and at least 3 pixels).
DIRECTION_M = 10.0
_EPS = 1e-9


def bridge_centerlines(
    lines: np.ndarray,
    *,
    pixel_size_m: tuple[float, float],
    bridge_m: float = BRIDGE_M,
    max_angle_deg: float = BRIDGE_ANGLE_DEG,
    direction_m: float = DIRECTION_M,
) -> np.ndarray:
    """Join dead ends of ``lines`` (scene pixel coordinates) across gaps up to ``bridge_m``.

    Parameters
    ----------
    lines
        LineStrings in scene pixel coordinates, as :func:`merge_centerlines` returns them.
    pixel_size_m
        ``(dx, dy)`` in metres.
    bridge_m
        Longest gap bridged, in metres; 0 returns ``lines`` unchanged.
    max_angle_deg
        How far (0-90 degrees) a dead end's direction may turn away from the gap it bridges.
    direction_m
        Length of line over which a dead end's direction is measured (at least 3 pixels).

    Returns
    -------
    numpy.ndarray
        The lines, bridged ones merged or extended, in the deterministic order of
        :func:`merge_centerlines`.

    Raises
    ------
    ConfigError
        For a negative distance, an angle outside 0-90 or a bad pixel size.
    """
    dx, dy = _pixel_size(pixel_size_m)
    reach = _non_negative("bridge_m", bridge_m)
    along = _non_negative("direction_m", direction_m)
    angle = float(max_angle_deg)
    if not (math.isfinite(angle) and 0 <= angle <= 90):
        raise ConfigError(f"max_angle_deg {max_angle_deg!r} must be between 0 and 90")
    lines = np.asarray(lines, dtype=object)
    if reach == 0 or len(lines) < 1:
        return lines
    scale = np.array([dx, dy])
    px = [shapely.get_coordinates(g) for g in lines]
    xy = [c * scale for c in px]  # metres on the ground
    metric = shapely.linestrings(
        np.concatenate(xy), indices=np.repeat(np.arange(len(xy)), [len(c) for c in xy])
    )
    ends = _dead_ends(xy, metric)
    if not ends:
        return lines
    cos_max = math.cos(math.radians(angle))
    span = max(along, 3 * max(dx, dy))
    heading = {e: _heading(xy[e[0]], e[1], span) for e in ends}
    point = {e: xy[e[0]][-e[1]] for e in ends}

    # (gap, 0 end to end / 1 end to line, position, dead end, other dead end, line, point)
    Candidate = tuple[
        float, int, tuple[float, float], tuple[int, int], tuple[int, int], int, np.ndarray
    ]
    candidates: list[Candidate] = []
    # End to end: both ends face each other.
    pts = np.array([point[e] for e in ends])
    for n, a in enumerate(ends):
        d = np.hypot(*(pts[n + 1 :] - pts[n]).T)
        for k in np.flatnonzero(d <= reach):
            b = ends[n + 1 + k]
            if b[0] == a[0] or d[k] <= _EPS:
                continue
            gap = (point[b] - point[a]) / d[k]
            if heading[a] @ gap >= cos_max and heading[b] @ -gap >= cos_max:
                candidates.append((float(d[k]), 0, _key(point[a]), a, b, -1, point[b]))
    # End to line: the nearest point of another line, ahead of the end; not another dead
    # end (that needs both ends facing, above).
    dead = {_key(point[e]) for e in ends}
    tree = shapely.STRtree(metric)
    for a in ends:
        p = shapely.points(point[a])
        for j in tree.query(p, predicate="dwithin", distance=reach):
            if j == a[0]:
                continue
            q = shapely.get_coordinates(shapely.shortest_line(p, metric[j]))[1]
            d = float(np.hypot(*(q - point[a])))
            if d <= _EPS or d > reach or heading[a] @ ((q - point[a]) / d) < cos_max:
                continue
            if _key(q) in dead:
                continue
            candidates.append((d, 1, _key(point[a]), a, a, int(j), q))

    used: set[tuple[int, int]] = set()
    joins: list[tuple[tuple[int, int], tuple[int, int]]] = []
    taps: dict[tuple[int, int], np.ndarray] = {}  # dead end -> point it is extended to
    inserts: dict[int, list[np.ndarray]] = {}  # line -> vertices added for T-junctions
    for _, kind, _, a, b, j, q in sorted(candidates, key=lambda c: c[:3]):
        if a in used:
            continue
        if kind == 0:
            if b in used:
                continue
            used.update((a, b))
            joins.append((a, b))
        else:
            used.add(a)
            taps[a] = q / scale
            inserts.setdefault(j, []).append(q / scale)
    if not used:
        return lines

    out = [c.copy() for c in px]  # the bridged lines, back in pixel coordinates
    for j, qs in inserts.items():
        out[j] = _insert_vertices(out[j], qs)
    for (i, end), q in taps.items():
        out[i] = np.concatenate([q[None], out[i]] if end == 0 else [out[i], q[None]])
    # End-to-end joins chain lines into groups, each one line.
    link = {a: b for a, b in joins} | {b: a for a, b in joins}
    joined = sorted({i for i, _ in link})
    result: list[np.ndarray] = []
    for members, ring in _walk_groups(link, joined):
        parts = [out[p] if first == 0 else out[p][::-1] for p, first in members]
        if ring:  # close it
            parts.append(parts[0][:1])
        result.append(_canonical(np.concatenate(parts), free_ring=False))
    grouped = np.zeros(len(out), dtype=bool)
    grouped[joined] = True
    changed = grouped.copy()
    changed[[i for i, _ in taps]] = True
    changed[list(inserts)] = True
    for k in np.flatnonzero(changed & ~grouped):
        result.append(_canonical(out[int(k)], free_ring=False))
    kept = lines[~changed]
    index = np.repeat(np.arange(len(result)), [len(c) for c in result])
    new = shapely.linestrings(np.concatenate(result), indices=index) if result else []
    return _sort(np.concatenate([kept, np.asarray(new, dtype=object)]))


def _dead_ends(xy: Sequence[np.ndarray], metric: np.ndarray) -> list[tuple[int, int]]:
    """``(line, end)`` of every line end no other line starts, ends or passes at."""
    count: dict[tuple[float, float], int] = {}
    for c in xy:
        for end in (0, 1):
            count[_key(c[-end])] = count.get(_key(c[-end]), 0) + 1
    tree = shapely.STRtree(metric)
    out = []
    for i, c in enumerate(xy):
        if len(c) < 2 or _key(c[0]) == _key(c[-1]):
            continue  # a ring has no ends
        for end in (0, 1):
            if count[_key(c[-end])] > 1:
                continue
            touching = tree.query(shapely.points(c[-end]), predicate="dwithin", distance=_EPS)
            if np.any(touching != i):
                continue
            out.append((i, end))
    return out


def _heading(c: np.ndarray, end: int, span: float) -> np.ndarray:
    """Unit vector pointing out of the line at ``end``, over its last ``span`` metres."""
    path = c[::-1] if end == 1 else c  # path[0] is the end
    steps = np.hypot(*np.diff(path, axis=0).T)
    run = np.cumsum(steps)
    k = int(np.searchsorted(run, span))
    if k >= len(steps):
        back = path[-1]
    else:
        before = run[k] - steps[k]
        t = (span - before) / steps[k] if steps[k] > 0 else 0.0
        back = path[k] + t * (path[k + 1] - path[k])
    v = path[0] - back
    n = float(np.hypot(*v))
    return v / n if n > 0 else np.zeros(2)


def _insert_vertices(c: np.ndarray, points: list[np.ndarray]) -> np.ndarray:
    """``c`` with each of ``points`` (lying on it) inserted as a vertex where it lies."""
    line = shapely.linestrings(c)
    steps = np.r_[0.0, np.cumsum(np.hypot(*np.diff(c, axis=0).T))]
    at = []
    for q in points:
        if np.any(np.all(c == q, axis=1)):
            continue  # already a vertex
        s = float(shapely.line_locate_point(line, shapely.points(q)))
        k = int(np.clip(np.searchsorted(steps, s, side="right") - 1, 0, len(c) - 2))
        at.append((k, s, q))
    for k, _, q in sorted(at, key=lambda t: (-t[0], -t[1])):
        c = np.concatenate([c[: k + 1], q[None], c[k + 1 :]])
    return c
