"""The data flow of ``geoseg run`` (see DESIGN.md).

:func:`run_scene` plans the run (:mod:`geoseg.run.plan`), submits one Dask task per block
(:func:`geoseg.run.task.process_block`) with bounded blocks in flight, each after the tasks
that predict the model tiles it blends, once per tile (:mod:`geoseg.run.tiles`), hands
results to the writers as they complete (:mod:`geoseg.run.outputs`), journals them for ``--resume``
(:mod:`geoseg.run.journal`), and finally merges border polygons and commits every file.

A failed run leaves no output file. Its journal (hidden, ``.<name>.gpkg.journal``) is kept
only when ``--resume`` could use it: some blocks (or the whole-scene statistics of the
spectral-index methods) are journalled and the run was interrupted (Ctrl-C, SIGTERM, a lost
worker or cluster) or could not write its outputs (a full disk: reported as "no space left
on <folder>"). A geoseg error on the input or the model (a corrupt block, no GPU, weights
that do not fit) deletes it: the same blocks would fail again, and fixing the scene or the
model changes the plan's fingerprint, which makes the journal useless anyway.

One run at a time writes an output (:func:`~geoseg.run.lock.output_lock`), no output may be
one of the run's inputs, and every temporary is a new file of this run
(:mod:`geoseg.tiling.atomic`). Blocks go to the workers with the plan itself (a few KB
without its block list), not with a reference to data scattered on a worker: a worker that
dies (killed, out of memory) takes nothing with it that its blocks' retries would need (the
tiles a block shares with its neighbours are results of tasks Dask reruns when lost).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import pickle
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg import __version__
from geoseg.config import RunConfig
from geoseg.errors import GeosegError, OutputWriteError, TaskFailure, WorkerLostError
from geoseg.models.card import card_to_json
from geoseg.models.spectral import is_spectral, spectral_card
from geoseg.run.journal import Journal, decode_result, encode_result, fingerprint
from geoseg.run.lock import output_lock
from geoseg.run.memory import peak_rss_mb, release_freed_memory
from geoseg.run.outputs import OutputPaths, RunOutputs, check_outputs, output_paths
from geoseg.run.plan import NODATA_CLASS, RunPlan, plan_run
from geoseg.run.provenance import FileDigest, file_sha256, run_provenance
from geoseg.run.results import BlockResult
from geoseg.run.spectral_stats import prepare_spectral
from geoseg.run.task import block_task, process_block, tiles_task
from geoseg.run.tiles import (
    BlockTiles,
    Origin,
    owned_tiles,
    predict_owned_tiles,
    select_tiles,
    shares_tiles,
    tile_owners,
    tile_sources,
)
from geoseg.tiling.grid import Block

if TYPE_CHECKING:
    from geoseg.scheduler import Execution

__all__ = [
    "NODATA_CLASS",
    "RunSummary",
    "plan_run",
    "process_block",
    "run_scene",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


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
    probabilities: Path | None = None
    uncertainty: Path | None = None
    line_layers: tuple[str, ...] = ()  # layers of ``features`` holding lines, not polygons
    # What ``worker_peak_rss_mb`` covers: "run" (each worker's high-water mark was reset when
    # the run started, or the workers started with it) or "worker lifetime" (a worker where
    # that reset was not possible: not Linux, or a restricted /proc).
    worker_peak_scope: str = "run"

    @property
    def mpx_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_busy(self) -> float | None:
        """Share of the wall time the model spent in forward passes, per model process.

        The "predict" seconds of every block (model time: a pass on one of a model's n
        concurrent CPU slots counts 1/n) divided by the run's wall time and by the number of
        processes that returned blocks (each holds its own model): near 1 when reading,
        blending, vectorizing and writing never keep the model (GPU or CPU) waiting.
        ``None`` when no block was computed in this run (all resumed).
        """
        forward = self.timings.get("predict", 0.0)
        if forward <= 0 or self.seconds <= 0:
            return None
        return forward / self.seconds / max(1, len(self.worker_peak_rss_mb))

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable report (``geoseg run --report``)."""
        return {
            "geoseg_version": __version__,
            "outputs": {
                "gpkg": str(self.gpkg),
                "raster": str(self.raster) if self.raster else None,
                "probabilities": str(self.probabilities) if self.probabilities else None,
                "uncertainty": str(self.uncertainty) if self.uncertainty else None,
            },
            "features": dict(self.features),
            "blocks": self.blocks,
            "resumed_blocks": self.resumed_blocks,
            "pixels": self.pixels,
            "wall_seconds": round(self.seconds, 3),
            "throughput_mpx_per_s": round(self.mpx_per_s, 4),
            "model_busy": None if self.model_busy is None else round(self.model_busy, 3),
            # Seconds summed over blocks (worker stages overlap across threads and workers).
            "stage_seconds": {k: round(v, 3) for k, v in self.timings.items()},
            "devices": list(self.devices),
            "precisions": list(self.precisions),
            "peak_rss_mb": {
                "client": round(self.client_peak_rss_mb, 1),
                "workers": {k: round(v, 1) for k, v in self.worker_peak_rss_mb.items()},
                "total": round(self.client_peak_rss_mb + sum(self.worker_peak_rss_mb.values()), 1),
                "workers_scope": self.worker_peak_scope,
            },
        }


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
            "spec": [plan.tiling.tile, plan.tiling.overlap, plan.tiling.block, plan.tiling.halo_px],
            # Blocks of a run whose tiles lay per block (before the scene's tile grid) differ.
            "tiles": "scene-grid",
            "inference": [plan.inference.precision, plan.inference.tile, plan.inference.overlap],
            "min_area_m2": plan.min_area_m2,
            "simplify_px": plan.simplify_px,
            "config": [
                config.smooth,
                config.smooth_params,
                config.raster,
                config.probabilities,
                config.uncertainty,
                config.cog,
                config.dst_crs,
                plan.centerlines,
                plan.prune_m,
            ],
        }
    )


