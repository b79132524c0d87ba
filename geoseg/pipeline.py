"""The data flow of ``geoseg run`` (see DESIGN.md).

:func:`plan_run` validates everything that can be checked before any pixel is read (scene,
models, classes, bands, outputs) and plans the blocks. :func:`process_block` is the Dask
task: it reads one block, predicts, smooths, crops the core and polygonizes it.
:func:`run_scene` drives the tasks, writes the rasters as blocks complete, merges polygons
cut by block borders and writes the GeoPackage, all under temporary names renamed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import __version__
from geoseg.config import RunConfig
from geoseg.errors import ClassNotAvailableError, ConfigError, OutputExistsError
from geoseg.journal import (
    Journal,
    decode_arrays,
    encode_arrays,
    fingerprint,
    polygons_from_arrays,
    polygons_to_arrays,
)
from geoseg.models.bands import band_roles, resolve_bands
from geoseg.models.card import ModelCard, card_to_json
from geoseg.models.predictor import InferenceOptions, Segmenter, cached_segmenter
from geoseg.models.spectral import (
    SpectralSegmenter,
    index_histogram,
    is_spectral,
    merge_histograms,
    normalized_difference,
    otsu_threshold,
    spectral_card,
)
from geoseg.tiling.grid import Block, TilingSpec, plan_blocks
from geoseg.tiling.io import RasterWriter, SceneInfo, read_scene_info, read_window
from geoseg.vectorize.geometry import geodesic_areas, pixel_size_m, pixels_to_crs
from geoseg.vectorize.gpkg import GeoPackageWriter
from geoseg.vectorize.merge import SeamMerger
from geoseg.vectorize.polygons import BlockPolygons, polygonize_block

__all__ = [
    "NODATA_CLASS",
    "BlockResult",
    "ModelUse",
    "RunPlan",
    "RunSummary",
    "output_paths",
    "plan_run",
    "process_block",
    "run_scene",
]

log = logging.getLogger(__name__)

NODATA_CLASS = 255
Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelUse:
    """One model in a run: where it comes from, which scene bands feed it, what it gives.

    ``outputs`` maps each requested class this model provides to its output channel.
    """

    source: str
    card: ModelCard
    bands: tuple[int, ...]
    outputs: tuple[tuple[str, int], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class RunPlan:
    """A validated run: everything a worker needs, and nothing that cannot be pickled."""

    scene: SceneInfo
    models: tuple[ModelUse, ...]
    classes: tuple[str, ...]
    colors: tuple[str, ...]
    spec: TilingSpec
    blocks: tuple[Block, ...]
    inference: InferenceOptions
    min_area_m2: float = 0.0
    simplify_px: float = 0.0

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (max(b.row for b in self.blocks) + 1, max(b.col for b in self.blocks) + 1)


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


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSummary:
    """Outcome of a run: outputs, counts, timings and resources used."""

    gpkg: Path
    raster: Path | None
    features: Mapping[str, int]
    blocks: int
    pixels: int
    seconds: float
    timings: Mapping[str, float] = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    resumed_blocks: int = 0
    client_peak_rss_mb: float = 0.0
    worker_peak_rss_mb: Mapping[str, float] = field(default_factory=dict)

    @property
    def mpx_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable report (``geoseg run --report``)."""
        return {
            "geoseg_version": __version__,
            "outputs": {
                "gpkg": str(self.gpkg),
                "raster": str(self.raster) if self.raster else None,
            },
            "features": dict(self.features),
            "blocks": self.blocks,
            "resumed_blocks": self.resumed_blocks,
            "pixels": self.pixels,
            "wall_seconds": round(self.seconds, 3),
            "throughput_mpx_per_s": round(self.mpx_per_s, 4),
            # Seconds summed over blocks (worker stages overlap across threads and workers).
            "stage_seconds": {k: round(v, 3) for k, v in self.timings.items()},
            "devices": list(self.devices),
            "precisions": list(self.precisions),
            "peak_rss_mb": {
                "client": round(self.client_peak_rss_mb, 1),
                "workers": {k: round(v, 1) for k, v in self.worker_peak_rss_mb.items()},
                "total": round(self.client_peak_rss_mb + sum(self.worker_peak_rss_mb.values()), 1),
            },
        }


