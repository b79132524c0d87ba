"""Running a batch workflow: the scenes that need it, on one Dask client, nothing lost.

:func:`run_workflow` brings a workflow's output folder up to date. It applies
:func:`geoseg.batch.manifest.scene_action` to every scene, runs those that need it in
client-side threads sharing one Dask client, records one bad scene as failed and goes on,
and removes the outputs an earlier run of a scene left under names its current outputs no
longer use.

Interrupted (Ctrl-C, SIGTERM), it stops at once: the Dask tasks of running scenes are
cancelled (blocks already finished stay in each scene's journal for the next run), their
temporary files removed, the scenes left pending, and the run summary written; then it
raises :class:`BatchInterrupted`. Local Dask workers ignore SIGINT and SIGTERM
(:func:`geoseg.scheduler.dask_setup`): a Ctrl-C reaches every process of the terminal's
group, and the batch, not each worker, decides how they stop.

Beside the manifest (:mod:`geoseg.batch.manifest`), in the output folder:

- ``geoseg-batch.log``: appended, one line per event; past :data:`LOG_MAX_BYTES` it
  becomes ``geoseg-batch.log.1`` when the next run starts.
- ``runs/<UTC start time, to the microsecond>.json``: what one run did; the newest
  :data:`KEEP_RUNS` are kept.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from geoseg import __version__
from geoseg.batch.manifest import (
    INTERRUPTED,
    MANIFEST_NAME,
    Manifest,
    Scene,
    SceneRecord,
    SceneStatus,
    folder_lock,
    scene_statuses,
    utc_now,
)
from geoseg.config import RunConfig
from geoseg.errors import GeosegError, OutputExistsError, OutputWriteError
from geoseg.run.pipeline import run_scene
from geoseg.scheduler import DaskLogMute, Execution, open_execution
from geoseg.tiling.atomic import write_text_atomic

if TYPE_CHECKING:
    from geoseg.batch.workflow import Workflow

__all__ = [
    "KEEP_RUNS",
    "LOG_MAX_BYTES",
    "LOG_NAME",
    "RUNS_FOLDER",
    "STOP_GRACE_S",
    "BatchEvent",
    "BatchInterrupted",
    "BatchLog",
    "BatchResult",
    "clean_partials",
    "remove_outputs",
    "run_workflow",
    "write_run_summary",
]

LOG_NAME = "geoseg-batch.log"
RUNS_FOLDER = "runs"
KEEP_RUNS = 100
LOG_MAX_BYTES = 5 * 2**20
"""Run summaries kept in ``runs/``: older ones are deleted when a run writes its own."""
STOP_GRACE_S = 60.0
"""How long an interrupted batch waits for its running scenes to stop (a scene writing its
final files finishes them); a scene still running then is left pending and abandoned."""

# --------------------------------------------------------------------------- files


def clean_partials(scenes: Sequence[Scene]) -> int:
    """Delete the temporary files an interrupted run left beside these scenes' outputs.

    Block journals (``.<name>.journal``) stay: the next run of the scene resumes from them.
    A scene whose output a live run holds locked (a ``geoseg run`` on it now) is left
    alone: those temporaries are that run's.
    """
    from geoseg.run.lock import lock_holder

    removed = 0
    for scene in scenes:
        if lock_holder(scene.gpkg.with_name(f".{scene.gpkg.name}.lock")) is not None:
            continue
        for out in scene.outputs:
            if not out.parent.is_dir():
                continue
            for stale in out.parent.glob(f".{glob.escape(out.name)}.partial*"):
                stale.unlink(missing_ok=True)
                removed += 1
    return removed


def remove_outputs(
    paths: Sequence[str], *, folder: Path, keep: Callable[[str], bool]
) -> tuple[list[Path], list[str]]:
    """Delete outputs an earlier run of a scene wrote and its current run does not replace.

    Only regular files inside ``folder`` are deleted, with their hidden temporaries and
    block journal; never a path ``keep`` claims (another scene's output now). Folders left
    empty (a ``{date}/`` subfolder) go too, up to ``folder``.

    Returns
    -------
    removed, retry
        The files deleted, and the paths that could not be (to try again next run).
    """
    removed: list[Path] = []
    retry: list[str] = []
    root = Path(os.path.normpath(folder))
    for text in paths:
        path = Path(os.path.normpath(text))
        if keep(text) or not path.is_relative_to(root) or path == root:
            continue
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed.append(path)
            if path.parent.is_dir():
                name = glob.escape(path.name)
                for pattern in (f".{name}.partial*", f".{name}.journal*"):
                    for tmp in path.parent.glob(pattern):
                        tmp.unlink(missing_ok=True)
        except OSError:
            retry.append(text)
            continue
        parent = path.parent
        while parent != root and parent.is_relative_to(root):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
    return removed, retry


class BatchLog:
    """``geoseg-batch.log``: one line per event, appended and flushed at once.

    A log over ``max_bytes`` when a run opens it becomes ``geoseg-batch.log.1`` (replacing
    the previous one), so a nightly batch keeps between one and two logs' worth of history.
    """

    def __init__(self, path: Path, *, run_id: str, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.run_id = run_id
        self._lock = threading.Lock()
        if path.exists() and path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))
        # Appended to, never through a link planted at its name (O_NOFOLLOW).
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fh: TextIO = os.fdopen(os.open(path, flags, 0o666), "a", encoding="utf-8")
        except OSError as err:  # ELOOP: a symbolic link; or a read-only folder
            raise OutputWriteError(
                f"cannot write the batch log {str(path)!r} ({err.strerror}); if it is a "
                "symbolic link, remove it"
            ) from err

    def event(self, kind: str, subject: str, detail: str = "") -> None:
        text = " ".join(detail.split())  # one line, whatever the error message holds
        line = f"{utc_now()} run={self.run_id} {kind:<8} {subject}" + (f" {text}" if text else "")
        with self._lock:
            if self._fh.closed:  # a scene abandoned by an interrupted batch, finishing late
                return
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


_SUMMARY_NAME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{6}Z)(?:-(\d+))?\.json$")


def write_run_summary(
    folder: Path, started: datetime, body: Mapping[str, Any], *, keep: int = KEEP_RUNS
) -> Path:
    """Write ``runs/<start>.json`` atomically, then delete all but the newest ``keep``.

    The name carries microseconds so names sort in start order; a clash gets ``-2``. Only
    files named like run summaries are ever deleted.
    """
    runs = folder / RUNS_FOLDER
    runs.mkdir(exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H-%M-%S.%fZ")
    path = runs / f"{stem}.json"
    n = 2
    while path.exists():
        path = runs / f"{stem}-{n}.json"
        n += 1
    write_text_atomic(path, json.dumps(body, indent=2, default=str) + "\n")
    ours = [(m, p) for p in runs.iterdir() if (m := _SUMMARY_NAME.match(p.name))]
    ours.sort(key=lambda mp: (mp[0][1], int(mp[0][2] or 1)))
    for _, old in ours[: max(0, len(ours) - max(1, keep))]:
        old.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchEvent:
    """Progress of a batch for the CLI to render (called from the scene threads too).

    ``kind`` is ``plan`` (``total`` scenes to run), ``start``, ``progress`` (``done`` of
    ``total`` blocks), ``done``, ``failed`` or ``stopped``.
    """

    kind: str
    scene: str = ""
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchResult:
    """What a run did; ``exit_code`` is 0 when every scene is done, 1 when any failed.

    ``ran``: scenes this run took to an end (done or failed); ``stopped``: scenes it
    started and stopped when interrupted (pending again).
    """

    run_id: str
    scenes: tuple[SceneStatus, ...]
    summary: Path
    ran: int
    stopped: int = 0
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.scenes)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0


class BatchInterrupted(KeyboardInterrupt):
    """Raised by :func:`run_workflow` after a clean stop; ``result`` says where it stopped."""

    def __init__(self, result: BatchResult) -> None:
        super().__init__("batch interrupted")
        self.result = result


class _Stopped(BaseException):
    """Raised in a scene thread at its next block once the batch is interrupted.

    A BaseException, so ``run_scene`` removes its temporary files and nothing records it
    as a failure of the scene.
    """


class _Run:
    """What one run did, filled in by the scene threads: for the log, summary and result."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.cluster = "none"
        self.interrupted = False
        self.error: str | None = None
        self._lock = threading.Lock()
        self._outcomes: dict[str, tuple[str, str]] = {}

    def record(self, input_: str, outcome: str, note: str) -> None:
        with self._lock:
            self._outcomes[input_] = (outcome, note)

    def outcome(self, input_: str) -> tuple[str, str] | None:
        with self._lock:
            return self._outcomes.get(input_)

    def count(self, *outcomes: str) -> int:
        with self._lock:
            return sum(o in outcomes for o, _ in self._outcomes.values())


@dataclass(frozen=True, kw_only=True, slots=True)
class _Context:
    """What every scene thread of one run shares."""

    workflow: Workflow
    manifest: Manifest
    log: BatchLog
    emit: Callable[[BatchEvent], None]
    run: _Run
    stop: threading.Event = field(default_factory=threading.Event)
    recorded: Collection[str] = frozenset()  # every output the manifest knows: ours
    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)  # output -> inputs


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if isinstance(err, GeosegError) else f"{type(err).__name__}: {text}"


