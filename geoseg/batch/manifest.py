"""The state of a batch workflow and the rule that decides what a run does with each scene.

State, in the workflow's output folder:

- ``geoseg-manifest.sqlite``: one row per scene (input, its size and modification time or
  checksum, the config hash, status, attempts, timings, outputs, error, and the outputs of
  earlier runs still to be removed). Every change is its own committed transaction, so a
  killed batch loses no completed scene.
- ``.geoseg-batch.lock``: an advisory lock held while a batch runs, so two runs of the same
  workflow (an overlapping cron job) never work on the same outputs. It names the process
  and the run holding it, which tells ``geoseg batch status`` a running scene from one a
  killed batch left behind.

:func:`scene_action` is the rule that makes a re-run do what is missing and nothing twice;
:func:`scene_statuses` applies it to every scene. Running a batch (the scenes, the log, the
run summaries) is :mod:`geoseg.batch.runner`.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import GeosegError

if TYPE_CHECKING:
    from geoseg.batch.workflow import Workflow

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "Decision",
    "InputStamp",
    "LockHolder",
    "Manifest",
    "Scene",
    "SceneRecord",
    "SceneStatus",
    "folder_lock",
    "lock_holder",
    "lock_is_held",
    "read_manifest",
    "scene_action",
    "scene_statuses",
    "utc_now",
    "workflow_status",
]

MANIFEST_NAME = "geoseg-manifest.sqlite"
LOCK_NAME = ".geoseg-batch.lock"
SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "done", "failed")
INTERRUPTED = "interrupted"

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
    updated     TEXT NOT NULL,
    stale       TEXT
);
"""
# Columns added after the first release, for manifests written before them.
_ADDED_COLUMNS = {"stale": "TEXT"}


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
    """One manifest row.

    ``stale``: outputs recorded for earlier runs of the scene that its current outputs do
    not replace (the name template changed, ``raster: false`` now); removed once the
    current run's outputs are committed.
    """

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
    stale: tuple[str, ...] = ()

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


def scene_action(
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
    if record.status == "running":  # and no batch holds the folder: that batch was killed
        return Decision(action="run", reason=f"{INTERRUPTED}: the batch was killed while it ran")
    return Decision(action="run", reason=INTERRUPTED if record.started else "pending")


@dataclass(frozen=True, kw_only=True, slots=True)
class LockHolder:
    """The batch holding an output folder's lock: its process id, run id and start time.

    Any field is ``None`` when the lock file does not say (written by an older geoseg, or
    read in the instant between taking the lock and writing it).
    """

    pid: int | None = None
    run_id: str | None = None
    since: str | None = None

    def runs(self, record: SceneRecord) -> bool:
        """Whether this batch is the one running ``record`` (its ``running`` row is live)."""
        return record.status == "running" and self.run_id in (None, record.run_id)


def scene_statuses(
    scenes: Sequence[Scene],
    records: Mapping[str, SceneRecord],
    *,
    config_hash: str,
    max_attempts: int,
    retry_failed: bool = False,
    holder: LockHolder | None = None,
) -> list[SceneStatus]:
    """:func:`scene_action` for every scene; ``holder``: the batch holding the folder's lock now.

    A ``running`` row is running only while the batch that started it holds the lock;
    otherwise that batch was killed, and the scene is pending (``interrupted``).
    """
    out = []
    for scene in scenes:
        record = records.get(scene.input)
        d = scene_action(
            record,
            stamp=scene.stamp,
            config_hash=config_hash,
            outputs=scene.outputs,
            max_attempts=max_attempts,
            retry_failed=retry_failed,
        )
        action, reason = d.action, d.reason
        if record is not None and holder is not None and holder.runs(record):
            status, action = "running", "skip"
            pid = f", pid {holder.pid}" if holder.pid is not None else ""
            reason = f"running since {record.started} (run {record.run_id}{pid})"
        elif d.action == "skip":
            status = "done"
        elif d.action == "give-up" or (
            record is not None and record.status == "failed" and d.reason.startswith("retry")
        ):
            status = "failed"
        else:
            status = "pending"
        out.append(
            SceneStatus(scene=scene, status=status, action=action, reason=reason, record=record)
        )
    return out


def read_manifest(folder: Path, *, workflow: str) -> tuple[dict[str, SceneRecord], bool]:
    """The manifest's rows, read-only, and whether a batch is running (creates nothing)."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return {}, False
    with Manifest(path, workflow=workflow, readonly=True) as manifest:
        records = manifest.records()
    return records, lock_is_held(folder)


def workflow_status(workflow: Workflow) -> list[SceneStatus]:
    """Each scene's state from the manifest, read-only (creates nothing)."""
    records, _ = read_manifest(workflow.folder, workflow=workflow.name)
    return scene_statuses(
        workflow.scenes,
        records,
        config_hash=workflow.config_hash,
        max_attempts=workflow.max_attempts,
        holder=lock_holder(workflow.folder),
    )


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
        stale=tuple(json.loads(_column(row, "stale") or "[]")),
    )


