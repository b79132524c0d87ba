"""The Dask task: one block from pixels to polygons.

:func:`process_block` reads the block's window (core + halo), predicts with every model of
the run, smooths on the halo, crops the core and polygonizes it. It returns small arrays
and polygons: finished ones for the block's interior, raw pieces and border labels for
those that touch an inner block border (merged by the client).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.errors import GeosegError, TaskFailure
from geoseg.journal import decode_arrays, encode_arrays, polygons_from_arrays, polygons_to_arrays
from geoseg.models.predictor import InferenceOptions, Segmenter, cached_segmenter
from geoseg.models.spectral import SpectralSegmenter
from geoseg.plan import MAX_ROAD_WIDTH_M, NODATA_CLASS, ModelUse, RunPlan
from geoseg.postprocess import argmax_classes, colour_bands, smooth_block
from geoseg.tiling.grid import Block
from geoseg.tiling.io import read_window
from geoseg.vectorize.centerlines import BlockLines, block_centerlines
from geoseg.vectorize.geometry import geodesic_areas, pixels_to_crs, simplify_polygons
from geoseg.vectorize.polygons import BlockPolygons, polygonize_block

# Centrelines are traced on pixel centres; one pixel of Douglas-Peucker tolerance removes the
# staircase of oblique roads (up to ~8 % extra length) without moving a line visibly.
CENTERLINE_SIMPLIFY_PX = 1.0

__all__ = [
    "BlockResult",
    "ClassPolygons",
    "block_task",
    "decode_result",
    "encode_result",
    "finish_polygons",
    "peak_rss_mb",
    "process_block",
    "release_freed_memory",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassPolygons:
    """Finished polygons of one class from one block, in the scene CRS."""

    geometries: np.ndarray
    area_m2: np.ndarray
    confidence: np.ndarray
    pixels: np.ndarray
    keys: np.ndarray  # (n, 2): block index, component id -> deterministic order


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockResult:
    """What a worker sends back for one block: small arrays and polygons."""

    index: int
    classes: np.ndarray
    interior: Mapping[str, ClassPolygons]
    seams: Mapping[str, BlockPolygons]
    timings: Mapping[str, float]
    device: str
    precision: str = "fp32"
    worker: str = ""
    peak_rss_mb: float = 0.0
    probabilities: np.ndarray | None = None
    lines: Mapping[str, BlockLines] = field(default_factory=dict)


def finish_polygons(
    geoms_px: np.ndarray,
    pixels: np.ndarray,
    conf_sum: np.ndarray,
    keys: np.ndarray,
    *,
    plan: RunPlan,
) -> ClassPolygons:
    """Pixel-space polygons -> CRS polygons with area, confidence, min-area filter."""
    scene = plan.scene
    geoms = pixels_to_crs(geoms_px, scene.transform)
    area = geodesic_areas(geoms, crs=scene.crs)
    keep = area >= plan.min_area_m2
    if plan.simplify_px > 0 and keep.any():
        # area_m2 is the area of the geometry written; the minimum applies to it too.
        simple = simplify_polygons(geoms_px[keep], tolerance_px=plan.simplify_px)
        geoms = geoms.copy()
        geoms[keep] = pixels_to_crs(simple, scene.transform)
        area[keep] = geodesic_areas(geoms[keep], crs=scene.crs)
        keep &= area >= plan.min_area_m2
    return ClassPolygons(
        geometries=geoms[keep],
        area_m2=area[keep],
        confidence=(conf_sum / np.maximum(pixels, 1))[keep],
        pixels=pixels[keep],
        keys=keys[keep],
    )


def _segmenter(use: ModelUse, options: InferenceOptions) -> Segmenter:
    if use.card.architecture == "spectral":
        return SpectralSegmenter(use.card)
    return cached_segmenter(use.source, options=options)


def process_block(plan: RunPlan, block: Block) -> BlockResult:
    """Read, predict, smooth, crop and polygonize one block (runs on a Dask worker)."""
    timings = dict.fromkeys(
        ("read", "model_load", "predict", "model_wait", "blend", "smooth", "vectorize"), 0.0
    )
    core = block.core_in_read
    shape = (block.core.height, block.core.width)
    classes = np.zeros(shape, dtype=np.uint8)
    any_valid = np.zeros(shape, dtype=bool)
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    images: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    lines: dict[str, BlockLines] = {}
    device, precision = "cpu", "fp32"
    for use in plan.models:
        t0 = time.perf_counter()
        if use.bands not in images:
            images[use.bands] = read_window(plan.scene.path, block.read, bands=use.bands)
        image, valid = images[use.bands]
        t1 = time.perf_counter()
        seg = _segmenter(use, plan.inference)
        loaded = time.perf_counter()
        device = seg.device
        precision = getattr(seg, "precision", "index")  # spectral methods: no network
        probs = seg.predict(image, valid) if valid.any() else None
        t2 = time.perf_counter()
        # A network's forward passes are "predict", counted as the model's time: a pass on
        # one of a model's n slots occupies 1/n of it. This thread's own tile cutting,
        # normalising and blending is "blend"; the time it sat waiting for the model's
        # results (queued behind passes or computing) is "model_wait".
        if hasattr(seg, "take_model_seconds"):
            blocked, forward = seg.take_model_seconds()
            own = t2 - loaded - blocked
        else:  # a spectral index, computed in this thread
            blocked, forward, own = 0.0, t2 - loaded, 0.0
        timings["read"] += t1 - t0
        timings["model_load"] += loaded - t1
        timings["predict"] += forward / getattr(seg, "slots", 1)
        timings["model_wait"] += blocked
        timings["blend"] += own
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
        lines=lines,
    )


def block_task(plan: RunPlan, block: Block) -> BlockResult | TaskFailure:
    """:func:`process_block` as a Dask task: a geoseg error comes back as a value.

    The error is deterministic (a corrupt block, no GPU, weights that do not fit), so it
    must not be retried, and its GDAL causes could not be unpickled on the client; see
    :class:`~geoseg.errors.TaskFailure`. Any other exception (a lost worker, memory) is
    raised as usual, for Dask to retry.
    """
    try:
        return process_block(plan, block)
    except GeosegError as err:
        return TaskFailure.of(err)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory.
    ``ru_maxrss`` is not used there: the kernel carries it across ``execve``, so a process
    started by a big parent (a benchmark that has loaded torch) would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def release_freed_memory() -> bool:
    """Give the memory this process has freed back to the OS now (glibc's ``malloc_trim``);
    returns whether any was given back (always ``False`` without glibc).

    glibc keeps freed heap memory for reuse, and the client's large arrays come and go (a
    block's classes, joining an object of millions of vertices), so without this the freed
    memory of one block stays in the client's RSS. The client trims once per block: on the
    8192^2 benchmark scene that costs ~120 k page faults where a fixed 1 MiB
    ``M_MMAP_THRESHOLD`` (every large array mapped and unmapped) cost 1.1 M faults and
    1.8 s of the client's CPU time.
    """
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def encode_result(result: BlockResult) -> bytes:
    arrays: dict[str, np.ndarray] = {"classes": result.classes}
    if result.probabilities is not None:
        arrays["probabilities"] = result.probabilities
    for name, cp in result.interior.items():
        arrays[f"i.{name}.geometries"] = cp.geometries
        arrays[f"i.{name}.area_m2"] = cp.area_m2
        arrays[f"i.{name}.confidence"] = cp.confidence
        arrays[f"i.{name}.pixels"] = cp.pixels
        arrays[f"i.{name}.keys"] = cp.keys
    for name, bp in result.seams.items():
        arrays.update(polygons_to_arrays(f"s.{name}", bp))
    for name, bl in result.lines.items():
        arrays[f"l.{name}.geometries"] = bl.geometries
        arrays[f"l.{name}.seam_start"] = bl.seam_start
        arrays[f"l.{name}.seam_end"] = bl.seam_end
        arrays[f"l.{name}.simplify_px"] = np.array([bl.simplify_px])
    meta = {"index": result.index, "device": result.device, "precision": result.precision}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return encode_arrays(arrays)


def decode_result(data: bytes, classes: Sequence[str]) -> BlockResult:
    arrays = decode_arrays(data)
    meta = json.loads(arrays["meta"].tobytes())
    interior = {
        name: ClassPolygons(
            geometries=arrays[f"i.{name}.geometries"],
            area_m2=arrays[f"i.{name}.area_m2"],
            confidence=arrays[f"i.{name}.confidence"],
            pixels=arrays[f"i.{name}.pixels"],
            keys=arrays[f"i.{name}.keys"],
        )
        for name in classes
        if f"i.{name}.keys" in arrays
    }
    seams = {
        name: polygons_from_arrays(f"s.{name}", arrays)
        for name in classes
        if f"s.{name}.labels" in arrays
    }
    return BlockResult(
        index=int(meta["index"]),
        classes=arrays["classes"],
        interior=interior,
        seams=seams,
        timings={},
        device=meta["device"],
        precision=meta["precision"],
        probabilities=arrays.get("probabilities"),
        lines={
            name: BlockLines(
                geometries=arrays[f"l.{name}.geometries"],
                seam_start=arrays[f"l.{name}.seam_start"],
                seam_end=arrays[f"l.{name}.seam_end"],
                simplify_px=float(arrays[f"l.{name}.simplify_px"][0]),
            )
            for name in classes
            if f"l.{name}.seam_start" in arrays
        },
    )
