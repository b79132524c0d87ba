"""`geoseg batch` end to end: isolation of bad scenes, re-runs, kills, a shared LocalCluster."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyogrio
import pytest
import rasterio
from click.testing import CliRunner

import geoseg.batch.runner
from geoseg.batch.manifest import MANIFEST_NAME
from geoseg.batch.runner import run_workflow
from geoseg.batch.workflow_file import load_workflow
from geoseg.cli import main
from geoseg.errors import GeosegError
from tests.helpers import write_scene

WORKFLOW = """\
version: 1
inputs:
  glob: scenes/*.tif
classes: [water]
models: {{water: ndwi}}
bands: [2, 4]
smoothing: {{method: none}}
min_area_m2: 0
output: {{folder: out}}
scheduler: sync
retries: 2
{extra}"""


def _batch(tmp_path: Path, n: int, *, size: int = 48, corrupt: str = "", extra: str = "") -> Path:
    scenes = tmp_path / "scenes"
    scenes.mkdir(exist_ok=True)
    for i in range(n):
        write_scene(scenes / f"s{i}.tif", size, size, seed=i)
    if corrupt:
        (scenes / corrupt).write_bytes(b"II*\x00 truncated, not a GeoTIFF")
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW.format(extra=extra))
    return path


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _status(wf: Path) -> dict[str, dict[str, Any]]:
    code, out, err = _cli("batch", "status", str(wf), "--json")
    assert code == 0, err
    return {Path(r["input"]).stem: r for r in json.loads(out)}


def _fingerprints(folder: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of every finished output: unchanged means not rewritten."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.suffix in (".gpkg", ".tif")
    }


@pytest.fixture
def run_scene_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The scenes the batch really ran ``run_scene`` for."""
    calls: list[str] = []
    real = geoseg.batch.runner.run_scene

    def spy(scene: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(scene).name)
        return real(scene, *args, **kwargs)

    monkeypatch.setattr(geoseg.batch.runner, "run_scene", spy)
    return calls


def _assert_complete_or_absent(out: Path) -> None:
    """Every output that looks finished opens with all its layers; the rest is hidden."""
    for gpkg in out.glob("*.gpkg"):
        assert "water" in [name for name, _ in pyogrio.list_layers(gpkg)], gpkg
        assert len(pyogrio.read_dataframe(gpkg, layer="water")) > 0
    for tif in out.glob("*.tif"):
        with rasterio.open(tif) as src:
            src.read(1)


def test_a_bad_scene_fails_alone_and_a_rerun_only_retries_it(
    tmp_path: Path, run_scene_calls: list[str]
) -> None:
    wf = _batch(tmp_path, 4, corrupt="s2.tif")
    out = tmp_path / "out"
    code, _, err = _cli("batch", str(wf))
    assert code == 1, err
    rows = _status(wf)
    assert {k: r["status"] for k, r in rows.items()} == {
        "s0": "done",
        "s1": "done",
        "s2": "failed",
        "s3": "done",
    }
    assert rows["s2"]["error"].startswith(f"cannot read '{tmp_path / 'scenes' / 's2.tif'}' as a")
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["s0.gpkg", "s1.gpkg", "s3.gpkg"]
    assert not list(out.glob(".*partial*"))
    _assert_complete_or_absent(out)
    table = _cli("batch", "status", str(wf))[1]
    assert "3 done, 1 failed" in table and "retry 2 of 3: cannot read" in table

    before, timings = _fingerprints(out), {k: (r["started"], r["seconds"]) for k, r in rows.items()}
    run_scene_calls.clear()
    code, _, err = _cli("batch", "run", str(wf))
    assert code == 1, err
    assert run_scene_calls == ["s2.tif"]  # nothing done is recomputed
    assert _fingerprints(out) == before
    rows = _status(wf)
    assert {k: (r["started"], r["seconds"]) for k, r in rows.items() if k != "s2"} == {
        k: v for k, v in timings.items() if k != "s2"
    }
    assert (rows["s2"]["status"], rows["s2"]["attempts"]) == ("failed", 2)

    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2
    first, last = (json.loads(r.read_text()) for r in runs)
    counts = {"scenes": 4, "ran": 1, "stopped": 0, "done": 3, "failed": 1, "pending": 0}
    assert last["counts"] == counts and last["error"] is None
    # Each scene's note says what this run did with it; "next" what the next run will do.
    notes = {Path(s["input"]).stem: (s["note"], s["next"]) for s in last["scenes"]}
    assert notes["s2"] == ("retry 2 of 3: failed", "run: retry 3 of 3")
    assert notes["s0"] == ("skipped: up to date", "skip: up to date")
    assert first["scenes"][0]["note"].startswith("new: done in ")
    assert first["scenes"][0]["outcome"] == "done" and last["scenes"][0]["seconds"] is None
    log = [line.split(maxsplit=4) for line in (out / "geoseg-batch.log").read_text().splitlines()]
    events = [(kind, scene) for _, _, kind, scene, *_ in log]
    assert events.count(("done", "scenes/s0.tif")) == 1
    assert events.count(("failed", "scenes/s2.tif")) == 2
    assert [kind for kind, _ in events].count("begin") == 2
    assert all(line[4].startswith("cannot read") for line in log if line[2] == "failed")

    (tmp_path / "scenes" / "s2.tif").unlink()  # the scene is fixed upstream
    write_scene(tmp_path / "scenes" / "s2.tif", 48, 48, seed=2)
    run_scene_calls.clear()
    assert _cli("batch", str(wf))[0] == 0
    assert run_scene_calls == ["s2.tif"]
    assert {r["status"] for r in _status(wf).values()} == {"done"}


def test_changes_rerun_exactly_the_affected_scenes(
    tmp_path: Path, run_scene_calls: list[str]
) -> None:
    wf = _batch(tmp_path, 3)
    out = tmp_path / "out"
    assert _cli("batch", str(wf))[0] == 0
    assert run_scene_calls == ["s0.tif", "s1.tif", "s2.tif"]

    def rerun() -> list[str]:
        run_scene_calls.clear()
        code, _, err = _cli("batch", str(wf), "-q")
        assert code == 0, err
        return sorted(run_scene_calls)

    s1 = tmp_path / "scenes" / "s1.tif"
    os.utime(s1, ns=(s1.stat().st_atime_ns, s1.stat().st_mtime_ns + 10**9))  # touched
    assert rerun() == ["s1.tif"]
    (out / "s2_classes.tif").unlink()  # outputs missing: not done
    assert rerun() == ["s2.tif"]
    write_scene(tmp_path / "scenes" / "s3.tif", 48, 48, seed=3)  # a new acquisition
    assert _status(wf)["s3"]["status"] == "pending"
    assert rerun() == ["s3.tif"]
    # How it runs is not what it computes: no rerun.
    wf.write_text(wf.read_text().replace("retries: 2", "retries: 0\nconcurrency: 3"))
    assert rerun() == []
    # What it computes changed: every scene again, its own outputs replaced.
    before = _fingerprints(out)
    wf.write_text(wf.read_text().replace("min_area_m2: 0", "min_area_m2: 2000"))
    assert rerun() == ["s0.tif", "s1.tif", "s2.tif", "s3.tif"]
    assert all(before[k] != v for k, v in _fingerprints(out).items())
    assert rerun() == []


def test_outputs_the_workflow_did_not_write_are_not_replaced(
    tmp_path: Path,
) -> None:
    wf = _batch(tmp_path, 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s0.gpkg").write_bytes(b"someone else's work")
    assert _cli("batch", str(wf))[0] == 1
    error = _status(wf)["s0"]["error"]
    assert "exists and was not written by this workflow; set output.overwrite: true" in error
    assert (tmp_path / "out" / "s0.gpkg").read_bytes() == b"someone else's work"
    wf.write_text(wf.read_text().replace("{folder: out}", "{folder: out, overwrite: true}"))
    assert _cli("batch", str(wf))[0] == 0
    _assert_complete_or_absent(tmp_path / "out")


def _manifest_rows(out: Path) -> dict[str, str]:
    path = out / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT input, status FROM scenes").fetchall())
    except sqlite3.OperationalError:  # created but no table yet
        return {}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_batch_loses_no_finished_scene_and_a_rerun_completes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    n = 8
    extra = "tiling: {block: 64, tile: 64, overlap: 0}\nconcurrency: 1\n"
    wf = _batch(tmp_path, n, size=320, extra=extra)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoseg.cli", "batch", str(wf), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # kill once a scene is done and another is being written
            rows = _manifest_rows(out)
            done = [k for k, v in rows.items() if v == "done"]
            if 1 <= len(done) < n and list(out.glob(".s*")):
                running = [r for r in _status(wf).values() if r["status"] == "running"]
                if running:  # status tells the scene the live batch is on
                    assert running[0]["note"].startswith("running since 20")
                    assert f"pid {proc.pid})" in running[0]["note"]
                    break
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = _manifest_rows(out)
    done = {Path(k).stem for k, v in rows.items() if v == "done"}
    assert 1 <= len(done) < n
    if sig == signal.SIGTERM:  # a clean stop: exit 130, nothing left running, no temporaries
        assert proc.returncode == 130, stderr.decode()
        assert "interrupted" in stderr.decode()
        assert "running" not in rows.values()
        assert not list(out.glob(".*partial*"))
        assert "stopped" in (out / "geoseg-batch.log").read_text()
    else:
        assert proc.returncode == -signal.SIGKILL
        assert list(out.glob(".s*"))  # what it was writing is left, under hidden names
        (killed,) = [Path(k).stem for k, v in rows.items() if v == "running"]
        row = _status(wf)[killed]  # no batch holds the folder: not "running" any more
        assert (row["status"], row["note"]) == (
            "pending",
            "interrupted: the batch was killed while it ran",
        )
    _assert_complete_or_absent(out)
    finished = {
        k: v for k, v in _fingerprints(out).items() if Path(k).stem.removesuffix("_classes") in done
    }
    assert len(finished) == 2 * len(done)

    code, _, err = _cli("batch", str(wf), "-q")
    assert code == 0, err
    assert {r["status"] for r in _status(wf).values()} == {"done"}
    assert len(_status(wf)) == n
    after = _fingerprints(out)
    assert {k: after[k] for k in finished} == finished  # no finished scene redone or lost
    assert len(after) == 2 * n
    assert not [p.name for p in out.iterdir() if p.name.startswith(".s")]  # no temporaries
    _assert_complete_or_absent(out)


def test_scenes_share_one_local_cluster_within_the_block_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = "workers: 1\nthreads: 2\nconcurrency: 2\ntiling: {block: 64, tile: 64, overlap: 0}\n"
    wf = _batch(tmp_path, 4, size=160, extra=extra)
    wf.write_text(wf.read_text().replace("scheduler: sync", "scheduler: local"))
    lock, active, seen = threading.Lock(), [0], []
    real: Callable[..., Any] = geoseg.batch.runner.run_scene

    def counting(scene: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            active[0] += 1
            ex = kwargs["execution"]
            seen.append((active[0], kwargs["max_in_flight"], ex.client is not None))
        try:
            return real(scene, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(geoseg.batch.runner, "run_scene", counting)
    result = run_workflow(load_workflow(wf))
    assert result.exit_code == 0 and result.count("done") == 4
    assert max(a for a, _, _ in seen) == 2  # two scenes at once on one cluster ...
    assert {(m, c) for _, m, c in seen} == {(2, True)}  # ... 2 blocks each: 2 x 2 threads
    summary = json.loads(result.summary.read_text())
    assert summary["cluster"].startswith("1 local worker(s) x 2 threads")

    # The same polygons as one scene at a time in-process.
    sync = tmp_path / "sync.yaml"
    sync.write_text(
        wf.read_text()
        .replace("scheduler: local", "scheduler: sync")
        .replace("folder: out", "folder: out-sync")
    )
    run_workflow(load_workflow(sync))
    for i in range(4):
        a = pyogrio.read_dataframe(tmp_path / "out" / f"s{i}.gpkg", layer="water")
        b = pyogrio.read_dataframe(tmp_path / "out-sync" / f"s{i}.gpkg", layer="water")
        assert a.geometry.to_wkb().tolist() == b.geometry.to_wkb().tolist()


# Run the CLI with SIGINT raising KeyboardInterrupt, as in a terminal, even if the test
# runner ignores SIGINT (its Dask workers then start with Python's SIGINT handler too).
_AS_IN_A_TERMINAL = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from geoseg.cli import main; sys.exit(main())"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_batch_on_a_local_cluster_stops_at_once_and_says_so_in_one_line(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C in a terminal, or ``kill -TERM -PGID``: the signal reaches every process of the
    group, the Dask workers too. They must neither die noisily nor hang the batch."""
    n = 6
    extra = "tiling: {block: 64, tile: 64, overlap: 0}\nworkers: 1\nthreads: 1\nconcurrency: 1\n"
    wf = _batch(tmp_path, n, size=320, extra=extra)
    wf.write_text(wf.read_text().replace("scheduler: sync", "scheduler: local"))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_IN_A_TERMINAL, "batch", str(wf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # once a scene is done and another is being written
            done = [k for k, v in _manifest_rows(out).items() if v == "done"]
            if 1 <= len(done) < n and list(out.glob(".s*.partial*")):
                break
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    err = stderr.decode()
    assert proc.returncode == 130, err
    *lines, last = err.splitlines()
    assert all(line.startswith("geoseg: done scenes/") for line in lines), err  # no traceback
    assert last.startswith("geoseg: wf: interrupted; ") and "done scenes are kept" in last.lower()
    assert f"`geoseg batch {wf}` does the " in last, last
    assert stopped_in < 15, f"took {stopped_in:.1f} s to stop"
    for _ in range(50):  # the workers are gone with the batch
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the batch outlived it")

    rows = _manifest_rows(out)
    assert "running" not in rows.values() and not list(out.glob(".*partial*"))
    (summary,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert summary["interrupted"] and summary["cluster"].startswith("1 local worker(s)")
    counts = summary["counts"]
    assert counts["ran"] == counts["done"] >= 1 and counts["done"] + counts["pending"] == n
    outcomes = {s["outcome"] for s in summary["scenes"]}
    assert outcomes <= {"done", "stopped", "not started"} and "not started" in outcomes
    stopped = [s for s in summary["scenes"] if s["outcome"] == "stopped"]
    assert counts["stopped"] == len(stopped)
    assert all(s["note"] == "new: stopped (batch interrupted)" for s in stopped)
    log = (out / "geoseg-batch.log").read_text().splitlines()
    assert log[-1].split()[2] == "interrupted"

    before = _fingerprints(out)
    wf.write_text(wf.read_text().replace("scheduler: local", "scheduler: sync"))  # quicker
    code, _, err = _cli("batch", str(wf), "-q")
    assert code == 0, err
    assert {r["status"] for r in _status(wf).values()} == {"done"}
    assert {k: v for k, v in _fingerprints(out).items() if k in before} == before
    _assert_complete_or_absent(out)


def _set_date(path: Path, day: str) -> None:
    t = time.mktime(time.strptime(f"{day} 12", "%Y-%m-%d %H"))
    os.utime(path, (t, t))


def test_a_redone_scene_removes_the_outputs_its_earlier_run_left(tmp_path: Path) -> None:
    wf = _batch(tmp_path, 2)
    wf.write_text(
        wf.read_text().replace("{folder: out}", '{folder: out, name: "{date}/{stem}.gpkg"}')
    )
    out, scenes = tmp_path / "out", tmp_path / "scenes"
    for i in range(2):
        _set_date(scenes / f"s{i}.tif", "2026-01-01")
    assert _cli("batch", str(wf), "-q")[0] == 0
    jan = out / "2026-01-01"
    assert sorted(p.name for p in jan.iterdir()) == [
        f"s{i}{end}" for i in range(2) for end in (".gpkg", "_classes.qml", "_classes.tif")
    ]
    (jan / "notes.txt").write_text("mine")  # the manifest never recorded it: never touched

    _set_date(scenes / "s0.tif", "2026-02-01")  # a new acquisition date: a new output path
    assert _cli("batch", str(wf), "-q")[0] == 0
    assert sorted(p.name for p in (out / "2026-02-01").iterdir()) == [
        "s0.gpkg",
        "s0_classes.qml",
        "s0_classes.tif",
    ]
    assert sorted(p.name for p in jan.iterdir()) == [
        "notes.txt",
        "s1.gpkg",
        "s1_classes.qml",
        "s1_classes.tif",
    ]
    log = (out / "geoseg-batch.log").read_text()
    assert "removed  scenes/s0.tif earlier outputs: 2026-01-01/s0.gpkg, " in log

    # No class raster any more: the rasters go; a flat name: the date folders go (when empty).
    wf.write_text(
        wf.read_text().replace('name: "{date}/{stem}.gpkg"}', 'name: "{stem}.gpkg", raster: false}')
    )
    assert _cli("batch", str(wf), "-q")[0] == 0
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sorted(p.relative_to(out).as_posix() for p in files) == [
        "2026-01-01/notes.txt",
        "geoseg-batch.log",
        "geoseg-manifest.sqlite",
        *[f"runs/{p.name}" for p in sorted((out / "runs").iterdir())],
        "s0.gpkg",
        "s1.gpkg",
    ]
    _assert_complete_or_absent(out)

    # A batch killed after committing a scene, before removing its earlier outputs: the
    # manifest still lists them, and the next run removes them first.
    left = out / "s1_classes.tif"
    left.write_bytes(b"left by the run before")
    with sqlite3.connect(out / MANIFEST_NAME) as db:
        db.execute(
            "UPDATE scenes SET stale = ? WHERE input = ?",
            (json.dumps([str(left)]), str(scenes / "s1.tif")),
        )
    db.close()
    assert _cli("batch", str(wf), "-q")[0] == 0
    assert not left.exists()


def test_outputs_that_change_hands_between_scenes_are_not_removed(tmp_path: Path) -> None:
    """s0's old name is s1's new one (and back): each scene's earlier output is the other's."""
    wf = _batch(tmp_path, 2)
    wf.write_text(wf.read_text().replace("{folder: out}", '{folder: out, name: "{date}.gpkg"}'))
    scenes, out = tmp_path / "scenes", tmp_path / "out"
    _set_date(scenes / "s0.tif", "2026-01-01")
    _set_date(scenes / "s1.tif", "2026-02-01")
    assert _cli("batch", str(wf), "-q")[0] == 0
    _set_date(scenes / "s0.tif", "2026-02-01")
    _set_date(scenes / "s1.tif", "2026-01-01")
    code, _, err = _cli("batch", str(wf), "-q")
    assert code == 0, err  # neither is refused as "not written by this workflow"
    for day, scene in (("2026-01-01", "s1.tif"), ("2026-02-01", "s0.tif")):
        with sqlite3.connect(out / f"{day}.gpkg") as db:
            (source,) = db.execute(
                "SELECT value FROM geoseg_provenance WHERE key = 'input_path'"
            ).fetchone()
        assert Path(source).name == scene
        assert (out / f"{day}_classes.tif").is_file()
    assert "removed" not in (out / "geoseg-batch.log").read_text()


def test_a_run_that_cannot_start_says_why_in_its_log_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = _batch(tmp_path, 2)
    wf.write_text(wf.read_text().replace("scheduler: sync", "scheduler: tcp://10.0.0.1:8786"))
    reason = "cannot reach the Dask scheduler at tcp://10.0.0.1:8786: timed out after 20 s"

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise GeosegError(reason)

    monkeypatch.setattr(geoseg.batch.runner, "open_execution", unreachable)
    code, _, err = _cli("batch", str(wf))
    assert code == 1 and err.strip() == f"geoseg: error: {reason}"
    log = (tmp_path / "out" / "geoseg-batch.log").read_text().splitlines()
    assert log[-2].split(maxsplit=4)[2:] == ["error", str(wf), reason]
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json")]
    assert summary["error"] == reason and summary["cluster"] == "none"
    assert summary["counts"]["ran"] == 0 and summary["counts"]["pending"] == 2
    assert {s["note"] for s in summary["scenes"]} == {"not started: the run failed (see error)"}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "-v"])
def test_batch_workers_log_like_a_run_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool
) -> None:
    """A local cluster's workers log to the terminal: CRITICAL unless -v, as for `geoseg run`
    (at ERROR, a worker's heartbeat to the scheduler of an interrupted batch, already closed,
    reached the user as a traceback)."""
    import logging

    levels = []
    real = geoseg.batch.runner.open_execution

    def recording(*args: Any, **kwargs: Any) -> Any:
        levels.append(kwargs.get("worker_log_level"))
        return real(*args, **kwargs)

    monkeypatch.setattr(geoseg.batch.runner, "open_execution", recording)
    wf = _batch(tmp_path, 1)
    code, _, err = _cli("batch", "run", str(wf), *(["-v"] if verbose else []))
    assert code == 0, err
    assert levels == [logging.INFO if verbose else logging.CRITICAL]
