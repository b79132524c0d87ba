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

import geoseg.manifest
from geoseg.cli import main
from geoseg.manifest import MANIFEST_NAME
from geoseg.workflow import load_workflow, run_workflow
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
    real = geoseg.manifest.run_scene

    def spy(scene: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(scene).name)
        return real(scene, *args, **kwargs)

    monkeypatch.setattr(geoseg.manifest, "run_scene", spy)
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
    last = json.loads(runs[-1].read_text())
    assert last["counts"] == {"scenes": 4, "ran": 1, "done": 3, "failed": 1, "pending": 0}
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
    real: Callable[..., Any] = geoseg.manifest.run_scene

    def counting(scene: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            active[0] += 1
            seen.append((active[0], kwargs["max_in_flight"], kwargs["client"] is not None))
        try:
            return real(scene, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(geoseg.manifest, "run_scene", counting)
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
