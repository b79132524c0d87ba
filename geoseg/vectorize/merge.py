"""Merging polygons cut by block borders into one polygon each, as blocks complete.

Blocks report, for every inner side of their core, the component id of each pixel along
the border. Two components in neighbouring blocks belong to one object when they hold the
same class on the two sides of a shared border pixel edge (4-connectivity, the rule used
inside blocks). A union-find over ``(block, component)`` finds the objects; their pieces
are joined in exact integer pixel coordinates, so shared edges cancel exactly.

The pieces of an object tile it without overlapping, on the pixel lattice: their union is
bookkeeping on flat arrays (:func:`geoseg.vectorize.lattice.join_pieces`: shared border
edges cancel, the rest are relinked into rings), an order of magnitude faster than GEOS's
coverage union of the noded pieces and more than a general union (``benchmarks/merge.py``,
figures in ``benchmarks/MEASUREMENTS.md``). Pieces are held as flat int32 rings
(:class:`~geoseg.vectorize.lattice.Rings`), about a third of a GEOS polygon's memory. An
object spanning the scene is still the client's largest allocation: it must be whole in
memory to be written as one polygon.

Memory stays bounded on any scene size: an object can only grow through the border of a
member block with an unprocessed neighbour, so once every member block is *closed* (it and
its four neighbours are done) the object is final and :meth:`SeamMerger.pop_finished`
hands it out and forgets it. With blocks processed roughly row by row, only objects
touching the last two rows of blocks are held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geoseg.tiling.grid import Block
from geoseg.vectorize.lattice import Rings, join_pieces, pack, unpack
from geoseg.vectorize.polygons import BlockPolygons

__all__ = ["MergedPolygons", "SeamMerger"]

Node = tuple[int, int]  # (block index, component id)
Borders = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]
_SIDES = (((-1, 0), 0, 1), ((1, 0), 1, 0), ((0, -1), 2, 3), ((0, 1), 3, 2))


@dataclass(slots=True)
class _Piece:
    rings: Rings  # flat int32 arrays: a third of a GEOS polygon's memory
    pixels: int
    conf_sum: float
    cell: tuple[int, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class MergedPolygons:
    """Final seam polygons of one class in pixel coordinates, sorted by ``keys``.

    ``keys[i]`` is the smallest ``(block, component)`` of polygon ``i``: a deterministic
    identity whatever order blocks completed in.
    """

    geometries: np.ndarray
    pixels: np.ndarray
    conf_sum: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def _empty() -> MergedPolygons:
    return MergedPolygons(
        geometries=np.empty(0, dtype=object),
        pixels=np.empty(0, dtype=np.int64),
        conf_sum=np.empty(0, dtype=np.float64),
        keys=np.empty((0, 2), dtype=np.int64),
    )


@dataclass(slots=True)
class _ClassState:
    parent: dict[Node, Node] = field(default_factory=dict)
    members: dict[Node, list[Node]] = field(default_factory=dict)  # root -> nodes
    pieces: dict[Node, _Piece] = field(default_factory=dict)
    borders: dict[tuple[int, int], tuple[int, Borders]] = field(default_factory=dict)
    by_cell: dict[tuple[int, int], list[Node]] = field(default_factory=dict)

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
            self.members[lo].extend(self.members.pop(hi))


class SeamMerger:
    """Collects the seam polygons of blocks and merges the pieces of each object.

    Parameters
    ----------
    grid_shape
        ``(rows, cols)`` of the block grid, to know when a block's neighbours are done.
    row_borders, col_borders
        Pixel rows and columns where block cores meet (see :meth:`for_blocks`).
    """

    def __init__(
        self,
        grid_shape: tuple[int, int],
        *,
        row_borders: Sequence[int],
        col_borders: Sequence[int],
    ) -> None:
        self.grid_shape = grid_shape
        self._xs = np.asarray(col_borders, dtype=np.float64)
        self._ys = np.asarray(row_borders, dtype=np.float64)
        self._state: dict[str, _ClassState] = {}
        self._done: set[tuple[int, int]] = set()
        self._closed: set[tuple[int, int]] = set()
        self._newly_closed: list[tuple[int, int]] = []

    @classmethod
    def for_blocks(cls, blocks: Sequence[Block]) -> SeamMerger:
        """A merger for a scene's block grid (:func:`geoseg.tiling.grid.plan_blocks`)."""
        rows = max(b.row for b in blocks) + 1
        cols = max(b.col for b in blocks) + 1
        return cls(
            (rows, cols),
            row_borders=sorted({b.core.row_off for b in blocks if b.row > 0}),
            col_borders=sorted({b.core.col_off for b in blocks if b.col > 0}),
        )

    def add(self, name: str, *, block: int, row: int, col: int, polygons: BlockPolygons) -> None:
        """Register a block's seam polygons of class ``name`` (``polygons.seam`` all True)."""
        st = self._state.setdefault(name, _ClassState())
        cell = (row, col)
        nodes = st.by_cell.setdefault(cell, [])
        for rings, lab, px, cs in zip(
            pack(polygons.geometries),
            polygons.labels,
            polygons.pixels,
            polygons.conf_sum,
            strict=True,
        ):
            node = (block, int(lab))
            st.parent[node] = node
            st.members[node] = [node]
            st.pieces[node] = _Piece(rings=rings, pixels=int(px), conf_sum=float(cs), cell=cell)
            nodes.append(node)
        st.borders[cell] = (block, polygons.borders)
        # Pair this block's sides with the opposite sides of neighbours already seen.
        for (dr, dc), mine_side, theirs_side in _SIDES:
            mine = polygons.borders[mine_side]
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

    def block_done(self, row: int, col: int) -> None:
        """Mark a block complete (call once per block, after :meth:`add` for its classes)."""
        self._done.add((row, col))
        for r, c in ((row, col), (row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
            if (r, c) in self._done and (r, c) not in self._closed and self._is_closed(r, c):
                self._closed.add((r, c))
                self._newly_closed.append((r, c))

    def _is_closed(self, row: int, col: int) -> bool:
        rows, cols = self.grid_shape
        for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
            if 0 <= r < rows and 0 <= c < cols and (r, c) not in self._done:
                return False
        return True

    def pop_finished(self) -> dict[str, MergedPolygons]:
        """Objects that can no longer grow, per class; they are forgotten here."""
        cells, self._newly_closed = self._newly_closed, []
        out: dict[str, MergedPolygons] = {}
        for name, st in self._state.items():
            roots = {st.find(n) for cell in cells for n in st.by_cell.get(cell, ())}
            final = [
                r for r in roots if all(st.pieces[m].cell in self._closed for m in st.members[r])
            ]
            out[name] = self._pop(st, sorted(final))
            for cell in cells:  # closed: no neighbour will pair with these borders again
                st.borders.pop(cell, None)
                st.by_cell.pop(cell, None)
        return out

    def finish(self, name: str) -> MergedPolygons:
        """Every object of class ``name`` still held (all blocks must be done)."""
        st = self._state.get(name)
        if st is None:
            return _empty()
        return self._pop(st, sorted(st.members))

    def _pop(self, st: _ClassState, roots: list[Node]) -> MergedPolygons:
        if not roots:
            return _empty()
        geoms = np.empty(len(roots), dtype=object)
        pixels = np.zeros(len(roots), dtype=np.int64)
        conf = np.zeros(len(roots), dtype=np.float64)
        single: list[int] = []
        single_rings: list[Rings] = []
        for i, root in enumerate(roots):
            # Sorted: the join's output (where each ring starts) depends on the order of its
            # pieces, and the members' order on the order blocks completed in.
            nodes = sorted(st.members.pop(root))
            pieces = [st.pieces.pop(n) for n in nodes]
            for n in nodes:
                del st.parent[n]
            pixels[i] = sum(p.pixels for p in pieces)
            conf[i] = sum(p.conf_sum for p in pieces)
            parts = [p.rings for p in pieces]
            del pieces  # the join frees the parts once it has their coordinates
            if len(parts) == 1:
                single.append(i)
                single_rings.append(parts[0])
            else:
                geoms[i] = join_pieces(parts, xs=self._xs, ys=self._ys)
        geoms[single] = unpack(single_rings)  # one conversion for all the unjoined pieces
        return MergedPolygons(
            geometries=geoms,
            pixels=pixels,
            conf_sum=conf,
            keys=np.array(roots, dtype=np.int64).reshape(-1, 2),
        )