def output_paths(output: str | os.PathLike[str], *, raster: bool) -> tuple[Path, Path | None]:
    """The GeoPackage and (optionally) class raster paths for ``-o output``."""
    gpkg = Path(output)
    if gpkg.suffix.lower() != ".gpkg":
        raise ConfigError(f"output {str(gpkg)!r} must end in .gpkg, e.g. {gpkg.stem}.gpkg")
    return gpkg, (gpkg.with_name(f"{gpkg.stem}_classes.tif") if raster else None)


def _check_outputs(paths: Sequence[Path | None], *, overwrite: bool) -> None:
    for p in paths:
        if p is None:
            continue
        if not p.parent.is_dir():
            raise ConfigError(f"output folder {str(p.parent)!r} does not exist")
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{str(p)!r} exists; pass --overwrite to replace it")


def _resolve_models(config: RunConfig) -> list[tuple[str, ModelCard]]:
    from geoseg.models.card import read_card

    if not config.models:
        raise ConfigError("no model given; pass --model FILE or ndwi (see `geoseg models list`)")
    out = []
    for src in config.models:
        if is_spectral(src):
            out.append((src, spectral_card(src)))
        else:
            out.append((str(Path(src).resolve()), read_card(src)))
    return out


def plan_run(scene_path: str | os.PathLike[str], config: RunConfig) -> RunPlan:
    """Validate a run and plan its blocks, reading only headers.

    Raises
    ------
    SceneReadError, ModelCardError, BandError, ClassNotAvailableError, ConfigError
        With one line saying what is wrong and how to fix it.
    """
    scene = read_scene_info(scene_path)
    models = _resolve_models(config)
    roles = band_roles(scene.descriptions, sensor=config.sensor)
    remaining = list(config.classes)
    uses: list[ModelUse] = []
    for source, card in models:
        outputs = tuple((c, card.class_index(c)) for c in remaining if c in card.class_names[1:])
        if not outputs:
            continue
        remaining = [c for c in remaining if c not in dict(outputs)]
        bands = resolve_bands(
            card.bands,
            count=scene.count,
            roles=roles,
            explicit=config.bands,
            model_name=f"model {card.name!r}",
        )
        uses.append(ModelUse(source=source, card=card, bands=bands, outputs=outputs))
    if remaining:
        offered = sorted({c for _, card in models for c in card.class_names[1:]})
        raise ClassNotAvailableError(
            f"class {remaining[0]!r} is not produced by the selected model(s); "
            f"available: {', '.join(offered)}"
        )
    colors = {c: u.card.classes[idx].color for u in uses for c, idx in u.outputs}
    tile = config.inference.tile or max(u.card.tile_size for u in uses)
    overlap = (
        config.inference.overlap
        if config.inference.overlap is not None
        else max(u.card.overlap for u in uses)
    )
    spec = TilingSpec(tile=tile, overlap=overlap, block=max(config.block, tile))
    blocks = tuple(plan_blocks(scene.height, scene.width, spec=spec))
    dx, dy = pixel_size_m(scene.transform, crs=scene.crs, row=scene.height / 2, col=scene.width / 2)
    return RunPlan(
        scene=scene,
        models=tuple(uses),
        classes=config.classes,
        colors=tuple(colors[c] for c in config.classes),
        spec=spec,
        blocks=blocks,
        inference=config.inference,
        min_area_m2=config.min_area_m2,
        simplify_px=config.simplify_m / ((dx + dy) / 2) if config.simplify_m else 0.0,
    )


# --------------------------------------------------------------------------- worker side


