"""The window grid: blocks (units of Dask work) and tiles (units of model input).

A scene is partitioned into block *cores* that cover every pixel exactly once. Each block
reads its core plus a *halo* on every side (reflect-padded beyond the scene edge). A model's
tiles lie on one :class:`TileGrid` anchored to the scene (origins at multiples of the stride
``tile - overlap``, the last row and column snapped to end at the scene's edge, as
whole-image inference lays them): a block predicts the grid's tiles that meet its read
window, so a pixel's probability is the same blend of the same tiles whatever the block size,
halo or worker count.

Everything here is pure arithmetic on integers: no file is opened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geoseg.errors import ConfigError

__all__ = [
    "Block",
    "PixelWindow",
    "TileGrid",
    "TilingSpec",
    "core_size",
    "plan_blocks",
    "tile_origins",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class PixelWindow:
    """A rectangle of pixels in scene coordinates; may extend beyond the scene."""

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"window size {self.height}x{self.width} must be positive")

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """Overlap of two windows, or None when they do not overlap."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(row_off=r0, col_off=c0, height=r1 - r0, width=c1 - c0)

    def relative_to(self, outer: PixelWindow) -> tuple[slice, slice]:
        """Array slices selecting this window inside an array covering ``outer``."""
        r0, c0 = self.row_off - outer.row_off, self.col_off - outer.col_off
        if r0 < 0 or c0 < 0 or r0 + self.height > outer.height or c0 + self.width > outer.width:
            raise ConfigError(f"window {self} does not lie inside {outer}")
        return slice(r0, r0 + self.height), slice(c0, c0 + self.width)