def _packed_plan(plan: RunPlan) -> bytes:
    """The plan as a worker needs it: without the block list (each task gets its block)."""
    return pickle.dumps(replace(plan, blocks=()), protocol=pickle.HIGHEST_PROTOCOL)


def packed_block_task(
    packed_plan: bytes, block: Block, sources: Sequence[BlockTiles | TaskFailure] | None = None
) -> BlockResult | TaskFailure:
    """:func:`~geoseg.run.task.block_task` given the plan as :func:`_packed_plan` bytes.

    Bytes made by this run's client, so unpickling them runs nothing foreign. Each task
    carries them (a few KB): a task retried after its worker died needs nothing that died
    with it.
    """
    return block_task(pickle.loads(packed_plan), block, sources)


def packed_tiles_task(
    packed_plan: bytes, block: Block, owned: Mapping[int, Sequence[Origin]]
) -> BlockTiles | TaskFailure:
    """:func:`~geoseg.run.task.tiles_task` given the plan as :func:`_packed_plan` bytes."""
    return tiles_task(pickle.loads(packed_plan), block, owned)


def _tile_sources(
    plan: RunPlan, blocks: Sequence[Block]
) -> tuple[dict[int, dict[int, dict[int, list[Origin]]]], dict[int, dict[int, list[Origin]]]]:
    """Per block to do, the tiles it blends by owner block and model
    (:func:`~geoseg.run.tiles.tile_sources`), and per owner block, the tiles it owns
    (:func:`~geoseg.run.tiles.owned_tiles`); both empty without a network."""
    if not shares_tiles(plan):
        return {}, {}
    owners = tile_owners(plan)
    return {b.index: tile_sources(plan, b, owners) for b in blocks}, owned_tiles(owners)


