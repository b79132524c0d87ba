"""The centreline value object, parameter checks, canonical form and order, lengths.

Also the walk along lines joined end to end (:func:`_walk_groups`), shared by the seam
merge and the gap bridging.

Lines are in scene pixel coordinates until :func:`geoseg.vectorize.geometry.pixels_to_crs`
moves them to the scene CRS; :func:`line_lengths_m` then measures them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.crs import CRS

from geoseg.errors import ConfigError
from geoseg.vectorize.geometry import _lonlat

__all__ = ["BlockLines", "line_lengths_m"]


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


# A line end: (line, 0) is its first vertex, (line, 1) its last.
_End = tuple[int, int]


def _walk_groups(link: Mapping[_End, _End], order: Iterable[int]) -> list[tuple[list[_End], bool]]:
    """Lines joined end to end, walked group by group: ``(members, ring)`` for each group.

    ``link`` maps a line end to the end of another line it is joined to, both ways, each
    end joined at most once, so a group is an open chain or a ring. Groups come in
    ``order`` of their first line met there (a line of ``order`` without a joined end is a
    group of its own); lines outside ``order`` appear only in the groups they are joined
    into. ``members`` are ``(line, first)`` in walking order, ``first`` the end the walk
    enters the line by (1: walk it reversed). An open chain is walked from one of its free
    ends: the one reached by walking back from its first line's end 0. A ring (``ring``
    True) starts at that first line, entered by its end 0; its last member leads back to
    its first one.
    """
    seen: set[int] = set()
    groups: list[tuple[list[_End], bool]] = []
    for i in order:
        if i in seen:
            continue
        # Walk back to a free end of the group (or around a ring to the start).
        p, leave, ring = i, 0, False
        while (nxt := link.get((p, leave))) is not None:
            if nxt[0] == i:
                ring = True
                break
            p, leave = nxt[0], 1 - nxt[1]
        p, first = (i, 0) if ring else (p, leave)
        start = p
        members: list[_End] = []
        while True:
            seen.add(p)
            members.append((p, first))
            nxt = link.get((p, 1 - first))
            if nxt is None or nxt[0] == start:
                break
            p, first = nxt
        groups.append((members, ring))
    return groups


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
