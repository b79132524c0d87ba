"""The batch manifest: what a re-run does with each scene, crash recovery, the folder lock."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from geoseg.batch.manifest import (
    MANIFEST_NAME,
    InputStamp,
    Manifest,
    Scene,
    SceneRecord,
    folder_lock,
    lock_holder,
    lock_is_held,
    read_manifest,
    scene_action,
    scene_statuses,
)
from geoseg.batch.runner import BatchLog, clean_partials, remove_outputs, write_run_summary
from geoseg.errors import GeosegError

STAMP = InputStamp(size=100, mtime_ns=1)


def _record(**changes: object) -> SceneRecord:
    fields: dict = {
        "input": "/data/a.tif",
        "stamp": STAMP,
        "config_hash": "h1",
        "status": "done",
        "attempts": 1,
        "gpkg": None,
    }
    fields.update(changes)
    return SceneRecord(**fields)


@pytest.fixture
def outputs(tmp_path: Path) -> tuple[Path, Path]:
    gpkg, raster = tmp_path / "a.gpkg", tmp_path / "a_classes.tif"
    gpkg.write_bytes(b"x")
    raster.write_bytes(b"x")
    return gpkg, raster


def _action(record: SceneRecord | None, outputs: tuple[Path, Path], **kw: object) -> str:
    args: dict = {"stamp": STAMP, "config_hash": "h1", "outputs": outputs, "max_attempts": 3}
    args.update(kw)
    d = scene_action(record, **args)
    return f"{d.action}: {d.reason}"


def test_scene_action_does_what_is_missing_and_nothing_twice(outputs: tuple[Path, Path]) -> None:
    gpkg, raster = outputs
    done = _record(gpkg=str(gpkg), outputs=(str(gpkg), str(raster)))
    assert _action(None, outputs) == "run: new"
    assert _action(done, outputs) == "skip: up to date"
    assert _action(done, outputs, stamp=InputStamp(size=100, mtime_ns=2)) == "run: input changed"
    assert _action(done, outputs, config_hash="h2") == "run: config changed"
    assert _action(done, (gpkg.with_name("b.gpkg"), raster)) == "run: outputs changed"
    assert _action(done, (gpkg,)) == "run: outputs changed"  # e.g. raster: false now
    raster.unlink()
    assert _action(done, outputs) == "run: outputs missing"


def test_scene_action_retries_failed_scenes_up_to_the_limit(outputs: tuple[Path, Path]) -> None:
    assert _action(_record(status="failed", attempts=1), outputs) == "run: retry 2 of 3"
    exhausted = _record(status="failed", attempts=3)
    assert _action(exhausted, outputs) == "give-up: gave up after 3 attempts"
    assert _action(exhausted, outputs, retry_failed=True).startswith("run: retry (retries used")
    # A changed input or config starts over, whatever the attempts.
    assert _action(exhausted, outputs, config_hash="h2") == "run: config changed"
    started = "2026-11-25T03:00:00Z"
    assert _action(_record(status="pending", attempts=0), outputs) == "run: pending"
    stopped = _record(status="pending", attempts=0, started=started)  # a clean stop
    assert _action(stopped, outputs) == "run: interrupted"
    killed = _record(status="running", attempts=1, started=started)  # no batch holds it
    assert _action(killed, outputs) == "run: interrupted: the batch was killed while it ran"
    assert _action(_record(status="pending", attempts=3), outputs).startswith("give-up")


def test_checksums_win_over_modification_times() -> None:
    a = InputStamp(size=1, mtime_ns=1, checksum="sha256:aa")
    assert a.same_as(InputStamp(size=1, mtime_ns=99, checksum="sha256:aa"))  # touched only
    assert not a.same_as(InputStamp(size=1, mtime_ns=1, checksum="sha256:bb"))
    assert not a.same_as(InputStamp(size=1, mtime_ns=1))  # switched to checksums: redo once
    assert InputStamp().same_as(InputStamp())  # remote asset without version information


def _start(m: Manifest, name: str, *, config_hash: str = "h1") -> None:
    m.mark_running(
        name,
        item=None,
        stamp=STAMP,
        config_hash=config_hash,
        gpkg=Path(f"/out/{name}.gpkg"),
        outputs=(Path(f"/out/{name}.gpkg"),),
        run_id="r1",
    )


def test_rows_survive_reopening_and_count_attempts(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    with Manifest(path, workflow="w") as m:
        _start(m, "a")
        m.mark_done("a", seconds=1.23456, features={"water": 3}, timings={"read": 0.5})
        _start(m, "b")
        m.mark_failed("b", seconds=0.1, error="cannot read 'b' as a raster")
        _start(m, "b")
        m.mark_failed("b", seconds=0.1, error="cannot read 'b' as a raster")
    with Manifest(path, workflow="w") as m:
        rows = m.records()
    assert rows["a"].status == "done" and rows["a"].seconds == 1.235
    assert rows["a"].features == {"water": 3} and rows["a"].gpkg == "/out/a.gpkg"
    assert rows["a"].started and rows["a"].finished
    assert (rows["b"].status, rows["b"].attempts) == ("failed", 2)
    assert rows["b"].error == "cannot read 'b' as a raster"
    with Manifest(path, workflow="w") as m:
        _start(m, "b", config_hash="h2")  # new settings: attempts start over
        assert m.get("b").attempts == 1  # type: ignore[union-attr]


def test_rows_left_running_by_a_killed_batch_become_pending(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    with Manifest(path, workflow="w") as m:
        _start(m, "a")
        _start(m, "b")
        m.mark_interrupted("b")  # clean stop: the attempt does not count
    with Manifest(path, workflow="w") as m:
        assert m.recover_running() == ["a"]
        rows = m.records()
    assert (rows["a"].status, rows["a"].attempts) == ("pending", 1)  # a kill counts
    assert (rows["b"].status, rows["b"].attempts) == ("pending", 0)
    assert rows["a"].error == "the batch was killed while it ran"
    assert rows["b"].error == "the batch was stopped while it ran"


def test_an_output_folder_belongs_to_one_workflow(tmp_path: Path) -> None:
    Manifest(tmp_path / MANIFEST_NAME, workflow="water").close()
    with pytest.raises(GeosegError, match="holds the outputs of workflow 'water', not 'roads'"):
        Manifest(tmp_path / MANIFEST_NAME, workflow="roads")


def test_reading_a_missing_manifest_creates_nothing(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "out", workflow="w") == ({}, False)
    assert not (tmp_path / "out").exists()
    with Manifest(tmp_path / MANIFEST_NAME, workflow="w") as m:
        _start(m, "a")
    records, live = read_manifest(tmp_path, workflow="w")
    assert records["a"].status == "running" and not live
    with pytest.raises(sqlite3.OperationalError):  # read-only really is read-only
        Manifest(tmp_path / MANIFEST_NAME, workflow="w", readonly=True)._db.execute(
            "DELETE FROM scenes"
        )


def _scene(folder: Path, name: str) -> Scene:
    gpkg = folder / f"{name}.gpkg"
    return Scene(input=name, label=name, gpkg=gpkg, outputs=(gpkg,), stamp=STAMP)


def test_a_scene_is_running_only_while_the_batch_that_started_it_holds_the_lock(
    tmp_path: Path,
) -> None:
    with Manifest(tmp_path / MANIFEST_NAME, workflow="w") as m:
        _start(m, "a")  # run r1
    scenes = [_scene(tmp_path, "a")]

    def status() -> tuple[str, str]:
        records, _ = read_manifest(tmp_path, workflow="w")
        (s,) = scene_statuses(
            scenes, records, config_hash="h1", max_attempts=3, holder=lock_holder(tmp_path)
        )
        return s.status, s.reason

    assert lock_holder(tmp_path) is None
    assert status() == ("pending", "interrupted: the batch was killed while it ran")
    with folder_lock(tmp_path, run_id="r1"):
        holder = lock_holder(tmp_path)
        assert holder is not None and (holder.pid, holder.run_id) == (os.getpid(), "r1")
        state, note = status()
        assert state == "running" and note.startswith("running since 20")
        assert note.endswith(f"(run r1, pid {os.getpid()})")
    with folder_lock(tmp_path, run_id="r2"):  # a newer batch: r1's row was left by a kill
        assert status() == ("pending", "interrupted: the batch was killed while it ran")


def test_outputs_of_earlier_runs_are_remembered_until_removed(tmp_path: Path) -> None:
    old, new = Path("/out/2026-01-01/a.gpkg"), Path("/out/2026-02-01/a.gpkg")
    with Manifest(tmp_path / MANIFEST_NAME, workflow="w") as m:
        _start(m, "a")
        m.mark_done("a", seconds=1, features={}, timings={})
        kw: dict = {"item": None, "stamp": STAMP, "config_hash": "h1", "run_id": "r2"}
        m.mark_running("a", gpkg=old, outputs=(old, old.with_suffix(".tif")), **kw)
        assert m.get("a").stale == ("/out/a.gpkg",)  # type: ignore[union-attr]
        m.mark_failed("a", seconds=1, error="boom")  # a failed run: its paths stay stale too
        m.mark_running("a", gpkg=new, outputs=(new, old.with_suffix(".tif")), **kw)
        assert m.get("a").stale == (  # type: ignore[union-attr]
            "/out/a.gpkg",
            "/out/2026-01-01/a.gpkg",
        )
        assert m.stale_done() == {}  # only done scenes' stale outputs are removed
        m.mark_done("a", seconds=1, features={}, timings={})
        assert m.stale_done() == {"a": ("/out/a.gpkg", "/out/2026-01-01/a.gpkg")}
        m.set_stale("a", [])
        assert m.stale_done() == {}


def test_a_manifest_from_before_the_stale_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE scenes (input TEXT PRIMARY KEY, item TEXT, size INTEGER, "
            "mtime_ns INTEGER, checksum TEXT, config_hash TEXT NOT NULL, status TEXT NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, gpkg TEXT, outputs TEXT, started TEXT, "
            "finished TEXT, seconds REAL, features TEXT, timings TEXT, error TEXT, run_id TEXT, "
            "updated TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO scenes (input, config_hash, status, outputs, updated) "
            "VALUES ('a', 'h1', 'done', '[\"/out/a.gpkg\"]', 'now')"
        )
    db.close()
    assert read_manifest(tmp_path, workflow="w")[0]["a"].stale == ()  # read-only: as it is
    with Manifest(path, workflow="w") as m:
        assert m.get("a").outputs == ("/out/a.gpkg",)  # type: ignore[union-attr]
        new = Path("/out/new/a.gpkg")
        m.mark_running(
            "a", item=None, stamp=STAMP, config_hash="h1", gpkg=new, outputs=(new,), run_id="r"
        )
        assert m.get("a").stale == ("/out/a.gpkg",)  # type: ignore[union-attr]


def test_only_recorded_files_inside_the_output_folder_are_removed(tmp_path: Path) -> None:
    out, day = tmp_path / "out", tmp_path / "out" / "2026-01-01"
    day.mkdir(parents=True)
    names = ["a.gpkg", "a_classes.tif", ".a.gpkg.journal", ".a_classes.tif.partial", "b.gpkg"]
    for name in names:
        (day / name).write_bytes(b"x")
    outside = tmp_path / "a.gpkg"
    outside.write_bytes(b"x")
    stale = [str(day / "a.gpkg"), str(day / "a_classes.tif"), str(day / "b.gpkg"), str(outside)]
    stale.append(str(out / "2026-01-01" / ".." / ".." / "a.gpkg"))  # normalised: outside too
    removed, retry = remove_outputs(stale, folder=out, keep=lambda p: p.endswith("b.gpkg"))
    assert removed == [day / "a.gpkg", day / "a_classes.tif"] and retry == []
    assert sorted(p.name for p in day.iterdir()) == ["b.gpkg"]  # kept: another scene's now
    assert outside.exists()
    remove_outputs([str(day / "b.gpkg")], folder=out, keep=lambda p: False)
    assert not day.exists() and out.is_dir()  # a subfolder left empty goes, the folder stays


def test_run_summaries_keep_the_newest(tmp_path: Path) -> None:
    start = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.json").write_text("{}")  # not a summary: never deleted
    paths = [
        write_run_summary(tmp_path, start + timedelta(days=i), {"i": i}, keep=3) for i in range(5)
    ]
    clash = write_run_summary(tmp_path, start + timedelta(days=4), {"i": 5}, keep=3)
    assert clash.name == "2026-11-29T03-00-00.000000Z-2.json"
    left = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert left == sorted([paths[3].name, paths[4].name, clash.name, "notes.json"])
    assert json.loads(clash.read_text()) == {"i": 5}


def test_the_batch_log_rolls_over_when_it_grows_too_big(tmp_path: Path) -> None:
    path = tmp_path / "geoseg-batch.log"
    for run in ("a", "b", "c"):
        log = BatchLog(path, run_id=run, max_bytes=300)
        for i in range(4):
            log.event("done", f"scene{i}.tif", "water=3")
        log.close()
    # a: 4 lines; b: appended (under 300 bytes when it opened); c: rolled the log over first
    assert [ln.split()[1] for ln in path.read_text().splitlines()] == ["run=c"] * 4
    old = (tmp_path / "geoseg-batch.log.1").read_text().splitlines()
    assert [ln.split()[1] for ln in old] == ["run=a"] * 4 + ["run=b"] * 4


def test_one_batch_at_a_time_per_output_folder(tmp_path: Path) -> None:
    assert not lock_is_held(tmp_path)
    with folder_lock(tmp_path):
        assert lock_is_held(tmp_path)
        with (
            pytest.raises(GeosegError, match=r"another batch is writing to .* \(pid \d+"),
            folder_lock(tmp_path),
        ):
            pass
    assert not lock_is_held(tmp_path)
    with folder_lock(tmp_path):  # released: the next run gets it
        pass


def test_stale_temporaries_of_this_workflow_are_removed_journals_kept(tmp_path: Path) -> None:
    names = [
        ".a.gpkg.partial.gpkg",
        ".a.gpkg.partial.gpkg-journal",
        ".a_classes.tif.partial",
        ".a.gpkg.journal",  # block journal: the next run resumes from it
        ".other.gpkg.partial.gpkg",  # not an output of this workflow
        "a.gpkg",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    scene = Scene(
        input="/data/a.tif",
        label="a.tif",
        gpkg=tmp_path / "a.gpkg",
        outputs=(tmp_path / "a.gpkg", tmp_path / "a_classes.tif"),
        stamp=STAMP,
    )
    assert clean_partials([scene]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


def test_the_batch_log_and_run_summaries_never_write_through_a_link(tmp_path: Path) -> None:
    """Before: the log was opened for appending and the summary written to a predictable
    .<name>.partial, both through links another user could plant in a shared folder."""
    from geoseg.errors import OutputWriteError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "geoseg-batch.log").symlink_to(victim)
    with pytest.raises(OutputWriteError, match=r"cannot write the batch log .* remove it"):
        BatchLog(tmp_path / "geoseg-batch.log", run_id="r")
    start = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".2026-11-25T03-00-00.000000Z.json.partial").symlink_to(victim)
    path = write_run_summary(tmp_path, start, {"i": 1})
    assert json.loads(path.read_text()) == {"i": 1} and victim.read_text() == "precious"


def test_the_folder_lock_and_manifest_never_write_through_a_link(tmp_path: Path) -> None:
    """Before: the batch lock was opened "a+" and truncated: a link planted at its name in a
    shared output folder emptied the file it pointed to."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".geoseg-batch.lock").symlink_to(victim)
    with pytest.raises(GeosegError, match="cannot take the batch lock"), folder_lock(tmp_path):
        pass
    (tmp_path / "geoseg-manifest.sqlite").symlink_to(victim)
    with pytest.raises(GeosegError, match="is a symbolic link"):
        Manifest(tmp_path / "geoseg-manifest.sqlite", workflow="w")
    assert victim.read_text() == "precious"
