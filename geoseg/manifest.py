"""The state of a batch workflow, and the run that brings it up to date.

State, in the workflow's output folder:

- ``geoseg-manifest.sqlite``: one row per scene (input, its size and modification time or
  checksum, the config hash, status, attempts, timings, outputs, error). Every change is
  its own committed transaction, so a killed batch loses no completed scene.
- ``.geoseg-batch.lock``: an advisory lock held while a batch runs, so two runs of the same
  workflow (an overlapping cron job) never work on the same outputs.
- ``geoseg-batch.log``: appended, one line per scene event.
- ``runs/<UTC start time, to the microsecond>.json``: what one run did.

:func:`decide` is the rule that makes a re-run do what is missing and nothing twice.
:func:`run_workflow` applies it: scenes that need it run in client-side threads sharing one
Dask client, one bad scene is recorded as failed and the batch goes on, and an interrupted
batch stops each running scene at its next block, removes its temporary files and leaves it
pending.
"""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from geoseg import __version__
from geoseg.config import RunConfig
from geoseg.errors import GeosegError, OutputExistsError
from geoseg.pipeline import run_scene
from geoseg.scheduler import Execution, open_execution

if TYPE_CHECKING:
    from geoseg.workflow import Workflow

__all__ = [
    "LOCK_NAME",
    "LOG_NAME",
    "MANIFEST_NAME",
    "RUNS_FOLDER",
    "BatchEvent",
    "BatchLog",
    "BatchResult",
    "Decision",
    "InputStamp",
    "Manifest",
    "Scene",
    "SceneRecord",
    "SceneStatus",
    "clean_partials",
    "decide",
    "folder_lock",
    "lock_is_held",
    "read_manifest",
    "run_workflow",
    "scene_statuses",
    "utc_now",
    "workflow_status",
    "write_run_summary",
]

MANIFEST_NAME = "geoseg-manifest.sqlite"
LOCK_NAME = ".geoseg-batch.lock"
LOG_NAME = "geoseg-batch.log"
RUNS_FOLDER = "runs"
SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenes (
    input       TEXT PRIMARY KEY,
    item        TEXT,
    size        INTEGER,
    mtime_ns    INTEGER,
    checksum    TEXT,
    config_hash TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    gpkg        TEXT,
    outputs     TEXT,
    started     TEXT,
    finished    TEXT,
    seconds     REAL,
    features    TEXT,
    timings     TEXT,
    error       TEXT,
    run_id      TEXT,
    updated     TEXT NOT NULL
);
"""


def utc_now() -> str:
    """The current UTC time as ``2026-11-25T03:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True, slots=True)
class InputStamp:
    """What identifies one version of an input file.

    Local files: size and modification time, plus a ``sha256:`` checksum when the workflow
    asks for checksums (then only the checksum counts, so touching a file changes nothing).
    Remote assets: a checksum the STAC item gives (``file:checksum``, ``updated``), if any.
    """

    size: int | None = None
    mtime_ns: int | None = None
    checksum: str | None = None

    def same_as(self, other: InputStamp) -> bool:
        if self.checksum or other.checksum:
            return self.checksum == other.checksum
        return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)


@dataclass(frozen=True, kw_only=True, slots=True)
class SceneRecord:
    """One manifest row."""

    input: str
    stamp: InputStamp
    config_hash: str
    status: str
    attempts: int = 0
    item: str | None = None
    gpkg: str | None = None
    outputs: tuple[str, ...] = ()
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    features: Mapping[str, int] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scene:
    """One input of a workflow and where its outputs go.

    ``outputs`` lists every file a run of the scene writes, the GeoPackage first.
    """

    input: str
    label: str
    gpkg: Path
    outputs: tuple[Path, ...]
    stamp: InputStamp
    item: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SceneStatus:
    """Where a scene stands: ``done``, ``failed``, ``pending`` or ``running``, and why.

    ``action`` is what a run does with it now (``run``, ``skip``, ``give-up``).
    """

    scene: Scene
    status: str
    action: str
    reason: str
    record: SceneRecord | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """What a run does with one scene: ``run``, ``skip`` or ``give-up``, and why."""

    action: str
    reason: str


