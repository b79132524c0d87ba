"""An attached cluster (``--scheduler tcp://...``) that cannot run the job fails in seconds,
in one line naming the worker and the remedy, before any work."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

import geoseg.scheduler
from geoseg.cli import main
from geoseg.errors import ClusterError
from geoseg.scheduler import open_execution, preflight
from tests.helpers import write_scene

# A worker preload that hides geoseg, as on a machine where it is not installed.
_HIDE_GEOSEG = """
import sys


class _NoGeoseg:
    def find_spec(self, name, path=None, target=None):
        if name == "geoseg" or name.startswith("geoseg."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, _NoGeoseg())
for name in [m for m in sys.modules if m == "geoseg" or m.startswith("geoseg.")]:
    del sys.modules[name]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One real worker process, reached by its address as an external cluster would be."""
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    ) as c:
        yield c


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    path = tmp_path / "s.tif"
    write_scene(path, 32, 32, seed=1)
    return path


def _cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stderr.splitlines()


def test_a_ready_cluster_passes(cluster: LocalCluster, scene: Path, tiny_model: Path) -> None:
    with Client(cluster.scheduler_address) as client:
        assert preflight(client, address="x", scene=str(scene), models=(str(tiny_model),)) == 1


def test_a_scheduler_without_workers_fails_in_seconds(
    scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the run waited for ever, silently."""
    monkeypatch.setattr(geoseg.scheduler, "WORKER_WAIT_S", 2.0)
    with LocalCluster(
        n_workers=0, processes=False, dashboard_address=":0", silence_logs=logging.CRITICAL
    ) as empty:
        address = empty.scheduler_address
        t0 = time.perf_counter()
        code, lines = _cli(
            "run", str(scene), "-c", "water", "-m", "ndwi", "--bands", "2,4",
            "-o", str(tmp_path / "o.gpkg"), "--scheduler", address,
        )  # fmt: skip
        assert time.perf_counter() - t0 < 15
    assert code == 1
    assert lines == [
        f"geoseg: error: the Dask scheduler at {address} has no workers (waited 2 s); "
        f"start some (dask worker {address}) and run again"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_a_worker_without_geoseg_is_named_with_the_remedy(scene: Path, tmp_path: Path) -> None:
    """Before: the worker died unpickling its first task and the client waited for ever."""
    hide = tmp_path / "hide_geoseg.py"
    hide.write_text(_HIDE_GEOSEG)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
        preload=[str(hide)],
    ) as bare:
        address = bare.scheduler_address
        t0 = time.perf_counter()
        code, lines = _cli(
            "run", str(scene), "-c", "water", "-m", "ndwi", "--bands", "2,4",
            "-o", str(tmp_path / "o.gpkg"), "--scheduler", address,
        )  # fmt: skip
        assert time.perf_counter() - t0 < 30
    assert code == 1, lines
    assert len(lines) == 1
    assert lines[0].startswith(f"geoseg: error: worker {address.rsplit(':', 1)[0]}")
    assert "cannot import geoseg (ModuleNotFoundError: No module named 'geoseg')" in lines[0]
    assert lines[0].endswith(
        f"install geoseg {geoseg.__version__} in the workers' Python environment"
    )
    assert not (tmp_path / "o.gpkg").exists()


def _patch_on_worker(client: Client, what: str) -> None:
    """Change a worker's geoseg, as a worker on another machine may differ."""

    def patch(what: str = what) -> None:
        import geoseg
        import geoseg.tiling.io
        from geoseg.errors import SceneReadError

        saved = (geoseg.__version__, geoseg.tiling.io.read_scene_info)
        geoseg._preflight_saved = saved  # type: ignore[attr-defined]
        if what == "version":
            geoseg.__version__ = "0.0.1"
        else:

            def missing(path: str) -> None:
                raise SceneReadError(f"scene {path!r} does not exist")

            geoseg.tiling.io.read_scene_info = missing  # type: ignore[assignment]

    def restore() -> None:
        import geoseg
        import geoseg.tiling.io

        geoseg.__version__, geoseg.tiling.io.read_scene_info = geoseg._preflight_saved  # type: ignore[attr-defined]

    client.run(patch)
    _RESTORE.append(lambda: client.run(restore))


_RESTORE: list[object] = []


@pytest.mark.parametrize(
    ("what", "message"),
    [
        (
            "version",
            "runs geoseg 0.0.1, this client {version}; install the same geoseg version on the "
            "client and every worker",
        ),
        (
            "scene",
            "cannot use this run's inputs: scene '{scene}' does not exist; the scene and model "
            "files must be readable by every worker at the same path (a shared file system, or "
            "a GDAL virtual path such as /vsis3/... or https://...)",
        ),
    ],
)
def test_a_worker_that_differs_is_named_with_the_remedy(
    cluster: LocalCluster, scene: Path, tmp_path: Path, what: str, message: str
) -> None:
    """Before: a scene only the client could see failed as "does not exist" from a block,
    with no hint that a worker said it; another geoseg version failed anyhow."""
    address = cluster.scheduler_address
    with Client(address) as client:
        _patch_on_worker(client, what)
        try:
            code, lines = _cli(
                "run", str(scene), "-c", "water", "-m", "ndwi", "--bands", "2,4",
                "-o", str(tmp_path / "o.gpkg"), "--scheduler", address,
            )  # fmt: skip
        finally:
            while _RESTORE:
                _RESTORE.pop()()  # type: ignore[operator]
    assert code == 1, lines
    (line,) = lines
    worker = next(iter(cluster.scheduler_info["workers"]))
    expected = message.format(version=geoseg.__version__, scene=scene)
    assert line.startswith(f"geoseg: error: worker {worker} (") and line.endswith(expected), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_attaching_waits_only_as_long_as_it_must(cluster: LocalCluster) -> None:
    t0 = time.perf_counter()
    with open_execution(cluster.scheduler_address) as ex:
        assert ex.client is not None
    assert time.perf_counter() - t0 < 10


def test_preflight_reports_an_unanswering_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    class Silent:
        def run(self, *args: object, **kwargs: object) -> None:
            raise TimeoutError

    with pytest.raises(ClusterError, match=r"did not answer geoseg's pre-flight check within 5 s"):
        preflight(Silent(), address="tcp://h:1", scene=None, timeout=5)