# --------------------------------------------------------------------------- the run


def run_workflow(
    workflow: Workflow,
    *,
    execution: Execution | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    retry_failed: bool = False,
    worker_log_level: int = logging.ERROR,
) -> BatchResult:
    """Run what is missing: new, changed, pending and failed (within retries) scenes.

    Parameters
    ----------
    workflow
        From :func:`~geoseg.batch.workflow.load_workflow`.
    execution
        Where blocks run; default: open the workflow's scheduler (only if there is work).
    on_event
        Progress callback (:class:`BatchEvent`).
    retry_failed
        Retry failed scenes even when their retries are used up.
    worker_log_level
        Log level of the workers of a local cluster this run starts (they log to stderr).

    Raises
    ------
    BatchInterrupted
        (a ``KeyboardInterrupt``) after a clean stop: running scenes are pending again, their
        temporary files removed, finished scenes committed, the run summary written.
    GeosegError
        If another batch holds the output folder or the cluster cannot be reached (the
        reason is in the log and the run summary too).
    """
    emit = on_event or (lambda event: None)
    run = _Run()
    started, t0 = datetime.now(UTC), time.perf_counter()
    folder = workflow.folder
    folder.mkdir(parents=True, exist_ok=True)
    labels = {s.input: s.label for s in workflow.scenes}
    with (
        folder_lock(folder, run_id=run.id),
        Manifest(folder / MANIFEST_NAME, workflow=workflow.name) as manifest,
    ):
        log = BatchLog(folder / LOG_NAME, run_id=run.id)
        plan: list[SceneStatus] = []
        try:
            for inp in manifest.recover_running():
                log.event("recover", labels.get(inp, inp), "left running by a killed batch")
            clean_partials(workflow.scenes)
            records = manifest.records()
            ctx = _context(workflow, records, manifest=manifest, log=log, emit=emit, run=run)
            for inp, stale in manifest.stale_done().items():  # a run killed before removing
                _remove_stale(inp, stale, ctx, label=labels.get(inp, inp))
            plan = _statuses(workflow, records, retry_failed=retry_failed)
            todo = [s for s in plan if s.action == "run"]
            log.event(
                "begin",
                str(workflow.path),
                f"{len(plan)} scenes, {len(todo)} to run, config {workflow.config_hash}",
            )
            for warning in workflow.warnings:
                log.event("warning", str(workflow.path), warning)
            for s in plan:
                if s.action == "give-up":
                    error = s.record.error if s.record else ""
                    log.event("gave-up", s.scene.label, f"{s.reason}: {error}")
            emit(BatchEvent(kind="plan", total=len(todo)))
            if todo:
                _execute(todo, ctx, execution, worker_log_level=worker_log_level)
        except KeyboardInterrupt:
            run.interrupted = True
        except BaseException as err:
            run.error = _reason(err)
            log.event("error", str(workflow.path), run.error)
            raise
        finally:
            final = _statuses(workflow, manifest.records(), retry_failed=retry_failed)
            body = _summary(workflow, plan, final, run, started, t0)
            summary = write_run_summary(folder, started, body)
            counts = ", ".join(f"{k} {v}" for k, v in body["counts"].items())
            log.event(INTERRUPTED if run.interrupted else "end", str(workflow.path), counts)
            log.close()
    result = BatchResult(
        run_id=run.id,
        scenes=tuple(final),
        summary=summary,
        ran=run.count("done", "failed"),
        stopped=run.count("stopped"),
        interrupted=run.interrupted,
    )
    if run.interrupted:
        raise BatchInterrupted(result)
    return result


