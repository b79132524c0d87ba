"""The Dask task: one block from pixels to polygons.

:func:`process_block` reads the block's window (core + halo), predicts with every model of
the run, smooths on the halo, crops the core and polygonizes it. It returns small arrays
and polygons: finished ones for the block's interior, raw pieces and border labels for
those that touch an inner block border (merged by the client).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence

import numpy as np

from geoseg.errors import GeosegError, TaskFailure
from geoseg.models.normalisation import apply_scaling
from geoseg.models.spectral import SplitMergeSegmenter
from geoseg.postprocess import argmax_classes, colour_bands, smooth_block
from geoseg.run.memory import peak_rss_mb
from geoseg.run.plan import MAX_ROAD_WIDTH_M, NODATA_CLASS, RunPlan
from geoseg.run.results import BlockResult, ClassPolygons, finish_polygons
from geoseg.run.tiles import (
    BlockTiles,
    blend_shared_tiles,
    device_of,
    networked,
    owned_tiles,
    predict_owned_tiles,
    segmenter_for,
    tile_owners,
    tile_sources,
)
from geoseg.tiling.grid import Block
from geoseg.tiling.io import read_model_window, read_window
from geoseg.tiling.resample import to_scene_grid
from geoseg.vectorize.centerlines import BlockLines, block_centerlines
from geoseg.vectorize.polygons import BlockPolygons, polygonize_block

# Centrelines are traced on pixel centres; one pixel of Douglas-Peucker tolerance removes the
# staircase of oblique roads (up to ~8 % extra length) without moving a line visibly.
CENTERLINE_SIMPLIFY_PX = 1.0

__all__ = ["block_task", "process_block", "tiles_task"]


def process_block(
    plan: RunPlan, block: Block, *, sources: Sequence[BlockTiles] | None = None
) -> BlockResult:
    """Read, predict, smooth, crop and polygonize one block (runs on a Dask worker).

    ``sources``: the tiles predicted by the blocks that own the tiles this block needs
    (:func:`~geoseg.run.tiles.tile_sources`), blended here; ``None`` predicts them here,
    each owner's tiles whole (what a run does once per owner, for a block on its own).
    """
    timings = dict.fromkeys(
        ("read", "model_load", "predict", "model_wait", "blend", "smooth", "vectorize"), 0.0
    )
    if sources is None:
        by_index = {b.index: b for b in plan.blocks}
        owners = tile_owners(plan)
        owned = owned_tiles(owners)
        sources = [
            predict_owned_tiles(plan, by_index[i], owned[i])
            for i in tile_sources(plan, block, owners)
        ]
    for source in sources:
        if source.index == block.index:  # the model time spent on this block's own tiles
            for key, seconds in source.timings.items():
                timings[key] += seconds
    core = block.core_in_read
    shape = (block.core.height, block.core.width)
    classes = np.zeros(shape, dtype=np.uint8)
    any_valid = np.zeros(shape, dtype=bool)
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # Per model: its normalised entropy over the core, and the classes it gives.
    entropies: list[tuple[np.ndarray, tuple[str, ...]]] = []
    images: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    lines: dict[str, BlockLines] = {}
    device, precision = "cpu", "fp32"
    for index, use in enumerate(plan.models):
        t0 = time.perf_counter()
        if use.bands not in images:  # each band set is read once
            images[use.bands] = read_window(plan.scene.path, block.read, bands=use.bands)
        image, valid = images[use.bands]
        if use.scaling is not None:  # the model reads physical units (e.g. reflectance)
            image = apply_scaling(image, use.scaling)
        # A model that reads the scene at its own pixel size sees its own grid's window; its
        # probabilities come back to the scene grid.
        grid = use.grid if valid.any() else None
        if grid is not None:
            model_cover = grid.cover(block.read)
            model_image, model_valid = read_model_window(
                plan.scene.path, model_cover, bands=use.bands, grid=grid
            )
            if use.scaling is not None:
                model_image = apply_scaling(model_image, use.scaling)
        t1 = time.perf_counter()
        probs = None
        if networked(use):
            # Its tiles were predicted by their owners: blend them, no model here.
            device, precision = device_of(sources, index)
            if grid is None and valid.any():
                probs = blend_shared_tiles(
                    use, index, plan, block, window=block.read, valid=valid, sources=sources
                )
            elif grid is not None and model_valid.any():
                model_probs = blend_shared_tiles(
                    use, index, plan, block, window=model_cover, valid=model_valid, sources=sources
                )
                probs = to_scene_grid(
                    model_probs, model_valid, grid=grid, model_window=model_cover, window=block.read
                )
            t2 = time.perf_counter()
            timings["read"] += t1 - t0
            timings["blend"] += t2 - t1
        else:
            seg = segmenter_for(use, plan.inference)
            loaded = time.perf_counter()
            device, precision = seg.device, "index"  # spectral methods: no network
            if grid is None and valid.any():
                if isinstance(seg, SplitMergeSegmenter):  # its quadtree is anchored to the scene
                    origin = (block.read.row_off, block.read.col_off)
                    probs = seg.predict(image, valid, origin=origin)
                else:
                    probs = seg.predict(image, valid)
            elif grid is not None and model_valid.any():
                probs = to_scene_grid(
                    seg.predict(model_image, model_valid),
                    model_valid,
                    grid=grid,
                    model_window=model_cover,
                    window=block.read,
                )
            t2 = time.perf_counter()
            # A spectral index is computed in this thread: its time is the model's.
            timings["read"] += t1 - t0
            timings["model_load"] += loaded - t1
            timings["predict"] += t2 - loaded
        valid_core = valid[core]
        any_valid |= valid_core
        if probs is not None:
            if use.smooths:
                labels_read, probs = smooth_block(
                    probs,
                    image=image,
                    valid=valid,
                    class_names=use.card.class_names,
                    recipes=use.recipes,
                    pixel_size_m=plan.pixel_size_m,
                    image_scale=(np.asarray(use.card.mean), np.asarray(use.card.std)),
                    rgb=colour_bands(use.card.bands),
                    open_sides=block.open_sides,
                    origin_px=(block.read.row_off, block.read.col_off),
                )
            else:
                labels_read = argmax_classes(probs)
            labels = labels_read[core]
            if plan.uncertainty:
                entropies.append((normalised_entropy(probs[:, core[0], core[1]]), use.classes))
            for name, channel in use.outputs:
                masks[name] = ((labels == channel) & valid_core, probs[channel][core])
                if name in plan.centerlines:
                    lines[name] = block_centerlines(
                        (labels_read == channel) & valid,
                        core=core,
                        origin_px=(block.read.row_off, block.read.col_off),
                        scene_shape=(plan.scene.height, plan.scene.width),
                        pixel_size_m=plan.pixel_size_m,
                        prune_m=plan.prune_m,
                        simplify_px=CENTERLINE_SIMPLIFY_PX,
                        max_road_width_m=MAX_ROAD_WIDTH_M,
                    )
        timings["smooth"] += time.perf_counter() - t2
    t0 = time.perf_counter()
    # Lower-priority classes first so the first requested class wins a disputed pixel.
    for value, name in reversed(list(enumerate(plan.classes, start=1))):
        if name in masks:
            classes[masks[name][0]] = value
    classes[~any_valid] = NODATA_CLASS
    uncertainty = None
    if plan.uncertainty:
        uncertainty = _uncertainty(entropies, classes, plan.classes, valid=any_valid)
    probabilities = None
    if plan.probabilities:
        probabilities = np.full((len(plan.classes), *shape), 255, dtype=np.uint8)
        for i, name in enumerate(plan.classes):
            if name in masks:
                p = np.rint(np.nan_to_num(masks[name][1]) * 254.0).astype(np.uint8)
                probabilities[i] = np.where(any_valid, p, 255)
    interior: dict[str, ClassPolygons] = {}
    seams: dict[str, BlockPolygons] = {}
    for name in plan.classes:
        if name not in masks:
            continue
        mask, conf = masks[name]
        polys = polygonize_block(
            mask,
            confidence=conf,
            row_off=block.core.row_off,
            col_off=block.core.col_off,
            open_sides=block.open_sides,
        )
        inner = polys.select(~polys.seam)
        keys = np.column_stack([np.full(len(inner), block.index), inner.labels])
        interior[name] = finish_polygons(
            inner.geometries, inner.pixels, inner.conf_sum, keys.reshape(-1, 2), plan=plan
        )
        seams[name] = polys.select(polys.seam)
    timings["vectorize"] = time.perf_counter() - t0
    return BlockResult(
        index=block.index,
        classes=classes,
        interior=interior,
        seams=seams,
        timings=timings,
        device=device,
        precision=precision,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        peak_rss_mb=peak_rss_mb(),
        probabilities=probabilities,
        uncertainty=uncertainty,
        lines=lines,
    )


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """``-sum(p log p) / log(C)`` over the classes of ``(C, H, W)`` probabilities: 0 where
    one class has it all, 1 where all ``C`` are alike."""
    p = np.clip(probs.astype(np.float32, copy=False), 1e-12, 1.0)
    h = -(p * np.log(p)).sum(axis=0)
    return np.clip(h / np.log(max(2, probs.shape[0])), 0.0, 1.0)


def _uncertainty(
    entropies: list[tuple[np.ndarray, tuple[str, ...]]],
    classes: np.ndarray,
    names: tuple[str, ...],
    *,
    valid: np.ndarray,
) -> np.ndarray:
    """uint8 uncertainty of a block core (``value / 254``, 255 where nothing is known).

    A pixel given a class takes the entropy of the model that gave it; a background pixel
    takes the highest entropy of the models that could have claimed it (the least sure).
    """
    out = np.zeros(classes.shape, dtype=np.float32)
    for entropy, _ in entropies:
        np.maximum(out, entropy, out=out)
    for entropy, gives in entropies:
        for name in gives:
            claimed = classes == names.index(name) + 1
            out[claimed] = entropy[claimed]
    coded = np.rint(out * 254.0).astype(np.uint8)
    coded[~valid | (classes == NODATA_CLASS)] = 255
    return coded


def block_task(
    plan: RunPlan, block: Block, sources: Sequence[BlockTiles | TaskFailure] | None = None
) -> BlockResult | TaskFailure:
    """:func:`process_block` as a Dask task: a geoseg error comes back as a value.

    The error is deterministic (a corrupt block, no GPU, weights that do not fit), so it
    must not be retried, and its GDAL causes could not be unpickled on the client; see
    :class:`~geoseg.errors.TaskFailure`. Any other exception (a lost worker, memory) is
    raised as usual, for Dask to retry. A source block whose tiles failed passes its
    failure on.
    """
    tiles: list[BlockTiles] | None = None
    if sources is not None:
        tiles = []
        for source in sources:
            if isinstance(source, TaskFailure):
                return source
            tiles.append(source)
    try:
        return process_block(plan, block, sources=tiles)
    except GeosegError as err:
        return TaskFailure.of(err)


def tiles_task(
    plan: RunPlan, block: Block, owned: Mapping[int, Sequence[tuple[int, int]]]
) -> BlockTiles | TaskFailure:
    """:func:`~geoseg.run.tiles.predict_owned_tiles` of the tiles ``owned`` as a Dask task
    (errors as in :func:`block_task`)."""
    try:
        return predict_owned_tiles(plan, block, owned)
    except GeosegError as err:
        return TaskFailure.of(err)