def _iter_results(
    plan: RunPlan,
    blocks: Sequence[Block],
    *,
    client: Any,
    max_in_flight: int,
    resources: Mapping[str, float] | None,
) -> Generator[BlockResult, None, None]:
    """Yield block results as they complete, never more than ``max_in_flight`` pending.

    With networks, each tile is predicted once, by the block that owns it (a first task per
    block, :func:`~geoseg.run.tiles.predict_owned_tiles`), submitted when the first block
    that blends its tiles is. Its result is at once cut into one selection per block that
    blends those tiles (:func:`~geoseg.run.tiles.select_tiles`: the same arrays, no copy on
    the worker) and released, so a tile stays in memory only while a block still to be done
    holds it: once a block is done, the tiles only it needed go. Blocks go in raster order,
    so what is held is the tiles along the lower edge of about one row of blocks (memory
    grows with the scene's width, not its height). A lost worker's tiles are recomputed by
    Dask from their tasks.
    """
    sources, owned = _tile_sources(plan, blocks)
    by_index = {b.index: b for b in plan.blocks}
    # Owner -> the blocks to do that blend its tiles.
    dependants: dict[int, list[int]] = {}
    for index, owners in sources.items():
        for owner in owners:
            dependants.setdefault(owner, []).append(index)

    if client is None:
        # (owner, block) -> the owner's tiles that block blends, kept until it is done.
        kept: dict[tuple[int, int], BlockTiles] = {}
        for block in blocks:
            if block.index not in sources:
                yield process_block(plan, block)
                continue
            for owner in sources[block.index]:
                if (owner, block.index) not in kept:
                    tiles = predict_owned_tiles(plan, by_index[owner], owned[owner])
                    for i in dependants[owner]:
                        kept[(owner, i)] = select_tiles(tiles, sources[i][owner])
            own = [kept.pop((owner, block.index)) for owner in sources[block.index]]
            yield process_block(plan, block, sources=own)
        return
    if not blocks:
        return
    from distributed import KilledWorker, as_completed

    packed = _packed_plan(plan)
    run_id = uuid.uuid4().hex[:12]
    pending = iter(blocks)
    submitted: dict[Any, Block] = {}
    shares: dict[tuple[int, int], Any] = {}
    res = dict(resources) if resources else None

    def predict(owner: int) -> None:
        """Submit the owner's tiles and, beside them, the selection of each block that
        blends them; the owner's result goes once those are taken."""
        tiles = client.submit(
            packed_tiles_task,
            packed,
            by_index[owner],
            owned[owner],
            key=f"geoseg-tiles-{run_id}-{owner}",
            pure=False,
            retries=2,
            resources=res,
        )
        for i in dependants[owner]:
            shares[(owner, i)] = client.submit(
                select_tiles,
                tiles,
                sources[i][owner],
                key=f"geoseg-share-{run_id}-{owner}-{i}",
                pure=False,
                retries=2,
            )
        tiles.release()

    def shared(block: Block) -> list[Any] | None:
        """Futures of the tiles ``block`` blends, one per owner (held by the block's task
        alone, and recomputed from the owner's task if its worker is lost)."""
        owners = sources.get(block.index)
        if owners is None:
            return None
        for owner in owners:
            if (owner, block.index) not in shares:
                predict(owner)
        return [shares.pop((owner, block.index)) for owner in owners]

    def submit(block: Block) -> Any:
        # Dask retries a task that raised or whose worker died; a geoseg error comes back as
        # a TaskFailure value instead: deterministic, so never retried.
        fut = client.submit(
            packed_block_task,
            packed,
            block,
            shared(block),
            key=f"geoseg-block-{run_id}-{block.index}",
            pure=False,
            retries=2,
            resources=res,
        )
        submitted[fut] = block
        return fut

    first = [submit(b) for _, b in zip(range(max_in_flight), pending, strict=False)]
    queue = as_completed(first)
    try:
        for fut in queue:
            try:
                result = fut.result()
            except KilledWorker as err:
                raise WorkerLostError(
                    f"block {submitted[fut].index} was lost with the worker running it "
                    "several times (killed, or out of memory?): try a smaller --block, "
                    "fewer --threads, or a machine with more memory"
                ) from err
            block = submitted.pop(fut)
            fut.release()
            if isinstance(result, TaskFailure):
                raise result.error()
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(submit(nxt))
            yield result
    finally:
        for fut in [*submitted, *shares.values()]:
            fut.cancel()


def _close_journal(journal: Journal, err: BaseException, *, blocks: int) -> None:
    """After a failure keep the journal only when ``--resume`` could use it (module docs)."""
    rerun_helps = (OutputWriteError, WorkerLostError)
    useful = blocks > 0 or journal.has_meta(_SPECTRAL_KEY)
    if useful and (not isinstance(err, GeosegError) or isinstance(err, rerun_helps)):
        journal.close()
    else:
        journal.finish()


_SPECTRAL_KEY = "spectral_stats"