def decide(
    record: SceneRecord | None,
    *,
    stamp: InputStamp,
    config_hash: str,
    outputs: Sequence[Path],
    max_attempts: int,
    retry_failed: bool = False,
) -> Decision:
    """Whether a scene needs running.

    Done with the same input, config and output paths, and every output present: skip.
    Failed (or interrupted by a killed batch) with the same input and config: run again
    until ``max_attempts`` runs have been started, then give up until the input or the
    config changes (or ``retry_failed``).
    """
    if record is None:
        return Decision(action="run", reason="new")
    if not record.stamp.same_as(stamp):
        return Decision(action="run", reason="input changed")
    if record.config_hash != config_hash:
        return Decision(action="run", reason="config changed")
    if record.status == "done":
        if record.outputs != tuple(str(p) for p in outputs):
            return Decision(action="run", reason="outputs changed")
        if not all(p.is_file() for p in outputs):
            return Decision(action="run", reason="outputs missing")
        return Decision(action="skip", reason="up to date")
    if record.attempts >= max_attempts:
        if not retry_failed:
            return Decision(action="give-up", reason=f"gave up after {record.attempts} attempts")
        return Decision(action="run", reason="retry (retries used up; --retry-failed)")
    if record.status == "failed":
        return Decision(action="run", reason=f"retry {record.attempts + 1} of {max_attempts}")
    return Decision(action="run", reason="interrupted" if record.attempts else "pending")


def scene_statuses(
    scenes: Sequence[Scene],
    records: Mapping[str, SceneRecord],
    *,
    config_hash: str,
    max_attempts: int,
    retry_failed: bool = False,
    live: bool = False,
) -> list[SceneStatus]:
    """:func:`decide` for every scene; ``live``: a batch holds the folder's lock now."""
    out = []
    for scene in scenes:
        record = records.get(scene.input)
        d = decide(
            record,
            stamp=scene.stamp,
            config_hash=config_hash,
            outputs=scene.outputs,
            max_attempts=max_attempts,
            retry_failed=retry_failed,
        )
        if record is not None and record.status == "running" and live:
            status = "running"
        elif d.action == "skip":
            status = "done"
        elif d.action == "give-up" or (
            record is not None and record.status == "failed" and d.reason.startswith("retry")
        ):
            status = "failed"
        else:
            status = "pending"
        out.append(
            SceneStatus(scene=scene, status=status, action=d.action, reason=d.reason, record=record)
        )
    return out


def clean_partials(scenes: Sequence[Scene]) -> int:
    """Delete the temporary files an interrupted run left beside these scenes' outputs.

    Block journals (``.<name>.journal``) stay: the next run of the scene resumes from them.
    """
    removed = 0
    for scene in scenes:
        for out in scene.outputs:
            if not out.parent.is_dir():
                continue
            for stale in out.parent.glob(f".{glob.escape(out.name)}.partial*"):
                stale.unlink(missing_ok=True)
                removed += 1
    return removed


