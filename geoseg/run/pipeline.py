"""The data flow of ``geoseg run`` (see DESIGN.md).

:func:`run_scene` plans the run (:mod:`geoseg.run.plan`), submits one Dask task per block
(:func:`geoseg.run.task.process_block`) with bounded blocks in flight, hands results to the
writers as they complete (:mod:`geoseg.run.outputs`), journals them for ``--resume``
(:mod:`geoseg.run.journal`), and finally merges border polygons and commits every file.

A failed run leaves no output file. Its journal (hidden, ``.<name>.gpkg.journal``) is kept
only when ``--resume`` could use it: some blocks are journalled and the run was interrupted
(Ctrl-C, SIGTERM, a lost worker or cluster) or could not write its outputs (a full disk).
A geoseg error on the input or the model (a corrupt block, no GPU, weights that do not fit)
deletes it: the same blocks would fail again, and fixing the scene or the model changes the
plan's fingerprint, which makes the journal useless anyway.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
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
from geoseg.run.journal import Journal, decode_result, encode_result, fingerprint
from geoseg.run.memory import peak_rss_mb, release_freed_memory
from geoseg.run.outputs import RunOutputs, check_outputs, output_paths
from geoseg.run.plan import NODATA_CLASS, RunPlan, plan_run
from geoseg.run.provenance import FileDigest, file_sha256, run_provenance
from geoseg.run.results import BlockResult
from geoseg.run.spectral_stats import prepare_spectral
from geoseg.run.task import block_task, process_block
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
    line_layers: tuple[str, ...] = ()  # layers of ``features`` holding lines, not polygons

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
            "inference": [plan.inference.precision, plan.inference.tile, plan.inference.overlap],
            "min_area_m2": plan.min_area_m2,
            "simplify_px": plan.simplify_px,
            "config": [
                config.smooth,
                config.smooth_params,
                config.raster,
                config.probabilities,
                config.cog,
                config.dst_crs,
                plan.centerlines,
                plan.prune_m,
            ],
        }
    )


def _iter_results(
    plan: RunPlan,
    blocks: Sequence[Block],
    *,
    client: Any,
    max_in_flight: int,
    resources: Mapping[str, float] | None,
) -> Generator[BlockResult, None, None]:
    """Yield block results as they complete, never more than ``max_in_flight`` pending."""
    if client is None:
        for block in blocks:
            yield process_block(plan, block)
        return
    if not blocks:
        return
    from distributed import KilledWorker, as_completed

    plan_future = client.scatter(plan, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:12]
    pending = iter(blocks)
    submitted: dict[Any, Block] = {}

    def submit(block: Block) -> Any:
        # Dask retries a task that raised (a lost worker); a geoseg error comes back as a
        # TaskFailure value instead: deterministic, so never retried.
        fut = client.submit(
            block_task,
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
            try:
                result = fut.result()
            except KilledWorker as err:
                raise WorkerLostError(
                    f"block {submitted[fut].index} was lost with the worker running it "
                    "several times (killed, or out of memory?): try a smaller --block, "
                    "fewer --threads, or a machine with more memory"
                ) from err
            del submitted[fut]
            fut.release()
            if isinstance(result, TaskFailure):
                raise result.error()
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(submit(nxt))
            yield result
    finally:
        for fut in list(submitted):
            fut.cancel()


def _close_journal(journal: Journal, err: BaseException, *, blocks: int) -> None:
    """After a failure keep the journal only when ``--resume`` could use it (module docs)."""
    rerun_helps = (OutputWriteError, WorkerLostError)
    if blocks > 0 and (not isinstance(err, GeosegError) or isinstance(err, rerun_helps)):
        journal.close()
    else:
        journal.finish()


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
    """
    start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    paths = output_paths(output, raster=config.raster, probabilities=config.probabilities)
    check_outputs(paths.all(), overwrite=config.overwrite)
    if plan is None:
        plan = plan_run(scene_path, config)
    if execution is not None:
        client, resources = execution.client, execution.resources
        plan = replace(plan, inference=execution.with_cluster_threads(plan.inference))
    plan = prepare_spectral(plan, client=client)
    scene_digest = FileDigest(plan.scene.path)
    if max_in_flight is None:
        threads = sum(client.nthreads().values()) if client is not None else 1
        max_in_flight = max(2, 2 * threads)
    total = len(plan.blocks)
    if progress:
        progress(0, total)
    journal = Journal(
        paths.gpkg.with_name(f".{paths.gpkg.name}.journal"),
        fingerprint=_plan_fingerprint(plan, config),
        resume=resume,
    )
    try:
        outputs = RunOutputs(plan, paths, dst_crs=config.dst_crs, cog=config.cog)
    except BaseException as err:
        _close_journal(journal, err, blocks=len(journal.done()))
        raise
    timings: dict[str, float] = {}
    devices: set[str] = set()
    precisions: set[str] = set()
    worker_rss: dict[str, float] = {}

    def collect(result: BlockResult) -> None:
        t0 = time.perf_counter()
        outputs.add(result)
        release_freed_memory()
        for k, v in result.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        devices.add(result.device)
        precisions.add(result.precision)
        if result.worker:
            worker_rss[result.worker] = max(worker_rss.get(result.worker, 0.0), result.peak_rss_mb)

    journalled = 0
    try:
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
        counts = outputs.finish(provenance)
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
    except BaseException as err:
        outputs.abort()
        _close_journal(journal, err, blocks=journalled)
        raise
    journal.finish()
    return RunSummary(
        gpkg=paths.gpkg,
        raster=paths.raster,
        probabilities=paths.probabilities,
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
    )
