"""The batch manifest: what a re-run does with each scene, crash recovery, the folder lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from geoseg.errors import GeosegError
from geoseg.manifest import (
    MANIFEST_NAME,
    InputStamp,
    Manifest,
    Scene,
    SceneRecord,
    clean_partials,
    decide,
    folder_lock,
    lock_is_held,
    read_manifest,
)

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


def _decide(record: SceneRecord | None, outputs: tuple[Path, Path], **kw: object) -> str:
    args: dict = {"stamp": STAMP, "config_hash": "h1", "outputs": outputs, "max_attempts": 3}
    args.update(kw)
    d = decide(record, **args)
    return f"{d.action}: {d.reason}"


def test_decide_does_what_is_missing_and_nothing_twice(outputs: tuple[Path, Path]) -> None:
    gpkg, raster = outputs
    done = _record(gpkg=str(gpkg), outputs=(str(gpkg), str(raster)))
    assert _decide(None, outputs) == "run: new"
    assert _decide(done, outputs) == "skip: up to date"
    assert _decide(done, outputs, stamp=InputStamp(size=100, mtime_ns=2)) == "run: input changed"
    assert _decide(done, outputs, config_hash="h2") == "run: config changed"
    assert _decide(done, (gpkg.with_name("b.gpkg"), raster)) == "run: outputs changed"
    assert _decide(done, (gpkg,)) == "run: outputs changed"  # e.g. raster: false now
    raster.unlink()
    assert _decide(done, outputs) == "run: outputs missing"


def test_decide_retries_failed_scenes_up_to_the_limit(outputs: tuple[Path, Path]) -> None:
    assert _decide(_record(status="failed", attempts=1), outputs) == "run: retry 2 of 3"
    exhausted = _record(status="failed", attempts=3)
    assert _decide(exhausted, outputs) == "give-up: gave up after 3 attempts"
    assert _decide(exhausted, outputs, retry_failed=True).startswith("run: retry (retries used")
    # A changed input or config starts over, whatever the attempts.
    assert _decide(exhausted, outputs, config_hash="h2") == "run: config changed"
    assert _decide(_record(status="pending", attempts=1), outputs) == "run: interrupted"
    assert _decide(_record(status="pending", attempts=3), outputs).startswith("give-up")


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
    assert "interrupted" in (rows["a"].error or "")


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
