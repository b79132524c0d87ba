"""One run per output: the lock beside it, stale locks, every way out of a run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.config import InferenceOptions, RunConfig
from geoseg.errors import OutputWriteError
from geoseg.run.lock import OutputLockedError, lock_holder, output_lock
from geoseg.run.pipeline import run_scene
from tests.helpers import write_scene

_HOLD = """
import sys
from geoseg.run.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def _config(**kw: object) -> RunConfig:
    base: dict[str, object] = {
        "classes": ("water",),
        "models": ("ndwi",),
        "bands": (2, 4),
        "smooth": "none",
        "block": 64,
    }
    return RunConfig(**(base | kw))  # type: ignore[arg-type]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_second_run_refuses_then_a_dead_holders_lock_is_replaced(tmp_path: Path) -> None:
    """Before: both runs used .o_classes.tif.partial; one committed an all-no-data raster."""
    scene = tmp_path / "s.tif"
    write_scene(scene, 64, 64, seed=1)
    out = tmp_path / "o.gpkg"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path / ".o.gpkg.lock") is not None
        args = ["run", str(scene), "-c", "water", "-m", "ndwi", "--bands", "2,4"]
        args += ["-o", str(out), "--scheduler", "sync"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines() == [
            f"geoseg: error: another geoseg run (pid {holder.pid} on {socket.gethostname()} "
            f"since {lock_holder(tmp_path / '.o.gpkg.lock').since}) is writing "  # type: ignore[union-attr]
            f"{str(out)!r}; wait for it to finish or choose another -o"
        ]
        assert _files(tmp_path) == [".o.gpkg.lock", "s.tif"], "nothing of its own was written"
        holder.send_signal(signal.SIGKILL)  # dies holding it: no release
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (tmp_path / ".o.gpkg.lock").exists() and lock_holder(tmp_path / ".o.gpkg.lock") is None
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) == ["o.gpkg", "o_classes.qml", "o_classes.tif", "s.tif"]


@pytest.mark.parametrize("how", ["return", "error", "Ctrl-C"])
def test_the_lock_is_released_on_every_way_out(tmp_path: Path, how: str) -> None:
    out = tmp_path / "o.gpkg"

    class Boom(Exception):
        pass

    raised = {"return": None, "error": Boom, "Ctrl-C": KeyboardInterrupt}[how]
    try:
        with output_lock(out) as lock:
            assert lock.exists() and lock.read_text().startswith(f"pid {os.getpid()} host ")
            if raised is not None:
                raise raised
    except (Boom, KeyboardInterrupt):
        pass
    assert _files(tmp_path) == []
    with output_lock(out):  # free again
        pass


def test_run_scene_interrupted_releases_its_lock_and_keeps_only_the_journal(
    tmp_path: Path,
) -> None:
    scene = tmp_path / "s.tif"
    write_scene(scene, 160, 160, seed=1)

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    config = _config(inference=InferenceOptions(tile=64))
    with pytest.raises(KeyboardInterrupt):
        run_scene(scene, tmp_path / "o.gpkg", config, progress=stop)
    assert _files(tmp_path) == [".o.gpkg.journal", "s.tif"]


def test_another_thread_of_the_process_is_refused_the_same_thread_reenters(
    tmp_path: Path,
) -> None:
    out = tmp_path / "o.gpkg"
    seen: list[BaseException] = []
    with output_lock(out), output_lock(out):  # the CLI takes it, then run_scene again

        def other() -> None:
            try:
                with output_lock(out):
                    pass
            except OutputLockedError as err:
                seen.append(err)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(seen) == 1 and "another run in this process is writing" in str(seen[0])
    assert _files(tmp_path) == []


def test_a_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / ".o.gpkg.lock"
    lock.write_text("pid 1 host elsewhere.example since 2026-01-01T00:00:00Z\n")
    with (
        pytest.raises(OutputLockedError, match=r"locked by a geoseg run on elsewhere\.example"),
        output_lock(tmp_path / "o.gpkg"),
    ):
        pass
    assert lock.read_text().startswith("pid 1 host elsewhere.example")


def test_a_full_disk_or_a_read_only_folder_is_one_error_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import geoseg.run.lock

    def full(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(geoseg.run.lock, "create_temporary", full)
    with (
        pytest.raises(OutputWriteError, match=r"^no space left on '.*'$"),
        output_lock(tmp_path / "o.gpkg"),
    ):
        pass

    def denied(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(geoseg.run.lock, "create_temporary", denied)
    with (
        pytest.raises(OutputWriteError, match=r"is not writable \(Read-only file system\)"),
        output_lock(tmp_path / "o.gpkg"),
    ):
        pass
    assert _files(tmp_path) == []