def read_manifest(folder: Path, *, workflow: str) -> tuple[dict[str, SceneRecord], bool]:
    """The manifest's rows, read-only, and whether a batch is running (creates nothing)."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return {}, False
    with Manifest(path, workflow=workflow, readonly=True) as manifest:
        records = manifest.records()
    return records, lock_is_held(folder)


def _to_record(row: sqlite3.Row) -> SceneRecord:
    return SceneRecord(
        input=row["input"],
        item=row["item"],
        stamp=InputStamp(size=row["size"], mtime_ns=row["mtime_ns"], checksum=row["checksum"]),
        config_hash=row["config_hash"],
        status=row["status"],
        attempts=row["attempts"],
        gpkg=row["gpkg"],
        outputs=tuple(json.loads(row["outputs"] or "[]")),
        started=row["started"],
        finished=row["finished"],
        seconds=row["seconds"],
        features=json.loads(row["features"] or "{}"),
        timings=json.loads(row["timings"] or "{}"),
        error=row["error"],
        run_id=row["run_id"],
    )


class Manifest:
    """The SQLite manifest of one workflow's output folder.

    Safe to share between the threads of one batch (one connection behind a lock); every
    update commits at once. ``geoseg batch status`` opens it read-only while a batch runs.
    """

    def __init__(self, path: Path, *, workflow: str, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if readonly:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self._db.executescript(_SCHEMA)
                self._claim(workflow)
        except sqlite3.DatabaseError as err:
            raise GeosegError(f"cannot open the batch manifest {str(path)!r}: {err}") from err

    def _claim(self, workflow: str) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        owner = meta.get("workflow")
        if owner is not None and owner != workflow:
            self._db.close()
            raise GeosegError(
                f"output folder {str(self.path.parent)!r} holds the outputs of workflow "
                f"{owner!r}, not {workflow!r}; give each workflow its own output.folder "
                f"(or set name: {owner} if it is the same workflow renamed)"
            )
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('workflow', ?), ('schema', ?)",
            (workflow, SCHEMA_VERSION),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self) -> dict[str, SceneRecord]:
        """Every row, by input."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM scenes ORDER BY input").fetchall()
        return {r["input"]: _to_record(r) for r in rows}

    def get(self, input_: str) -> SceneRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM scenes WHERE input = ?", (input_,)).fetchone()
        return _to_record(row) if row is not None else None

    def recover_running(self) -> list[str]:
        """Rows a killed batch left ``running`` become ``pending``; returns their inputs.

        Their attempt still counts, so a scene that kills the process every time is given
        up after the workflow's retries instead of crashing every nightly run.
        """
        with self._lock:
            rows = self._db.execute("SELECT input FROM scenes WHERE status = 'running'").fetchall()
            self._db.execute(
                "UPDATE scenes SET status = 'pending', "
                "error = 'interrupted: the batch stopped while this scene ran', updated = ? "
                "WHERE status = 'running'",
                (utc_now(),),
            )
        return [r["input"] for r in rows]

    def mark_running(
        self,
        input_: str,
        *,
        item: str | None,
        stamp: InputStamp,
        config_hash: str,
        gpkg: Path,
        outputs: Sequence[Path],
        run_id: str,
    ) -> None:
        """Record a scene's start; its attempt count carries on if input and config match."""
        previous = self.get(input_)
        attempts = 1
        if (
            previous is not None
            and previous.status != "done"
            and previous.stamp.same_as(stamp)
            and previous.config_hash == config_hash
        ):
            attempts = previous.attempts + 1
        now = utc_now()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO scenes (input, item, size, mtime_ns, checksum, "
                "config_hash, status, attempts, gpkg, outputs, started, finished, seconds, "
                "features, timings, error, run_id, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, NULL, NULL, NULL, NULL, "
                "NULL, ?, ?)",
                (
                    input_,
                    item,
                    stamp.size,
                    stamp.mtime_ns,
                    stamp.checksum,
                    config_hash,
                    attempts,
                    str(gpkg),
                    json.dumps([str(p) for p in outputs]),
                    now,
                    run_id,
                    now,
                ),
            )

    def mark_done(
        self,
        input_: str,
        *,
        seconds: float,
        features: Mapping[str, int],
        timings: Mapping[str, float],
    ) -> None:
        """Commit a finished scene (call right after its outputs were renamed)."""
        now = utc_now()
        with self._lock:
            self._db.execute(
                "UPDATE scenes SET status = 'done', finished = ?, seconds = ?, features = ?, "
                "timings = ?, error = NULL, updated = ? WHERE input = ?",
                (
                    now,
                    round(seconds, 3),
                    json.dumps(dict(features)),
                    json.dumps({k: round(v, 3) for k, v in timings.items()}),
                    now,
                    input_,
                ),
            )

    def mark_failed(self, input_: str, *, seconds: float, error: str) -> None:
        now = utc_now()
        with self._lock:
            self._db.execute(
                "UPDATE scenes SET status = 'failed', finished = ?, seconds = ?, error = ?, "
                "updated = ? WHERE input = ?",
                (now, round(seconds, 3), error, now, input_),
            )

    def mark_interrupted(self, input_: str) -> None:
        """A scene stopped by a clean shutdown: pending again, and the attempt not counted."""
        with self._lock:
            self._db.execute(
                "UPDATE scenes SET status = 'pending', attempts = MAX(attempts - 1, 0), "
                "error = 'interrupted: the batch was stopped', updated = ? WHERE input = ?",
                (utc_now(), input_),
            )