def _spectral_plan(plan: RunPlan, *, client: Any, journal: Journal) -> RunPlan:
    """:func:`prepare_spectral`, or the statistics a resumed run's journal already holds.

    The whole-scene pass of the spectral methods (Otsu threshold, band mean and std) reads
    every block; it is journalled as soon as it is done, so ``--resume`` does not redo it.
    """
    if not any(is_spectral(u.source) for u in plan.models):
        return plan
    saved = journal.get_meta(_SPECTRAL_KEY)
    if saved is not None:
        stats = json.loads(saved)
        if all(u.source in stats for u in plan.models if is_spectral(u.source)):
            uses = []
            for use in plan.models:
                if is_spectral(use.source):
                    s = stats[use.source]
                    card = spectral_card(use.source, threshold=float(s["threshold"]))
                    card = replace(card, mean=tuple(s["mean"]), std=tuple(s["std"]))
                    use = replace(use, card=card)
                uses.append(use)
            log.info("scene statistics of the spectral methods reused from the journal")
            return replace(plan, models=tuple(uses))
    plan = prepare_spectral(plan, client=client)
    journal.set_meta(
        _SPECTRAL_KEY,
        json.dumps(
            {
                u.source: {
                    "threshold": u.card.params.get("threshold"),
                    "mean": list(u.card.mean),
                    "std": list(u.card.std),
                }
                for u in plan.models
                if is_spectral(u.source)
            }
        ),
    )
    return plan


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux ``clear_refs``); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _reset_worker_peaks(client: Any) -> str:
    """Start the workers' peak memory afresh for this run; the scope of what is reported.

    An attached cluster's workers have run other jobs: their lifetime peak says nothing
    about this run. Resetting the kernel's high-water mark of each worker makes the peaks
    the blocks report this run's (if other jobs share the workers meanwhile, theirs too).
    """
    try:
        done = client.run(_reset_peak_rss, on_error="return")
    except Exception:  # an old or odd cluster: report what the workers say
        return "worker lifetime"
    return "run" if all(v is True for v in done.values()) else "worker lifetime"


_NO_SPACE = ("no space left", "database or disk is full", "disk quota exceeded")


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (or an error it was raised from) says the disk is full.

    GDAL, pyogrio and SQLite word a full disk in their own ways (a GeoPackage that could not
    be created even shows up later as "no such table"), so a failed write on a folder with
    less than 1 MiB free counts too.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    writing = False
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cur).lower() for text in _NO_SPACE):
            return True
        writing |= (
            isinstance(cur, OSError | sqlite3.Error)
            or "rasterio" in type(cur).__module__
            or "pyogrio" in type(cur).__module__
        )
        cur = cur.__cause__ or cur.__context__
    if not writing:
        return False
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def _inputs(scene: str | os.PathLike[str], models: Sequence[str]) -> list[tuple[str, str]]:
    return [("scene", os.fspath(scene))] + [("model", m) for m in models if not is_spectral(m)]