@dataclass(frozen=True, kw_only=True, slots=True)
class TilingSpec:
    """How a scene is cut: model tile size and overlap, block core target and halo.

    Parameters
    ----------
    tile
        Model input size in pixels (square); a multiple of 32 for the encoders geoseg uses.
    overlap
        Pixels shared by neighbouring tiles, blended with a cosine ramp.
    block
        Target core size of a block in pixels; rounded so a block holds whole tile strides.
    halo
        Extra pixels read around each core; at least ``overlap``. ``None`` means ``overlap``.
    """

    tile: int = 512
    overlap: int = 64
    block: int = 2048
    halo: int | None = None

    def __post_init__(self) -> None:
        if self.tile < 32 or self.tile % 32:
            suggestion = max(32, round(self.tile / 32) * 32)
            raise ConfigError(
                f"tile size {self.tile} is not a positive multiple of 32; try {suggestion}"
            )
        if not 0 <= self.overlap <= self.tile // 2:
            raise ConfigError(
                f"overlap {self.overlap} must be between 0 and half the tile ({self.tile // 2})"
            )
        if self.halo is not None and self.halo < self.overlap:
            raise ConfigError(
                f"halo {self.halo} is smaller than the tile overlap {self.overlap}; "
                f"use at least {self.overlap}"
            )
        if self.block < self.tile:
            raise ConfigError(f"block size {self.block} is smaller than the tile {self.tile}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def halo_px(self) -> int:
        return self.overlap if self.halo is None else self.halo


@dataclass(frozen=True, kw_only=True, slots=True)
class Block:
    """One unit of Dask work.

    ``core`` lies inside the scene and the cores of all blocks partition it. ``read`` is the
    core grown by the halo (and at least one tile in each dimension); the part of ``read``
    outside the scene is reflect-padded by the reader. ``open_sides`` says, for the top,
    bottom, left and right side of the core, whether the scene continues beyond it in
    another block (an *inner* border, where polygons must be merged).
    """

    index: int
    row: int
    col: int
    core: PixelWindow
    read: PixelWindow
    open_sides: tuple[bool, bool, bool, bool]

    @property
    def core_in_read(self) -> tuple[slice, slice]:
        return self.core.relative_to(self.read)


def core_size(spec: TilingSpec) -> int:
    """Core edge length of a full block: ``n`` whole strides plus the overlap, less the halo
    on both sides (``n`` chosen so the read window is nearest the target block size).

    Blocks only size the work: tiles lie on the scene's :class:`TileGrid` whatever the core.
    """
    halo = spec.halo_px
    n = max(1, round((spec.block + 2 * halo - spec.overlap) / spec.stride))
    while n * spec.stride + spec.overlap - 2 * halo <= 0:
        n += 1
    return n * spec.stride + spec.overlap - 2 * halo


def tile_origins(length: int, *, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)`` at a fixed stride.

    The last tile is snapped to end exactly at ``length`` so nothing beyond the read
    window is predicted; when ``length <= tile`` a single tile at 0 is returned (the
    caller pads the window to the tile size).
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    origins = [i * stride for i in range(count - 1)]
    origins.append(length - tile)
    return origins


def plan_blocks(height: int, width: int, *, spec: TilingSpec) -> list[Block]:
    """Partition a ``height x width`` scene into blocks, row-major.

    Raises
    ------
    ConfigError
        If the scene size is not positive.
    """
    if height <= 0 or width <= 0:
        raise ConfigError(f"scene size {height}x{width} must be positive")
    core = core_size(spec)
    halo = spec.halo_px
    n_rows, n_cols = math.ceil(height / core), math.ceil(width / core)
    blocks: list[Block] = []
    for br in range(n_rows):
        r0 = br * core
        h = min(core, height - r0)
        for bc in range(n_cols):
            c0 = bc * core
            w = min(core, width - c0)
            read_h = max(h + 2 * halo, spec.tile)
            read_w = max(w + 2 * halo, spec.tile)
            blocks.append(
                Block(
                    index=len(blocks),
                    row=br,
                    col=bc,
                    core=PixelWindow(row_off=r0, col_off=c0, height=h, width=w),
                    read=PixelWindow(
                        row_off=r0 - halo, col_off=c0 - halo, height=read_h, width=read_w
                    ),
                    open_sides=(br > 0, br < n_rows - 1, bc > 0, bc < n_cols - 1),
                )
            )
    return blocks


@dataclass(frozen=True, kw_only=True, slots=True)
class TileGrid:
    """A model's tiles over a ``height x width`` scene (in the model's pixels).

    The grid reaches ``margin`` pixels beyond the scene on every side, so the scene's edge
    pixels lie that far inside their tiles, with invalid context beyond them (the reader pads
    it; the normaliser fills it with the band means), as inside a block's halo. Tile origins
    along each axis are :func:`tile_origins` of the length plus both margins, less the margin:
    the grid whole-image inference uses, whatever block asks for its tiles. A scene shorter
    than a tile has one tile that extends beyond it.
    """

    height: int
    width: int
    tile: int
    stride: int
    margin: int = 0

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 1:
            raise ConfigError(f"tile grid over {self.height}x{self.width} pixels: must be positive")
        if not 0 < self.stride <= self.tile:
            raise ConfigError(
                f"tile stride {self.stride} must be between 1 and the tile {self.tile}"
            )
        if not 0 <= self.margin < self.tile:
            raise ConfigError(f"tile grid margin {self.margin} must be in [0, {self.tile})")

    def _axis(self, length: int, start: int, end: int) -> list[int]:
        # Origins are sorted, so those whose tile meets [start, end) are one run of them.
        m = self.margin
        origins = tile_origins(length + 2 * m, tile=self.tile, stride=self.stride)
        return [o - m for o in origins if o - m < end and o - m + self.tile > start]

    def covering(self, window: PixelWindow) -> list[tuple[int, int]]:
        """``(row, col)`` origins of the tiles that meet ``window``, in raster order (the
        order tiles are blended in, so a pixel's sums do not depend on the block)."""
        rows = self._axis(self.height, window.row_off, window.row_end)
        cols = self._axis(self.width, window.col_off, window.col_end)
        return [(r, c) for r in rows for c in cols]

    def span(self, origins: list[tuple[int, int]]) -> PixelWindow:
        """The smallest window holding the tiles at ``origins`` (not empty)."""
        if not origins:
            raise ConfigError("no tiles to span")
        r0 = min(r for r, _ in origins)
        c0 = min(c for _, c in origins)
        r1 = max(r for r, _ in origins) + self.tile
        c1 = max(c for _, c in origins) + self.tile
        return PixelWindow(row_off=r0, col_off=c0, height=r1 - r0, width=c1 - c0)