# --------------------------------------------------------------------------- lock


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the output folder's batch lock, or fail at once if another batch holds it."""
    import fcntl

    path = folder / LOCK_NAME
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise GeosegError(
                f"another batch is writing to {str(folder)!r} ({holder}); "
                "wait for it to finish, or check `geoseg batch status`"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {utc_now()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lock_is_held(folder: Path) -> bool:
    """Whether a batch is running on ``folder`` now (creates nothing)."""
    import fcntl

    path = folder / LOCK_NAME
    if not path.is_file():
        return False
    with path.open("r") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


# --------------------------------------------------------------------------- log, summary


class BatchLog:
    """``geoseg-batch.log``: one line per event, appended and flushed at once."""

    def __init__(self, path: Path, *, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self._lock = threading.Lock()
        self._fh: TextIO = path.open("a", encoding="utf-8")

    def event(self, kind: str, subject: str, detail: str = "") -> None:
        text = " ".join(detail.split())  # one line, whatever the error message holds
        line = f"{utc_now()} run={self.run_id} {kind:<8} {subject}" + (f" {text}" if text else "")
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def write_run_summary(folder: Path, started: datetime, body: Mapping[str, Any]) -> Path:
    """Write ``runs/<start>.json`` atomically.

    The name carries microseconds so names sort in start order; a clash gets ``-2``.
    """
    runs = folder / RUNS_FOLDER
    runs.mkdir(exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H-%M-%S.%fZ")
    path = runs / f"{stem}.json"
    n = 2
    while path.exists():
        path = runs / f"{stem}-{n}.json"
        n += 1
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- running a batch


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
    """What a run did; ``exit_code`` is 0 when every scene is done, 1 when any failed."""

    run_id: str
    scenes: tuple[SceneStatus, ...]
    summary: Path
    ran: int

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.scenes)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0


class _Stopped(BaseException):
    """Raised in a scene thread at its next block once the batch is interrupted.

    A BaseException, so ``run_scene`` removes its temporary files and nothing records it
    as a failure of the scene.
    """


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if isinstance(err, GeosegError) else f"{type(err).__name__}: {text}"


def _statuses(
    workflow: Workflow,
    records: Mapping[str, SceneRecord],
    *,
    retry_failed: bool = False,
    live: bool = False,
) -> list[SceneStatus]:
    return scene_statuses(
        workflow.scenes,
        records,
        config_hash=workflow.config_hash,
        max_attempts=workflow.max_attempts,
        retry_failed=retry_failed,
        live=live,
    )


def workflow_status(workflow: Workflow) -> list[SceneStatus]:
    """Each scene's state from the manifest, read-only (creates nothing)."""
    records, live = read_manifest(workflow.folder, workflow=workflow.name)
    return _statuses(workflow, records, live=live)


def run_workflow(
    workflow: Workflow,
    *,
    execution: Execution | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    retry_failed: bool = False,
) -> BatchResult:
    """Run what is missing: new, changed, pending and failed (within retries) scenes.

    Parameters
    ----------
    workflow
        From :func:`load_workflow`.
    execution
        Where blocks run; default: open the workflow's scheduler (only if there is work).
    on_event
        Progress callback (:class:`BatchEvent`).
    retry_failed
        Retry failed scenes even when their retries are used up.

    Raises
    ------
    KeyboardInterrupt
        After a clean stop: running scenes are pending again, their temporary files
        removed, finished scenes committed, the run summary written.
    GeosegError
        If another batch holds the output folder or the cluster cannot be reached.
    """
    emit = on_event or (lambda event: None)
    run_id = uuid.uuid4().hex[:8]
    started, t0 = datetime.now(UTC), time.perf_counter()
    folder = workflow.folder
    folder.mkdir(parents=True, exist_ok=True)
    labels = {s.input: s.label for s in workflow.scenes}
    with folder_lock(folder), Manifest(folder / MANIFEST_NAME, workflow=workflow.name) as manifest:
        log = BatchLog(folder / LOG_NAME, run_id=run_id)
        cluster, interrupted = "none", False
        try:
            for inp in manifest.recover_running():
                log.event("recover", labels.get(inp, inp), "left running by a killed batch")
            clean_partials(workflow.scenes)
            plan = _statuses(workflow, manifest.records(), retry_failed=retry_failed)
            todo = [s for s in plan if s.action == "run"]
            log.event(
                "begin",
                str(workflow.path),
                f"{len(plan)} scenes, {len(todo)} to run, config {workflow.config_hash}",
            )
            for s in plan:
                if s.action == "give-up":
                    error = s.record.error if s.record else ""
                    log.event("gave-up", s.scene.label, f"{s.reason}: {error}")
            emit(BatchEvent(kind="plan", total=len(todo)))
            if todo:
                cluster = _execute(workflow, todo, manifest, log, emit, run_id, execution)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            final = _statuses(workflow, manifest.records(), retry_failed=retry_failed)
            ran = [s for s in final if s.record is not None and s.record.run_id == run_id]
            body = _summary(workflow, final, run_id, started, t0, cluster, interrupted, len(ran))
            summary = write_run_summary(folder, started, body)
            counts = ", ".join(f"{k} {v}" for k, v in body["counts"].items())
            log.event("stopped" if interrupted else "end", str(workflow.path), counts)
            log.close()
    return BatchResult(run_id=run_id, scenes=tuple(final), summary=summary, ran=len(ran))


def _summary(
    workflow: Workflow,
    final: Sequence[SceneStatus],
    run_id: str,
    started: datetime,
    t0: float,
    cluster: str,
    interrupted: bool,
    ran: int,
) -> dict[str, Any]:
    counts = {"scenes": len(final), "ran": ran}
    counts |= {k: sum(s.status == k for s in final) for k in ("done", "failed", "pending")}
    scenes = []
    for s in final:
        r = s.record
        scenes.append(
            {
                "input": s.scene.input,
                "status": s.status,
                "ran": r is not None and r.run_id == run_id,
                "note": s.reason,
                "seconds": r.seconds if r else None,
                "gpkg": str(s.scene.gpkg),
                "outputs": [str(p) for p in s.scene.outputs],
                "features": dict(r.features) if r else {},
                "error": r.error if r and s.status != "done" else None,
            }
        )
    return {
        "workflow": str(workflow.path),
        "name": workflow.name,
        "run_id": run_id,
        "geoseg_version": __version__,
        "config_hash": workflow.config_hash,
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - t0, 3),
        "cluster": cluster,
        "interrupted": interrupted,
        "counts": counts,
        "scenes": scenes,
    }


def _execute(
    workflow: Workflow,
    todo: Sequence[SceneStatus],
    manifest: Manifest,
    log: BatchLog,
    emit: Callable[[BatchEvent], None],
    run_id: str,
    execution: Execution | None,
) -> str:
    if execution is not None:
        _run_scenes(workflow, todo, execution, manifest, log, emit, run_id)
        return execution.description
    with open_execution(
        workflow.scheduler, n_workers=workflow.workers, threads_per_worker=workflow.threads
    ) as ex:
        _run_scenes(workflow, todo, ex, manifest, log, emit, run_id)
        return ex.description


def _run_scenes(
    workflow: Workflow,
    todo: Sequence[SceneStatus],
    ex: Execution,
    manifest: Manifest,
    log: BatchLog,
    emit: Callable[[BatchEvent], None],
    run_id: str,
) -> None:
    """Run scenes in client-side threads sharing one client.

    ``run_scene`` blocks its thread while Dask runs its blocks; with ``k`` scenes at once,
    each keeps ``2 x threads / k`` blocks in flight, so memory stays what one scene at
    ``2 x threads`` would use.
    """
    client = ex.client
    budget = 2 * sum(client.nthreads().values()) if client is not None else 1
    k = max(1, min(workflow.concurrency, budget, len(todo))) if client is not None else 1
    config = workflow.config
    if ex.torch_threads and not config.inference.threads:
        config = replace(config, inference=replace(config.inference, threads=ex.torch_threads))
    stop = threading.Event()

    def one(status: SceneStatus) -> None:
        _run_one(
            status,
            config=config,
            overwrite=workflow.overwrite,
            config_hash=workflow.config_hash,
            manifest=manifest,
            log=log,
            emit=emit,
            stop=stop,
            run_id=run_id,
            ex=ex,
            max_in_flight=max(1, budget // k),
        )

    queue = iter(todo)
    with ThreadPoolExecutor(max_workers=k, thread_name_prefix="geoseg-scene") as pool:
        running: set[Future[None]] = set()
        try:
            while True:
                while len(running) < k and (nxt := next(queue, None)) is not None:
                    running.add(pool.submit(one, nxt))
                if not running:
                    break
                # A timeout keeps the main thread responsive to SIGINT/SIGTERM.
                finished, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()  # scenes record their own failures; this raises only bugs
        except BaseException:
            stop.set()  # each running scene stops at its next block and cleans up
            wait(running)
            raise


def _run_one(
    status: SceneStatus,
    *,
    config: RunConfig,
    overwrite: bool,
    config_hash: str,
    manifest: Manifest,
    log: BatchLog,
    emit: Callable[[BatchEvent], None],
    stop: threading.Event,
    run_id: str,
    ex: Execution,
    max_in_flight: int,
) -> None:
    if stop.is_set():
        return
    scene, record = status.scene, status.record
    # Outputs this workflow wrote before (also by a run killed after the rename) are ours.
    ours = record is not None and record.gpkg == str(scene.gpkg)
    manifest.mark_running(
        scene.input,
        item=scene.item,
        stamp=scene.stamp,
        config_hash=config_hash,
        gpkg=scene.gpkg,
        outputs=scene.outputs,
        run_id=run_id,
    )
    log.event("start", scene.label, status.reason)
    emit(BatchEvent(kind="start", scene=scene.label, message=status.reason))
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if stop.is_set():
            raise _Stopped
        emit(BatchEvent(kind="progress", scene=scene.label, done=done, total=total))

    try:
        foreign = [p for p in scene.outputs if p.exists() and not (ours or overwrite)]
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
            client=ex.client,
            progress=progress,
            max_in_flight=max_in_flight,
            resources=ex.resources,
            resume=True,
        )
    except _Stopped:
        _stopped(scene, manifest, log, emit)
        return
    except Exception as err:  # one bad scene must not stop the batch
        if stop.is_set():  # e.g. Dask workers killed with the batch: not the scene's fault
            _stopped(scene, manifest, log, emit)
            return
        error = _reason(err)
        manifest.mark_failed(scene.input, seconds=time.perf_counter() - t0, error=error)
        log.event("failed", scene.label, error)
        emit(BatchEvent(kind="failed", scene=scene.label, message=error))
        return
    manifest.mark_done(
        scene.input, seconds=summary.seconds, features=summary.features, timings=summary.timings
    )
    counts = " ".join(f"{k}={v}" for k, v in summary.features.items())
    log.event("done", scene.label, f"{summary.seconds:.1f}s {counts}")
    emit(BatchEvent(kind="done", scene=scene.label, message=f"{summary.seconds:.1f} s, {counts}"))


def _stopped(
    scene: Scene, manifest: Manifest, log: BatchLog, emit: Callable[[BatchEvent], None]
) -> None:
    manifest.mark_interrupted(scene.input)
    log.event("stopped", scene.label, "batch interrupted; pending again")
    emit(BatchEvent(kind="stopped", scene=scene.label))
