"""Merging polygons cut by block borders into one polygon each.

Blocks report, for every inner side of their core, the component id of each pixel along
the border. Two components in neighbouring blocks belong to one object when they hold the
same class on the two sides of a shared border pixel edge (4-connectivity, the rule used
inside blocks). A union-find over ``(block, component)`` finds the objects; their pieces
are unioned in exact integer pixel coordinates, so shared edges cancel exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from geoseg.vectorize.polygons import BlockPolygons

__all__ = ["MergedPolygons", "SeamMerger"]

Node = tuple[int, int]  # (block index, component id)


@dataclass(slots=True)
class _Piece:
    geometry: shapely.Geometry
    pixels: int
    conf_sum: float


@dataclass(frozen=True, kw_only=True, slots=True)
class MergedPolygons:
    """Final seam polygons of one class in pixel coordinates, in deterministic order."""

    geometries: np.ndarray
    pixels: np.ndarray
    conf_sum: np.ndarray
    keys: list[Node]
    block: np.ndarray


@dataclass(slots=True)
class _ClassState:
    parent: dict[Node, Node] = field(default_factory=dict)
    pieces: dict[Node, _Piece] = field(default_factory=dict)
    # (block row, block col) -> (block index, borders)
    borders: dict[
        tuple[int, int],
        tuple[
            int, tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]
        ],
    ] = field(default_factory=dict)

    def find(self, n: Node) -> Node:
        root = n
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[n] != root:  # path compression
            self.parent[n], n = root, self.parent[n]
        return root

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


class SeamMerger:
    """Collects the seam polygons of every block and merges connected ones."""

    def __init__(self) -> None:
        self._state: dict[str, _ClassState] = {}

    def add(self, name: str, *, block: int, row: int, col: int, polygons: BlockPolygons) -> None:
        """Register a block's seam polygons of class ``name`` (``polygons.seam`` all True)."""
        st = self._state.setdefault(name, _ClassState())
        for geom, lab, px, cs in zip(
            polygons.geometries, polygons.labels, polygons.pixels, polygons.conf_sum, strict=True
        ):
            node = (block, int(lab))
            st.parent[node] = node
            st.pieces[node] = _Piece(geometry=geom, pixels=int(px), conf_sum=float(cs))
        st.borders[(row, col)] = (block, polygons.borders)
        top, bottom, left, right = polygons.borders
        # Pair this block's sides with the opposite sides of neighbours already seen.
        for (dr, dc), mine, theirs_side in (
            ((-1, 0), top, 1),
            ((1, 0), bottom, 0),
            ((0, -1), left, 3),
            ((0, 1), right, 2),
        ):
            other = st.borders.get((row + dr, col + dc))
            if mine is None or other is None:
                continue
            other_block, other_borders = other
            theirs = other_borders[theirs_side]
            if theirs is None:
                continue
            both = (mine > 0) & (theirs > 0)
            if not both.any():
                continue
            pairs = np.unique(np.column_stack([mine[both], theirs[both]]), axis=0)
            for a, b in pairs:
                st.union((block, int(a)), (other_block, int(b)))

    def finish(self, name: str) -> MergedPolygons:
        """Merged polygons of class ``name``, sorted by their first piece."""
        st = self._state.get(name)
        if st is None or not st.pieces:
            return MergedPolygons(
                geometries=np.empty(0, dtype=object),
                pixels=np.empty(0, dtype=np.int64),
                conf_sum=np.empty(0, dtype=np.float64),
                keys=[],
                block=np.empty(0, dtype=np.int64),
            )
        groups: dict[Node, list[Node]] = {}
        for node in st.pieces:
            groups.setdefault(st.find(node), []).append(node)
        keys = sorted(groups)
        geoms = np.empty(len(keys), dtype=object)
        pixels = np.zeros(len(keys), dtype=np.int64)
        conf = np.zeros(len(keys), dtype=np.float64)
        for i, root in enumerate(keys):
            members = groups[root]
            pieces = [st.pieces[m] for m in members]
            if len(pieces) == 1:
                geoms[i] = pieces[0].geometry
            else:
                geoms[i] = shapely.union_all([p.geometry for p in pieces])
            pixels[i] = sum(p.pixels for p in pieces)
            conf[i] = sum(p.conf_sum for p in pieces)
        return MergedPolygons(
            geometries=geoms,
            pixels=pixels,
            conf_sum=conf,
            keys=keys,
            block=np.array([k[0] for k in keys], dtype=np.int64),
        )
