"""Model tiles shared between neighbouring blocks: each tile is predicted once.

A network's tiles lie on one grid anchored to the scene (:class:`~geoseg.tiling.grid.TileGrid`,
over the scene's pixels or the model's own pixel grid). A block needs the probabilities of
every tile that meets its read window, halo included, so neighbouring blocks need many of the
same tiles. Each tile is *owned* by the first block, in raster order, whose read window meets
it (:func:`tile_owners`): the run predicts, per block, the tiles it owns
(:func:`predict_owned_tiles`, the first phase), and each block then blends the tiles it needs
from its own and earlier blocks' predictions (:func:`blend_shared_tiles`), in the grid's
raster order, so every pixel gets the float sums it would get from whole-image inference,
whatever the block size or halo.

Blocks are done in raster order, so a tile is predicted just when the first block that needs
it comes, and is needed at most until the row of blocks below is done: what a run holds is
the band of tiles along one border between rows of blocks. (Owning a tile by the block whose
core holds its centre predicted the next row's tiles a row early.)

:func:`tile_sources` lists, for a block, the tiles it needs by owner, and :func:`select_tiles`
picks them out of an owner's prediction, so a block receives only those.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import overload

import numpy as np

from geoseg.config import InferenceOptions
from geoseg.errors import GeosegError, TaskFailure
from geoseg.models.normalisation import apply_scaling
from geoseg.models.predictor import Segmenter, TorchSegmenter, cached_segmenter
from geoseg.models.spectral import SpectralSegmenter, SplitMergeSegmenter
from geoseg.run.plan import ModelUse, RunPlan
from geoseg.tiling.blend import BlendAccumulator
from geoseg.tiling.grid import Block, PixelWindow, TileGrid
from geoseg.tiling.io import read_model_window, read_window

__all__ = [
    "BlockTiles",
    "blend_shared_tiles",
    "device_of",
    "needed_window",
    "networked",
    "owned_tiles",
    "predict_owned_tiles",
    "segmenter_for",
    "select_tiles",
    "shares_tiles",
    "tile_grid",
    "tile_owners",
    "tile_sources",
]

Origin = tuple[int, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockTiles:
    """The tiles one block owns, predicted: per model (index in ``plan.models``), each owned
    tile's unblended probabilities ``(C, tile, tile)`` by its origin on the model's grid
    (``None`` for a tile without a valid pixel, which nothing blends), and the device and
    precision that predicted them, so that the blocks blending them need not load the model
    to report it."""

    index: int
    tiles: Mapping[int, Mapping[Origin, np.ndarray | None]]
    timings: Mapping[str, float] = field(default_factory=dict)
    devices: Mapping[int, tuple[str, str]] = field(default_factory=dict)


def segmenter_for(use: ModelUse, options: InferenceOptions) -> Segmenter:
    """The loaded model of a run's model use (once per worker process)."""
    if use.card.architecture == "spectral":
        if use.card.params.get("segmentation") == "splitmerge":
            return SplitMergeSegmenter(use.card)
        return SpectralSegmenter(use.card)
    return cached_segmenter(
        use.source, options=replace(options, tile=use.tile, overlap=use.overlap)
    )


def networked(use: ModelUse) -> bool:
    """Whether the model is a network run on tiles (spectral methods work per pixel)."""
    return use.card.architecture != "spectral"


def shares_tiles(plan: RunPlan) -> bool:
    """Whether any model of the run is predicted on tiles (and so by owner blocks)."""
    return any(networked(u) for u in plan.models)


def tile_grid(use: ModelUse, plan: RunPlan) -> TileGrid:
    """The model's tiles over the scene, in the model's pixels."""
    if use.grid is None:
        height, width = plan.scene.height, plan.scene.width
    else:
        height, width = use.grid.height, use.grid.width
    # The scene's edge pixels lie an overlap inside their tiles, as they did inside blocks
    # whose halo reached beyond the scene: with the edge on the tile's border, a crop-field
    # model's field F1 on a 1024 px NAIP test image fell from 0.86-0.90 to 0.67.
    return TileGrid(
        height=height, width=width, tile=use.tile, stride=use.stride, margin=use.overlap
    )


def needed_window(use: ModelUse, plan: RunPlan, block: Block) -> PixelWindow | None:
    """The pixels (of the model's grid) whose probabilities the block needs: its read window
    inside the scene, or the model pixels that interpolate it; ``None`` if none."""
    grid = tile_grid(use, plan)
    extent = PixelWindow(row_off=0, col_off=0, height=grid.height, width=grid.width)
    window = block.read if use.grid is None else use.grid.cover(block.read)
    return window.intersection(extent)


Owners = Mapping[int, Mapping[Origin, int]]


def tile_owners(plan: RunPlan) -> dict[int, dict[Origin, int]]:
    """Per network model (index in ``plan.models``), each tile's owner: the index of the first
    block, in raster order, whose needed window meets it."""
    owners: dict[int, dict[Origin, int]] = {}
    blocks = sorted(plan.blocks, key=lambda b: b.index)
    for i, use in enumerate(plan.models):
        if not networked(use):
            continue
        grid = tile_grid(use, plan)
        owner = owners[i] = {}
        for block in blocks:
            window = needed_window(use, plan, block)
            if window is not None:
                for origin in grid.covering(window):
                    owner.setdefault(origin, block.index)
    return owners