def _context(
    workflow: Workflow,
    records: Mapping[str, SceneRecord],
    *,
    manifest: Manifest,
    log: BatchLog,
    emit: Callable[[BatchEvent], None],
    run: _Run,
) -> _Context:
    owners: dict[str, set[str]] = {}
    for r in records.values():
        for out in r.outputs:
            owners.setdefault(out, set()).add(r.input)
    recorded = set(owners) | {p for r in records.values() for p in r.stale}
    return _Context(
        workflow=workflow,
        manifest=manifest,
        log=log,
        emit=emit,
        run=run,
        recorded=frozenset(recorded),
        owners={k: frozenset(v) for k, v in owners.items()},
    )


def _statuses(
    workflow: Workflow, records: Mapping[str, SceneRecord], *, retry_failed: bool
) -> list[SceneStatus]:
    return scene_statuses(
        workflow.scenes,
        records,
        config_hash=workflow.config_hash,
        max_attempts=workflow.max_attempts,
        retry_failed=retry_failed,
    )


def _summary(
    workflow: Workflow,
    plan: Sequence[SceneStatus],
    final: Sequence[SceneStatus],
    run: _Run,
    started: datetime,
    t0: float,
) -> dict[str, Any]:
    """The run summary: what this run did with each scene (``note``) and what is next."""
    planned = {s.scene.input: s for s in plan}
    scenes = []
    for s in final:
        r = s.record
        outcome = run.outcome(s.scene.input)
        before = planned.get(s.scene.input)
        if outcome is not None:
            what, note = outcome
        elif before is not None and before.action != "run":
            what, note = "skipped", f"skipped: {before.reason}"
        else:
            why = "the batch was interrupted" if run.interrupted else "the run failed (see error)"
            what, note = "not started", f"not started: {why}"
        ran = what in ("done", "failed")
        scenes.append(
            {
                "input": s.scene.input,
                "status": s.status,
                "outcome": what,
                "ran": ran,
                "note": note,
                "next": f"{s.action}: {s.reason}",
                "seconds": r.seconds if r is not None and ran else None,
                "gpkg": str(s.scene.gpkg),
                "outputs": [str(p) for p in s.scene.outputs],
                "features": dict(r.features) if r is not None and s.status == "done" else {},
                "error": r.error if r is not None and s.status != "done" else None,
            }
        )
    counts = {
        "scenes": len(final),
        "ran": run.count("done", "failed"),
        "stopped": run.count("stopped"),
    }
    counts |= {k: sum(s.status == k for s in final) for k in ("done", "failed", "pending")}
    return {
        "workflow": str(workflow.path),
        "name": workflow.name,
        "run_id": run.id,
        "geoseg_version": __version__,
        "config_hash": workflow.config_hash,
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - t0, 3),
        "cluster": run.cluster,
        "interrupted": run.interrupted,
        "error": run.error,
        "warnings": list(workflow.warnings),
        "counts": counts,
        "scenes": scenes,
    }