def _finish_polygons(
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
        import shapely

        simple = shapely.simplify(geoms_px[keep], plan.simplify_px, preserve_topology=True)
        geoms = geoms.copy()
        geoms[keep] = pixels_to_crs(simple, scene.transform)
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


def block_index_histogram(path: str, block: Block, bands: tuple[int, int]) -> np.ndarray:
    """Histogram of a normalised-difference index over one block core (a Dask task)."""
    image, valid = read_window(path, block.core, bands=bands)
    return index_histogram(normalized_difference(image[0], image[1]), valid)


def _needs_threshold(use: ModelUse) -> bool:
    return use.card.architecture == "spectral" and "threshold" not in use.card.params


def compute_thresholds(plan: RunPlan, *, client: Any = None) -> RunPlan:
    """Fill in scene-wide Otsu thresholds of spectral methods (one streamed pass).

    Each block core contributes a fixed-size histogram, so memory does not grow with the
    scene and every block later uses the same threshold.
    """
    if not any(_needs_threshold(u) for u in plan.models):
        return plan
    uses = []
    for use in plan.models:
        if not _needs_threshold(use):
            uses.append(use)
            continue
        bands = (use.bands[0], use.bands[1])
        if client is None:
            parts: Iterator[np.ndarray] = (
                block_index_histogram(plan.scene.path, b, bands) for b in plan.blocks
            )
            hist = merge_histograms(parts)
        else:
            futures = client.map(
                block_index_histogram,
                [plan.scene.path] * len(plan.blocks),
                plan.blocks,
                [bands] * len(plan.blocks),
                pure=False,
            )
            hist = client.submit(merge_histograms, futures).result()
        threshold = otsu_threshold(hist)
        log.info("%s: Otsu threshold %.4f over the scene", use.card.name, threshold)
        uses.append(replace(use, card=spectral_card(use.source, threshold=threshold)))
    return replace(plan, models=tuple(uses))


def process_block(plan: RunPlan, block: Block) -> BlockResult:
    """Read, predict, smooth, crop and polygonize one block (runs on a Dask worker)."""
    timings = dict.fromkeys(("read", "predict", "smooth", "vectorize"), 0.0)
    core = block.core_in_read
    shape = (block.core.height, block.core.width)
    classes = np.zeros(shape, dtype=np.uint8)
    any_valid = np.zeros(shape, dtype=bool)
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    images: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    device, precision = "cpu", "fp32"
    for use in plan.models:
        t0 = time.perf_counter()
        if use.bands not in images:
            images[use.bands] = read_window(plan.scene.path, block.read, bands=use.bands)
        image, valid = images[use.bands]
        t1 = time.perf_counter()
        seg = _segmenter(use, plan.inference)
        device = seg.device
        precision = getattr(seg, "precision", "n/a")
        probs = seg.predict(image, valid) if valid.any() else None
        t2 = time.perf_counter()
        valid_core = valid[core]
        any_valid |= valid_core
        if probs is not None:
            labels = np.argmax(probs[(slice(None), *core)], axis=0)
            for name, channel in use.outputs:
                masks[name] = ((labels == channel) & valid_core, probs[channel][core])
        t3 = time.perf_counter()
        timings["read"] += t1 - t0
        timings["predict"] += t2 - t1
        timings["smooth"] += t3 - t2
    t0 = time.perf_counter()
    # Lower-priority classes first so the first requested class wins a disputed pixel.
    for value, name in reversed(list(enumerate(plan.classes, start=1))):
        if name in masks:
            classes[masks[name][0]] = value
    classes[~any_valid] = NODATA_CLASS
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
        interior[name] = _finish_polygons(
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
        peak_rss_mb=_peak_rss_mb(),
    )


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux/macOS)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------- journal


def _encode_result(result: BlockResult) -> bytes:
    arrays: dict[str, np.ndarray] = {"classes": result.classes}
    for name, cp in result.interior.items():
        arrays[f"i.{name}.geometries"] = cp.geometries
        arrays[f"i.{name}.area_m2"] = cp.area_m2
        arrays[f"i.{name}.confidence"] = cp.confidence
        arrays[f"i.{name}.pixels"] = cp.pixels
        arrays[f"i.{name}.keys"] = cp.keys
    for name, bp in result.seams.items():
        arrays.update(polygons_to_arrays(f"s.{name}", bp))
    meta = {"index": result.index, "device": result.device, "precision": result.precision}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return encode_arrays(arrays)


def _decode_result(data: bytes, classes: Sequence[str]) -> BlockResult:
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
    )