def tile_sources(
    plan: RunPlan, block: Block, owners: Owners | None = None
) -> dict[int, dict[int, list[Origin]]]:
    """The tiles ``block`` blends, by owner: per owner block (in increasing index, the block
    itself among them when it owns any), per model index, the origins in raster order.
    ``owners``: :func:`tile_owners` of the plan, when already known."""
    if owners is None:
        owners = tile_owners(plan)
    sources: dict[int, dict[int, list[Origin]]] = {}
    for i, owner in owners.items():
        use = plan.models[i]
        window = needed_window(use, plan, block)
        if window is None:
            continue
        for origin in tile_grid(use, plan).covering(window):
            sources.setdefault(owner[origin], {}).setdefault(i, []).append(origin)
    return dict(sorted(sources.items()))


def owned_tiles(owners: Owners) -> dict[int, dict[int, list[Origin]]]:
    """Per block index, per model index, the origins of the tiles the block owns, in raster
    order (blocks that own none are left out)."""
    owned: dict[int, dict[int, list[Origin]]] = {}
    for i, owner in owners.items():
        for origin, index in owner.items():
            owned.setdefault(index, {}).setdefault(i, []).append(origin)
    for per_model in owned.values():
        for origins in per_model.values():
            origins.sort()
    return owned


@overload
def select_tiles(source: BlockTiles, wanted: Mapping[int, Sequence[Origin]]) -> BlockTiles: ...


@overload
def select_tiles(source: TaskFailure, wanted: Mapping[int, Sequence[Origin]]) -> TaskFailure: ...


@overload
def select_tiles(
    source: BlockTiles | TaskFailure, wanted: Mapping[int, Sequence[Origin]]
) -> BlockTiles | TaskFailure: ...


def select_tiles(
    source: BlockTiles | TaskFailure, wanted: Mapping[int, Sequence[Origin]]
) -> BlockTiles | TaskFailure:
    """The ``wanted`` tiles (per model index) of an owner's prediction: what one neighbour
    blends, so only those travel to it. A failure is passed on."""
    if isinstance(source, TaskFailure):
        return source
    tiles = {i: {o: source.tiles[i][o] for o in origins} for i, origins in wanted.items()}
    return replace(source, tiles=tiles)


def device_of(sources: Sequence[BlockTiles], index: int) -> tuple[str, str]:
    """``(device, precision)`` that predicted model ``index``'s tiles among ``sources``."""
    for source in sources:
        if index in source.devices:
            return source.devices[index]
    raise GeosegError(f"none of blocks {[s.index for s in sources]} predicted model {index}")


def predict_owned_tiles(
    plan: RunPlan, block: Block, owned: Mapping[int, Sequence[Origin]] | None = None
) -> BlockTiles:
    """The first phase of a block: predict the tiles it owns (runs on a Dask worker).

    ``owned``: per model index, the origins of those tiles (:func:`owned_tiles`), when
    already known."""
    if owned is None:
        owned = owned_tiles(tile_owners(plan)).get(block.index, {})
    tiles: dict[int, dict[Origin, np.ndarray | None]] = {}
    devices: dict[int, tuple[str, str]] = {}
    timings = dict.fromkeys(("read", "model_load", "predict", "model_wait", "blend"), 0.0)
    for i, use in enumerate(plan.models):
        origins = list(owned.get(i, ()))
        if not origins:
            continue
        t0 = time.perf_counter()
        span = tile_grid(use, plan).span(origins)
        if use.grid is None:
            image, valid = read_window(plan.scene.path, span, bands=use.bands)
        else:
            image, valid = read_model_window(plan.scene.path, span, bands=use.bands, grid=use.grid)
        if use.scaling is not None:
            image = apply_scaling(image, use.scaling)
        t1 = time.perf_counter()
        seg = segmenter_for(use, plan.inference)
        if not isinstance(seg, TorchSegmenter):
            raise GeosegError(f"model {use.source!r} is not predicted on tiles")
        loaded = time.perf_counter()
        own: dict[Origin, np.ndarray | None] = dict.fromkeys(origins)
        local = [(r - span.row_off, c - span.col_off) for r, c in origins]
        for (r, c), probs in seg.tile_probabilities(image, valid, origins=local):
            # A copy: the model's batch array would otherwise travel with every tile.
            own[(r + span.row_off, c + span.col_off)] = np.array(probs, dtype=np.float32)
        tiles[i] = own
        devices[i] = (seg.device, seg.precision)
        t2 = time.perf_counter()
        blocked, forward = seg.take_model_seconds()
        timings["read"] += t1 - t0
        timings["model_load"] += loaded - t1
        timings["predict"] += forward / seg.slots
        timings["model_wait"] += blocked
        timings["blend"] += t2 - loaded - blocked
    return BlockTiles(index=block.index, tiles=tiles, timings=timings, devices=devices)


def blend_shared_tiles(
    use: ModelUse,
    index: int,
    plan: RunPlan,
    block: Block,
    *,
    window: PixelWindow,
    valid: np.ndarray,
    sources: Sequence[BlockTiles],
) -> np.ndarray:
    """Probabilities ``(C, H, W)`` over ``window`` (``valid`` over it: the block's read
    window, or its model window for a model read at its own pixel size), blended from the
    tiles of model ``index`` that meet the block, as predicted by their owners."""
    shared: dict[Origin, np.ndarray | None] = {}
    for source in sources:
        shared.update(source.tiles.get(index, {}))
    acc = BlendAccumulator(len(use.card.classes), valid.shape, tile=use.tile, overlap=use.overlap)
    needed = needed_window(use, plan, block)
    origins = tile_grid(use, plan).covering(needed) if needed is not None else []
    for r, c in origins:
        try:
            probs = shared[(r, c)]
        except KeyError as err:
            raise GeosegError(
                f"block {block.index} needs tile {(r, c)} of {use.source!r}, which none of "
                f"blocks {[s.index for s in sources]} predicted"
            ) from err
        if probs is not None:
            acc.add_part(probs, row=r - window.row_off, col=c - window.col_off, valid=valid)
    out, _ = acc.result()
    return out