# --------------------------------------------------------------------------- executing scenes


def _execute(
    todo: Sequence[SceneStatus],
    ctx: _Context,
    execution: Execution | None,
    *,
    worker_log_level: int,
) -> None:
    workflow = ctx.workflow
    if execution is not None:
        ctx.run.cluster = execution.description
        _run_scenes(todo, execution, ctx)
        return
    with (
        DaskLogMute() as mute,
        open_execution(
            workflow.scheduler,
            n_workers=workflow.workers,
            threads_per_worker=workflow.threads,
            worker_log_level=worker_log_level,
        ) as ex,
    ):
        ctx.run.cluster = ex.description
        if workflow.scheduler not in ("local", "sync"):
            _preflight(ex, workflow, todo)
        # Muted from the moment the scenes are halted (cancelling a block that a scene's
        # thread is gathering makes Dask log it) until the cluster is closed.
        _run_scenes(todo, ex, ctx, on_stop=mute.now)


def _preflight(ex: Execution, workflow: Workflow, todo: Sequence[SceneStatus]) -> None:
    """An attached cluster's workers import geoseg and read the models and a first scene."""
    from geoseg.models.spectral import is_spectral
    from geoseg.scheduler import preflight

    preflight(
        ex.client,
        address=workflow.scheduler,
        scene=todo[0].scene.input if todo else None,
        models=tuple(m for m in workflow.config.models if not is_spectral(m)),
    )