def _column(row: sqlite3.Row, name: str) -> Any:
    """A column added after the first release (absent in an old manifest opened read-only)."""
    try:
        return row[name]
    except IndexError:
        return None


class Manifest:
    """The SQLite manifest of one workflow's output folder.

    Safe to share between the threads of one batch (one connection behind a lock); every
    update commits at once. ``geoseg batch status`` opens it read-only while a batch runs.
    """

    def __init__(self, path: Path, *, workflow: str, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path.is_symlink():  # SQLite would write through it
            raise GeosegError(
                f"the batch manifest {str(path)!r} is a symbolic link; geoseg never writes "
                "through one: remove it"
            )
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
                self._migrate()
                self._claim(workflow)
        except sqlite3.DatabaseError as err:
            raise GeosegError(f"cannot open the batch manifest {str(path)!r}: {err}") from err

    def _migrate(self) -> None:
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(scenes)").fetchall()}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE scenes ADD COLUMN {name} {kind}")

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
                "error = 'the batch was killed while it ran', updated = ? "
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
        """Record a scene's start; its attempt count carries on if input and config match.

        Outputs the row recorded for earlier runs that are not among ``outputs`` join its
        ``stale`` list (see :meth:`stale_done`).
        """
        previous = self.get(input_)
        attempts = 1
        if (
            previous is not None
            and previous.status != "done"
            and previous.stamp.same_as(stamp)
            and previous.config_hash == config_hash
        ):
            attempts = previous.attempts + 1
        new = [str(p) for p in outputs]
        earlier = (*previous.stale, *previous.outputs) if previous is not None else ()
        stale = [p for p in dict.fromkeys(earlier) if p not in new]
        now = utc_now()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO scenes (input, item, size, mtime_ns, checksum, "
                "config_hash, status, attempts, gpkg, outputs, started, finished, seconds, "
                "features, timings, error, run_id, updated, stale) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, NULL, NULL, NULL, NULL, "
                "NULL, ?, ?, ?)",
                (
                    input_,
                    item,
                    stamp.size,
                    stamp.mtime_ns,
                    stamp.checksum,
                    config_hash,
                    attempts,
                    str(gpkg),
                    json.dumps(new),
                    now,
                    run_id,
                    now,
                    json.dumps(stale),
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
                "error = 'the batch was stopped while it ran', updated = ? "
                "WHERE input = ? AND status = 'running'",
                (utc_now(), input_),
            )

    def stale_done(self) -> dict[str, tuple[str, ...]]:
        """Done scenes whose earlier outputs are still to be removed, by input."""
        with self._lock:
            rows = self._db.execute(
                "SELECT input, stale FROM scenes "
                "WHERE status = 'done' AND stale IS NOT NULL AND stale != '[]'"
            ).fetchall()
        return {r["input"]: tuple(json.loads(r["stale"])) for r in rows}

    def set_stale(self, input_: str, stale: Sequence[str]) -> None:
        """What is left of a scene's stale outputs after removing them (usually nothing)."""
        with self._lock:
            self._db.execute(
                "UPDATE scenes SET stale = ?, updated = ? WHERE input = ?",
                (json.dumps(list(stale)), utc_now(), input_),
            )


# --------------------------------------------------------------------------- lock


@contextmanager
def folder_lock(folder: Path, *, run_id: str | None = None) -> Iterator[None]:
    """Hold the output folder's batch lock, or fail at once if another batch holds it.

    The lock file names this process and ``run_id`` while it is held (:func:`lock_holder`).
    """
    import fcntl

    path = folder / LOCK_NAME
    # Never through a link planted at its name: it is truncated and written below.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        raise GeosegError(
            f"cannot take the batch lock {str(path)!r} ({err.strerror}); if it is a symbolic "
            "link, remove it"
        ) from err
    with os.fdopen(fd, "a+") as fh:
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
        run = f" run {run_id}" if run_id else ""
        fh.write(f"pid {os.getpid()}{run} since {utc_now()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lock_holder(folder: Path) -> LockHolder | None:
    """The batch running on ``folder`` now, or ``None`` (creates nothing)."""
    import fcntl

    path = folder / LOCK_NAME
    if not path.is_file():
        return None
    with path.open("r") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse_holder(fh.read())
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


def _parse_holder(text: str) -> LockHolder:
    words = text.split()
    values: dict[str, Any] = {}
    for key, value in itertools.pairwise(words):
        if key == "pid" and value.isdigit():
            values["pid"] = int(value)
        elif key in ("run", "since"):
            values["run_id" if key == "run" else key] = value
    return LockHolder(**values)


def lock_is_held(folder: Path) -> bool:
    """Whether a batch is running on ``folder`` now (creates nothing)."""
    return lock_holder(folder) is not None