def _plan_fingerprint(plan: RunPlan, config: RunConfig) -> str:
    """What makes two runs produce the same output: inputs, models, options."""
    scene = Path(plan.scene.path)
    stat = scene.stat() if scene.exists() else None
    models = []
    for use in plan.models:
        p = Path(use.source)
        mstat = p.stat() if p.exists() else None
        models.append(
            [
                use.source,
                card_to_json(use.card),
                use.bands,
                use.outputs,
                mstat.st_size if mstat else None,
                mstat.st_mtime_ns if mstat else None,
            ]
        )
    return fingerprint(
        {
            "version": __version__,
            "scene": [
                plan.scene.path,
                stat.st_size if stat else None,
                stat.st_mtime_ns if stat else None,
            ],
            "models": models,
            "classes": plan.classes,
            "spec": [plan.spec.tile, plan.spec.overlap, plan.spec.block, plan.spec.halo_px],
            "inference": [plan.inference.precision, plan.inference.tile, plan.inference.overlap],
            "min_area_m2": plan.min_area_m2,
            "simplify_px": plan.simplify_px,
            "config": [config.smooth, config.smooth_params, config.raster],
        }
    )


# --------------------------------------------------------------------------- client side


def _class_raster_writer(plan: RunPlan, path: Path) -> RasterWriter:
    scene = plan.scene
    tiled = scene.width >= 256 and scene.height >= 256
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": 1,
        "dtype": "uint8",
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": NODATA_CLASS,
        "compress": "deflate",
        "tiled": tiled,
        "BIGTIFF": "IF_SAFER",
    }
    if tiled:
        profile.update(blockxsize=256, blockysize=256)
    colormap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
    for value, color in enumerate(plan.colors, start=1):
        c = color.lstrip("#")
        colormap[value] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255)
    colormap[NODATA_CLASS] = (0, 0, 0, 0)
    tags = {f"CLASS_{v}": name for v, name in enumerate(plan.classes, start=1)}
    tags.update(CLASS_0="background", GEOSEG_VERSION=__version__)
    return RasterWriter(path, profile=profile, colormap=colormap, tags=tags)


def _iter_results(
    plan: RunPlan,
    blocks: Sequence[Block],
    *,
    client: Any,
    max_in_flight: int,
    resources: Mapping[str, float] | None,
) -> Iterator[BlockResult]:
    """Yield block results as they complete, never more than ``max_in_flight`` pending."""
    if client is None:
        for block in blocks:
            yield process_block(plan, block)
        return
    if not blocks:
        return
    from distributed import as_completed

    plan_future = client.scatter(plan, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:12]
    pending = iter(blocks)
    submitted: dict[Any, Block] = {}

    def submit(block: Block) -> Any:
        fut = client.submit(
            process_block,
            plan_future,
            block,
            key=f"geoseg-block-{run_id}-{block.index}",
            pure=False,
            retries=2,
            resources=dict(resources) if resources else None,
        )
        submitted[fut] = block
        return fut

    first = [submit(b) for _, b in zip(range(max_in_flight), pending, strict=False)]
    queue = as_completed(first)
    try:
        for fut in queue:
            result = fut.result()
            del submitted[fut]
            fut.release()
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(submit(nxt))
            yield result
    finally:
        for fut in list(submitted):
            fut.cancel()