def _run_scenes(
    todo: Sequence[SceneStatus],
    ex: Execution,
    ctx: _Context,
    *,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Run scenes in client-side threads sharing one client.

    ``run_scene`` blocks its thread while Dask runs its blocks; with ``k`` scenes at once,
    each keeps ``2 x threads / k`` blocks in flight, so memory stays what one scene at
    ``2 x threads`` would use. The threads are daemons: a scene stuck in a Dask call after
    an interrupt cannot keep the process alive. ``on_stop`` is called first when the
    batch stops early (an interrupt, a bug).
    """
    client = ex.client
    workflow = ctx.workflow
    budget = 2 * sum(client.nthreads().values()) if client is not None else 1
    k = max(1, min(workflow.concurrency, budget, len(todo))) if client is not None else 1
    config = workflow.config
    ended: queue.Queue[tuple[threading.Thread, BaseException | None]] = queue.Queue()

    def body(status: SceneStatus) -> None:
        error: BaseException | None = None
        try:
            _run_one(status, ctx, config=config, ex=ex, max_in_flight=max(1, budget // k))
        except BaseException as err:  # a bug; or the manifest closed under an abandoned scene
            error = err
        ended.put((threading.current_thread(), error))

    waiting = list(todo)
    running: dict[threading.Thread, SceneStatus] = {}
    try:
        while waiting or running:
            while len(running) < k and waiting:
                status = waiting.pop(0)
                thread = threading.Thread(
                    target=body, args=(status,), name=f"geoseg-scene-{len(todo) - len(waiting)}"
                )
                thread.daemon = True
                running[thread] = status
                thread.start()
            try:  # a timeout keeps the main thread responsive to SIGINT/SIGTERM
                thread, error = ended.get(timeout=0.5)
            except queue.Empty:
                continue
            running.pop(thread, None)
            if error is not None:
                raise error
    except BaseException:
        if on_stop is not None:
            on_stop()
        ctx.stop.set()
        for status in _halt(client, running):
            _abandon(status, ctx)
        raise


def _halt(client: Any, running: Mapping[threading.Thread, SceneStatus]) -> list[SceneStatus]:
    """Stop the running scenes; returns those still running after :data:`STOP_GRACE_S`.

    Each scene stops at its next block (``_Stopped``). Cancelling the client's tasks makes
    that at once, and frees a scene waiting on workers that died with the batch (a
    ``kill`` of the process group) or on a scheduler that is gone.
    """
    deadline = time.monotonic() + STOP_GRACE_S
    alive = [t for t in running if t.is_alive()]
    try:
        while alive and time.monotonic() < deadline:
            if client is not None:
                _cancel_all(client)
            alive[0].join(timeout=0.25)
            alive = [t for t in alive if t.is_alive()]
    except KeyboardInterrupt:  # asked again: stop waiting
        pass
    return [running[t] for t in alive if t.is_alive()]


def _cancel_all(client: Any) -> None:
    from distributed import Future

    try:
        keys = list(client.futures)
    except RuntimeError:  # changed by the client's event loop meanwhile: next time
        return
    if keys:
        try:
            client.cancel([Future(key, client) for key in keys])
        except Exception:  # a closed client has nothing left to cancel
            logging.getLogger(__name__).debug("cancelling tasks failed", exc_info=True)


def _run_one(
    status: SceneStatus, ctx: _Context, *, config: RunConfig, ex: Execution, max_in_flight: int
) -> None:
    if ctx.stop.is_set():
        return
    scene, workflow, manifest = status.scene, ctx.workflow, ctx.manifest
    # Files at this scene's output paths that the manifest recorded (also written by a run
    # killed after the rename, or by another scene before the name template changed) are
    # this workflow's; anything else is somebody else's.
    foreign = [
        p
        for p in scene.outputs
        if p.exists() and str(p) not in ctx.recorded and not workflow.overwrite
    ]
    manifest.mark_running(
        scene.input,
        item=scene.item,
        stamp=scene.stamp,
        config_hash=workflow.config_hash,
        gpkg=scene.gpkg,
        outputs=scene.outputs,
        run_id=ctx.run.id,
    )
    ctx.log.event("start", scene.label, status.reason)
    ctx.emit(BatchEvent(kind="start", scene=scene.label, message=status.reason))
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if ctx.stop.is_set():
            raise _Stopped
        ctx.emit(BatchEvent(kind="progress", scene=scene.label, done=done, total=total))

    try:
        if foreign:
            raise OutputExistsError(
                f"{str(foreign[0])!r} exists and was not written by this workflow; "
                "set output.overwrite: true to replace it"
            )
        scene.gpkg.parent.mkdir(parents=True, exist_ok=True)
        summary = run_scene(
            scene.input,
            scene.gpkg,
            replace(config, overwrite=True),
            execution=ex,
            progress=progress,
            max_in_flight=max_in_flight,
            resume=True,
        )
    except _Stopped:
        _stopped(status, ctx)
        return
    except Exception as err:  # one bad scene must not stop the batch
        if ctx.stop.is_set():  # its tasks cancelled, or its workers gone with the batch
            _stopped(status, ctx)
            return
        error = _reason(err)
        manifest.mark_failed(scene.input, seconds=time.perf_counter() - t0, error=error)
        ctx.run.record(scene.input, "failed", f"{status.reason}: failed")
        ctx.log.event("failed", scene.label, error)
        ctx.emit(BatchEvent(kind="failed", scene=scene.label, message=error))
        return
    manifest.mark_done(
        scene.input, seconds=summary.seconds, features=summary.features, timings=summary.timings
    )
    ctx.run.record(scene.input, "done", f"{status.reason}: done in {summary.seconds:.1f} s")
    counts = " ".join(f"{k}={v}" for k, v in summary.features.items())
    ctx.log.event("done", scene.label, f"{summary.seconds:.1f}s {counts}")
    ctx.emit(
        BatchEvent(kind="done", scene=scene.label, message=f"{summary.seconds:.1f} s, {counts}")
    )
    record = manifest.get(scene.input)
    if record is not None and record.stale:
        _remove_stale(scene.input, record.stale, ctx, label=scene.label)


def _remove_stale(input_: str, stale: Sequence[str], ctx: _Context, *, label: str) -> None:
    """Remove a done scene's earlier outputs (after its current ones were committed)."""
    current = {str(p) for s in ctx.workflow.scenes for p in s.outputs}

    def keep(path: str) -> bool:
        return path in current or bool(ctx.owners.get(path, frozenset()) - {input_})

    removed, retry = remove_outputs(stale, folder=ctx.workflow.folder, keep=keep)
    ctx.manifest.set_stale(input_, retry)
    if removed:
        names = ", ".join(os.path.relpath(p, ctx.workflow.folder) for p in removed)
        ctx.log.event("removed", label, f"earlier outputs: {names}")


def _stopped(status: SceneStatus, ctx: _Context) -> None:
    scene = status.scene
    ctx.manifest.mark_interrupted(scene.input)
    ctx.run.record(scene.input, "stopped", f"{status.reason}: stopped (batch interrupted)")
    ctx.log.event("stopped", scene.label, "batch interrupted; pending again")
    ctx.emit(BatchEvent(kind="stopped", scene=scene.label))


def _abandon(status: SceneStatus, ctx: _Context) -> None:
    """A scene that did not stop in time: pending again; its thread is left to the exit."""
    scene = status.scene
    ctx.manifest.mark_interrupted(scene.input)
    ctx.run.record(
        scene.input, "stopped", f"{status.reason}: stopped (abandoned after {STOP_GRACE_S:g} s)"
    )
    ctx.log.event("stopped", scene.label, f"did not stop within {STOP_GRACE_S:g} s; pending")
    ctx.emit(BatchEvent(kind="stopped", scene=scene.label))