def run_scene(
    scene_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: RunConfig,
    *,
    client: Any = None,
    execution: Execution | None = None,
    progress: Progress | None = None,
    max_in_flight: int | None = None,
    resources: Mapping[str, float] | None = None,
    resume: bool = False,
    plan: RunPlan | None = None,
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
    execution
        Where blocks run, from :func:`geoseg.scheduler.open_execution`: its client and
        resources (instead of ``client`` and ``resources``), and the cluster's torch threads
        and forward passes per worker for the models.
    progress
        Called with ``(blocks_done, blocks_total)`` after each block.
    max_in_flight
        Blocks submitted but not yet collected (memory bound); default twice the
        cluster's threads.
    resources
        Dask resources each block task requires (``{"GPU": 1}`` on GPU clusters).
    resume
        Reuse the blocks an interrupted run of the same plan completed (its journal).
    plan
        ``plan_run(scene_path, config)`` when the caller has already made it (the CLI
        plans before it starts a cluster); otherwise the scene is planned here.

    Raises
    ------
    OutputLockedError
        Another run is writing the same output.
    ConfigError
        An output is one of the run's inputs (the scene, a model file).
    OutputWriteError
        An output cannot be written ("no space left on <folder>" for a full disk).
    """
    start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    paths = output_paths(
        output,
        raster=config.raster,
        probabilities=config.probabilities,
        uncertainty=config.uncertainty,
    )
    inputs = _inputs(scene_path, config.models)
    check_outputs(paths.all(), overwrite=config.overwrite, inputs=inputs, side=paths.side_files())
    with output_lock(paths.gpkg, lock=paths.lock):
        # Again under the lock: another run may have finished these outputs meanwhile.
        check_outputs(paths.all(), overwrite=config.overwrite)
        if plan is None:
            plan = plan_run(scene_path, config)
        check_outputs(
            paths.all(),
            overwrite=config.overwrite,
            inputs=_inputs(plan.scene.path, [u.source for u in plan.models]),
            side=paths.side_files(),
        )
        return _run_locked(
            plan,
            paths,
            config,
            client=client,
            execution=execution,
            progress=progress,
            max_in_flight=max_in_flight,
            resources=resources,
            resume=resume,
            start=start,
            started=started,
        )


def _run_locked(
    plan: RunPlan,
    paths: OutputPaths,
    config: RunConfig,
    *,
    client: Any,
    execution: Execution | None,
    progress: Progress | None,
    max_in_flight: int | None,
    resources: Mapping[str, float] | None,
    resume: bool,
    start: float,
    started: dt.datetime,
) -> RunSummary:
    """:func:`run_scene` once the output's lock is held and the plan made."""
    if execution is not None:
        client, resources = execution.client, execution.resources
        plan = replace(plan, inference=execution.with_cluster_threads(plan.inference))
    folder = paths.gpkg.absolute().parent
    # The fingerprint is the plan's before the spectral statistics, which it determines.
    try:
        journal = Journal(paths.journal, fingerprint=_plan_fingerprint(plan, config), resume=resume)
    except OutputWriteError as err:
        if _disk_full(err, folder):
            raise OutputWriteError(f"no space left on {str(folder)!r}") from err
        raise
    journalled = 0
    outputs: RunOutputs | None = None
    try:
        plan = _spectral_plan(plan, client=client, journal=journal)
        scene_digest = FileDigest(plan.scene.path)
        peak_scope = _reset_worker_peaks(client) if client is not None else "run"
        if max_in_flight is None:
            threads = sum(client.nthreads().values()) if client is not None else 1
            max_in_flight = max(2, 2 * threads)
        total = len(plan.blocks)
        if progress:
            progress(0, total)
        outputs = writer = RunOutputs(plan, paths, dst_crs=config.dst_crs, cog=config.cog)
        timings: dict[str, float] = {}
        devices: set[str] = set()
        precisions: set[str] = set()
        worker_rss: dict[str, float] = {}

        def collect(result: BlockResult) -> None:
            t0 = time.perf_counter()
            writer.add(result)
            release_freed_memory()
            for k, v in result.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
            devices.add(result.device)
            precisions.add(result.precision)
            if result.worker:
                worker_rss[result.worker] = max(
                    worker_rss.get(result.worker, 0.0), result.peak_rss_mb
                )

        resumed = 0
        for resumed, (_, payload) in enumerate(journal.load(), start=1):
            collect(decode_result(payload, plan.classes))
            if progress:
                progress(resumed, total)
        journalled = resumed
        done_blocks = journal.done()
        todo = [b for b in plan.blocks if b.index not in done_blocks]
        # closing(): an interrupt between two results cancels the pending blocks now, while
        # the client is alive, not when the generator is collected after it has closed.
        with contextlib.closing(
            _iter_results(
                plan, todo, client=client, max_in_flight=max_in_flight, resources=resources
            )
        ) as results:
            for done, result in enumerate(results, start=resumed + 1):
                collect(result)
                t0 = time.perf_counter()
                journal.record(result.index, encode_result(result))
                journalled = done
                timings["journal"] = timings.get("journal", 0.0) + time.perf_counter() - t0
                if progress:
                    progress(done, total)
        t0 = time.perf_counter()
        provenance = run_provenance(
            plan,
            config,
            scene_sha256=scene_digest.result(),
            model_sha256={u.source: file_sha256(u.source) for u in plan.models},
            started=started,
            seconds=time.perf_counter() - start,
        )
        counts = writer.finish(provenance)
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
    except BaseException as err:
        if outputs is not None:
            outputs.abort()
        if _disk_full(err, folder):
            full = OutputWriteError(f"no space left on {str(folder)!r}")
            _close_journal(journal, full, blocks=journalled)
            kept = paths.journal.exists()
            hint = "; free some space, then run the same command"
            hint += " with --resume to reuse the finished blocks" if kept else " again"
            raise OutputWriteError(f"no space left on {str(folder)!r}{hint}") from err
        _close_journal(journal, err, blocks=journalled)
        raise
    journal.finish()
    return RunSummary(
        gpkg=paths.gpkg,
        raster=paths.raster,
        probabilities=paths.probabilities,
        uncertainty=paths.uncertainty,
        features=counts,
        blocks=total,
        pixels=plan.scene.width * plan.scene.height,
        seconds=time.perf_counter() - start,
        timings=timings,
        devices=tuple(sorted(devices)),
        precisions=tuple(sorted(precisions)),
        resumed_blocks=resumed,
        client_peak_rss_mb=peak_rss_mb(),
        worker_peak_rss_mb=worker_rss,
        line_layers=tuple(f"{c}_centerlines" for c in plan.centerlines),
        worker_peak_scope=peak_scope,
    )