def run_scene(
    scene_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: RunConfig,
    *,
    client: Any = None,
    progress: Progress | None = None,
    max_in_flight: int | None = None,
    resources: Mapping[str, float] | None = None,
    resume: bool = False,
) -> RunSummary:
    """Segment one scene into a GeoPackage (and class raster).

    Parameters
    ----------
    scene_path, output
        Input GeoTIFF (or GDAL path) and output ``.gpkg``.
    config
        What to extract and how.
    client
        A ``distributed.Client``; ``None`` runs every block in this process.
    progress
        Called with ``(blocks_done, blocks_total)`` after each block.
    max_in_flight
        Blocks submitted but not yet collected (memory bound); default twice the
        cluster's threads.
    resources
        Dask resources each block task requires (``{"GPU": 1}`` on GPU clusters).
    resume
        Reuse the blocks an interrupted run of the same plan completed (its journal).
    """
    start = time.perf_counter()
    gpkg_path, raster_path = output_paths(output, raster=config.raster)
    _check_outputs([gpkg_path, raster_path], overwrite=config.overwrite)
    plan = compute_thresholds(plan_run(scene_path, config), client=client)
    if max_in_flight is None:
        threads = sum(client.nthreads().values()) if client is not None else 1
        max_in_flight = max(2, 2 * threads)
    total = len(plan.blocks)
    if progress:
        progress(0, total)
    journal = Journal(
        gpkg_path.with_name(f".{gpkg_path.name}.journal"),
        fingerprint=_plan_fingerprint(plan, config),
        resume=resume,
    )
    gpkg = GeoPackageWriter(gpkg_path, crs=plan.scene.crs)
    raster = _class_raster_writer(plan, raster_path) if raster_path else None
    merger = SeamMerger()
    interior: dict[str, list[ClassPolygons]] = {c: [] for c in plan.classes}
    timings: dict[str, float] = {}
    devices: set[str] = set()
    precisions: set[str] = set()
    worker_rss: dict[str, float] = {}

    def collect(result: BlockResult) -> None:
        block = plan.blocks[result.index]
        t0 = time.perf_counter()
        if raster is not None:
            raster.write(result.classes, block.core)
        for name, polys in result.seams.items():
            merger.add(name, block=block.index, row=block.row, col=block.col, polygons=polys)
        for name, finished in result.interior.items():
            interior[name].append(finished)
        for k, v in result.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        devices.add(result.device)
        precisions.add(result.precision)
        if result.worker:
            worker_rss[result.worker] = max(worker_rss.get(result.worker, 0.0), result.peak_rss_mb)

    try:
        resumed = 0
        for resumed, (_, payload) in enumerate(journal.load(), start=1):
            collect(_decode_result(payload, plan.classes))
            if progress:
                progress(resumed, total)
        done_blocks = journal.done()
        todo = [b for b in plan.blocks if b.index not in done_blocks]
        results = _iter_results(
            plan, todo, client=client, max_in_flight=max_in_flight, resources=resources
        )
        for done, result in enumerate(results, start=resumed + 1):
            collect(result)
            t0 = time.perf_counter()
            journal.record(result.index, _encode_result(result))
            timings["journal"] = timings.get("journal", 0.0) + time.perf_counter() - t0
            if progress:
                progress(done, total)
        t0 = time.perf_counter()
        counts = _write_layers(plan, gpkg, merger, interior)
        if raster is not None:
            raster.commit()
        gpkg.commit()
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
    except BaseException:
        gpkg.abort()
        if raster is not None:
            raster.abort()
        journal.close()
        raise
    journal.finish()
    return RunSummary(
        gpkg=gpkg_path,
        raster=raster_path,
        features=counts,
        blocks=total,
        pixels=plan.scene.width * plan.scene.height,
        seconds=time.perf_counter() - start,
        timings=timings,
        devices=tuple(sorted(devices)),
        precisions=tuple(sorted(precisions)),
        resumed_blocks=resumed,
        client_peak_rss_mb=_peak_rss_mb(),
        worker_peak_rss_mb=worker_rss,
    )


def _write_layers(
    plan: RunPlan,
    gpkg: GeoPackageWriter,
    merger: SeamMerger,
    interior: Mapping[str, list[ClassPolygons]],
) -> dict[str, int]:
    counts: dict[str, int] = {}
    scene_name = Path(plan.scene.path).name
    for name in plan.classes:
        merged = merger.finish(name)
        keys = np.array(merged.keys, dtype=np.int64).reshape(-1, 2)
        seam = _finish_polygons(merged.geometries, merged.pixels, merged.conf_sum, keys, plan=plan)
        parts = [*interior[name], seam]
        keys = np.concatenate([p.keys for p in parts]).reshape(-1, 2)
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        n = len(order)
        geoms = np.concatenate([p.geometries for p in parts])[order]
        gpkg.write_layer(
            name,
            geoms,
            {
                "class": np.full(n, name, dtype=object),
                "area_m2": np.concatenate([p.area_m2 for p in parts])[order],
                "confidence": np.concatenate([p.confidence for p in parts])[order].astype(
                    np.float64
                ),
                "pixels": np.concatenate([p.pixels for p in parts])[order],
                "block_id": keys[order, 0],
                "scene": np.full(n, scene_name, dtype=object),
            },
        )
        counts[name] = n
    return counts
