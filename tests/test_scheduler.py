"""Dask scheduling on real LocalClusters: worker counts, GPU resources, thread budget."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyogrio
import pytest
import rasterio
from distributed import Client, LocalCluster

import geoseg.scheduler
from geoseg.config import InferenceOptions, RunConfig
from geoseg.errors import ConfigError, SceneReadError, WorkerLostError
from geoseg.run.pipeline import plan_run, run_scene
from geoseg.scheduler import (
    GPU,
    Execution,
    check_address,
    cpu_cluster_shape,
    gpu_worker_specs,
    open_execution,
    task_resources,
)


@contextmanager
def _process_cluster(workers: int) -> Iterator[Client]:
    """A client of a real LocalCluster of single-thread worker processes, logs silenced."""
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _read(gpkg: Path) -> dict[str, list[tuple[bytes, float]]]:
    out = {}
    for layer in ("water", "roads"):
        df = pyogrio.read_dataframe(gpkg, layer=layer)
        out[layer] = [(g.wkb, a) for g, a in zip(df.geometry, df.area_m2)]
    return out


def test_two_workers_give_the_same_output_as_one(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(400, 420, seed=9)
    results = {}
    for n in (1, 2):
        config = RunConfig(
            classes=("water", "roads"),
            models=(str(tiny_model),),
            block=128,
            inference=InferenceOptions(threads=1),
        )
        with _process_cluster(n) as client:
            summary = run_scene(
                scene, tmp_path / f"w{n}.gpkg", config, client=client, max_in_flight=3
            )
            if n == 2:
                workers_used = client.run(
                    lambda: (
                        __import__("geoseg.models.predictor")
                        .models.predictor._cached.cache_info()
                        .currsize
                    )
                )
        with rasterio.open(summary.raster) as src:
            results[n] = (_read(summary.gpkg), src.read())
    assert len(plan_run(scene, config).blocks) >= 9
    assert results[1][0] == results[2][0]
    assert (results[1][1] == results[2][1]).all()
    assert all(v == 1 for v in workers_used.values()) and len(workers_used) == 2, (
        f"each worker loads the model once and both did work: {workers_used}"
    )


def test_gpu_resource_pins_model_tasks_to_gpu_workers(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    """GPU scheduling logic without a GPU: only the worker declaring GPU gets block tasks."""
    scene, _ = make_scene(300, 300, seed=4)
    config = RunConfig(
        classes=("water",),
        models=(str(tiny_model),),
        block=128,
        inference=InferenceOptions(device="cpu", threads=1),
    )
    with LocalCluster(
        n_workers=0, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        cluster.scale(0)
        from distributed import Nanny

        cluster.worker_spec = {
            "cpu-only": {"cls": Nanny, "options": {"nthreads": 1}},
            "gpu-0": {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}}},
        }
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2)
            resources = task_resources(client)
            assert resources == {GPU: 1}
            run_scene(scene, tmp_path / "g.gpkg", config, client=client, resources=resources)
            loaded = client.run(
                lambda: (
                    __import__("geoseg.models.predictor")
                    .models.predictor._cached.cache_info()
                    .currsize
                )
            )
            names = {
                w["name"]: addr
                for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()
            }
    assert loaded[names["gpu-0"]] == 1
    assert loaded[names["cpu-only"]] == 0, "no model was loaded where there is no GPU resource"


def test_gpu_worker_spec_pins_one_device_per_worker() -> None:
    spec = gpu_worker_specs(3)
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in spec.values()] == ["0", "1", "2"]
    assert all(s["options"]["resources"] == {GPU: 1} for s in spec.values())


@pytest.mark.parametrize(
    ("cores", "workers"), [(1, None), (2, None), (2, 2), (16, None), (64, 4), (8, 3)]
)
def test_torch_threads_times_workers_never_exceed_cores(cores: int, workers: int | None) -> None:
    w, _, torch_threads = cpu_cluster_shape(cores, n_workers=workers)
    assert w * torch_threads <= max(cores, w)
    assert torch_threads >= 1


def test_bad_cluster_shapes_are_rejected() -> None:
    with pytest.raises(ConfigError, match="--workers 0"):
        cpu_cluster_shape(4, n_workers=0)


@pytest.mark.parametrize(
    "address", [None, "local", "sync", "tcp://10.0.0.5:8786", "localhost:8786", "tls://h:1"]
)
def test_scheduler_addresses_of_every_form_are_accepted(address: str | None) -> None:
    check_address(address)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("foo", "missing port number"),
        ("tcp://host", "missing port number"),
        ("http://host:8786", "unknown scheme 'http'"),
        ("tcp://host:99999", "port 99999 is out of range"),
    ],
)
def test_malformed_scheduler_addresses_are_one_clear_error(address: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        check_address(address)
    assert "use local (a new cluster on this machine), sync (no Dask) or an address like " in str(
        caught.value
    )
    with pytest.raises(ConfigError, match=reason), open_execution(address):
        pass


def test_geoseg_error_in_a_task_is_raised_once_not_retried(
    tiny_model: Path, make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic errors come back as a value: no retries, the real type, no leftovers."""
    import geoseg.run.task

    calls: list[int] = []

    def corrupt(plan, block, **_):  # type: ignore[no-untyped-def]
        calls.append(block.index)
        raise SceneReadError(f"block {block.index} is corrupt")

    monkeypatch.setattr(geoseg.run.task, "process_block", corrupt)
    scene, _ = make_scene(100, 100, seed=3)
    config = RunConfig(classes=("water",), models=(str(tiny_model),))
    with (
        LocalCluster(  # threads, so the patched function is the one the worker runs
            n_workers=1, processes=False, dashboard_address=None, silence_logs=logging.CRITICAL
        ) as cluster,
        Client(cluster) as client,
        pytest.raises(SceneReadError) as caught,
    ):
        run_scene(scene, tmp_path / "o.gpkg", config, client=client)
    assert str(caught.value) == "block 0 is corrupt", "the type and message survive"
    assert calls == [0], "a geoseg error is deterministic: the block is not retried"
    assert "raised in a Dask task" in caught.value.__notes__[0], "the worker traceback, for -v"
    assert sorted(p.name for p in tmp_path.iterdir()) == [scene.name]


@pytest.mark.gpu
def test_cuda_run_uses_the_gpu(tiny_model: Path, make_scene, tmp_path: Path) -> None:
    scene, _ = make_scene(256, 256, seed=1)
    config = RunConfig(
        classes=("water",), models=(str(tiny_model),), inference=InferenceOptions(device="cuda")
    )
    summary = run_scene(scene, tmp_path / "cuda.gpkg", config)
    assert summary.devices == ("cuda",)


def _small_blocks(model: Path, *classes: str) -> RunConfig:
    """Many small blocks, one torch thread: a run long enough to lose a worker in."""
    return RunConfig(
        classes=classes, models=(str(model),), block=128, inference=InferenceOptions(threads=1)
    )


def test_killed_worker_is_survived_with_identical_output(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    import os
    import signal

    scene, _ = make_scene(420, 420, seed=6)
    config = _small_blocks(tiny_model, "water", "roads")
    reference = run_scene(scene, tmp_path / "ref.gpkg", config)
    killed: list[int] = []
    with _process_cluster(2) as client:
        pids = client.run(os.getpid)

        def kill_one(done: int, total: int) -> None:
            if done == 3 and not killed:
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        summary = run_scene(
            scene,
            tmp_path / "killed.gpkg",
            config,
            client=client,
            progress=kill_one,
            max_in_flight=4,
        )
    assert killed, "a worker was killed mid-run"
    assert summary.blocks > 6
    assert _read(summary.gpkg) == _read(reference.gpkg)
    with rasterio.open(summary.raster) as a, rasterio.open(reference.raster) as b:
        assert (a.read() == b.read()).all()


def test_a_block_that_keeps_losing_its_worker_is_one_clear_error(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    """Dask gives up on a task whose workers die (KilledWorker): one geoseg error, journal kept."""
    import os
    import signal

    import dask

    scene, _ = make_scene(420, 420, seed=6)
    config = _small_blocks(tiny_model, "water")
    # Give up at the first death, as Dask does after `allowed-failures` (3) by default.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        _process_cluster(1) as client,
    ):
        (pid,) = client.run(os.getpid).values()

        def kill(done: int, total: int) -> None:
            if done == 2:
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(WorkerLostError, match=r"block \d+ was lost with the worker"):
            run_scene(scene, tmp_path / "out.gpkg", config, client=client, progress=kill)
    assert not (tmp_path / "out.gpkg").exists()
    assert (tmp_path / ".out.gpkg.journal").exists(), "--resume can reuse the finished blocks"


_EXIT = """
import atexit, gc, sys
# Registered first, so it runs last: after everything geoseg registered.
atexit.register(lambda: print(gc.get_freeze_count()))
if sys.argv[1] == "worker":
    from geoseg.scheduler import dask_setup
    dask_setup(None)
elif sys.argv[1] == "cli":
    from geoseg.cli import main
    main(["models", "list"], standalone_mode=False)
"""


@pytest.mark.parametrize(
    ("process", "frozen"), [("worker", True), ("cli", True), ("library", False)]
)
def test_geoseg_processes_leave_the_final_garbage_collection_out(
    process: str, frozen: bool
) -> None:
    # The interpreter's last collections over torch's ~380 k objects made a worker's exit,
    # which closing the cluster waits for, take 1 s. A process that merely imports geoseg
    # (a notebook) keeps its collector.
    out = subprocess.run(
        [sys.executable, "-c", _EXIT, process], capture_output=True, text=True, check=True
    )
    assert (int(out.stdout.split()[-1]) > 0) is frozen


def test_local_cpu_workers_run_one_single_threaded_pass_per_core() -> None:
    with open_execution("local", threads_per_worker=2) as ex:
        assert ex.model_slots == min(2, ex.torch_threads)
        env = ex.client.run(lambda: os.environ.get("MALLOC_ARENA_MAX"))
        options = ex.with_cluster_threads(InferenceOptions())
    assert (options.threads, options.concurrent_batches) == (ex.torch_threads, ex.model_slots)
    # one malloc arena per model slot (the forward passes' activations stay mapped)
    assert set(env.values()) == {str(ex.model_slots)}
    # A caller's own thread count wins; a cluster geoseg did not start sets nothing.
    mine = InferenceOptions(threads=1)
    assert ex.with_cluster_threads(mine) == mine
    outside = Execution(client=None, torch_threads=0, resources=None, description="tcp")
    assert outside.with_cluster_threads(InferenceOptions()) == InferenceOptions()


def _fake_dask_cuda(calls: list[dict[str, object]]) -> types.ModuleType:
    """A ``dask_cuda`` whose LocalCUDACluster records its arguments and starts a CPU cluster
    of worker processes with them (one worker per visible device, as dask-cuda does)."""

    def local_cuda_cluster(**kwargs: object) -> LocalCluster:
        calls.append(kwargs)
        return LocalCluster(n_workers=2, processes=True, **kwargs)  # type: ignore[arg-type]

    module = types.ModuleType("dask_cuda")
    module.LocalCUDACluster = local_cuda_cluster  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("dask_cuda", [False, True], ids=["spec-cluster", "dask-cuda"])
def test_two_gpus_start_one_pinned_gpu_worker_each(
    dask_cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU branch of the default local cluster, on CPU: two (pretend) devices."""
    calls: list[dict[str, object]] = []
    # None in sys.modules makes `import dask_cuda` raise ImportError: the SpecCluster path.
    monkeypatch.setitem(sys.modules, "dask_cuda", _fake_dask_cuda(calls) if dask_cuda else None)
    monkeypatch.setattr(geoseg.scheduler, "_gpu_count", lambda: 2)
    # What an earlier default Dask cluster in this process leaves behind.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with open_execution("local") as ex:
        info = ex.client.scheduler_info(n_workers=-1)["workers"]
        env = ex.client.run(
            lambda: {
                k: os.environ.get(k)
                for k in (
                    "CUDA_VISIBLE_DEVICES",
                    "MALLOC_ARENA_MAX",
                    "MALLOC_TRIM_THRESHOLD_",
                    "OMP_NUM_THREADS",
                )
            }
        )
        profiler = ex.client.run(
            lambda: __import__("dask").config.get("distributed.worker.profile.enabled")
        )
    assert (ex.resources, ex.model_slots) == ({GPU: 1}, 1)
    assert ex.torch_threads == max(1, (os.cpu_count() or 1) // 2)
    assert ex.description.startswith("2 GPU worker(s)")
    assert [w["resources"] for w in info.values()] == [{GPU: 1}, {GPU: 1}]
    assert all(w["nthreads"] == 2 for w in info.values())
    # The same worker settings as CPU workers: no trimming of every freed buffer, one malloc
    # arena per Dask thread, Dask's statistical profiler off.
    assert {(e["MALLOC_ARENA_MAX"], e["MALLOC_TRIM_THRESHOLD_"]) for e in env.values()} == {
        ("2", None)
    }
    assert set(profiler.values()) == {False}
    assert {e["OMP_NUM_THREADS"] for e in env.values()} == {str(ex.torch_threads)}
    # and this process's environment is as it was
    assert (os.environ["MALLOC_TRIM_THRESHOLD_"], os.environ["OMP_NUM_THREADS"]) == ("65536", "1")
    assert "MALLOC_ARENA_MAX" not in os.environ
    if dask_cuda:
        # dask-cuda pins the devices itself; geoseg asks for the resource and thread count.
        assert calls == [
            {
                "threads_per_worker": 2,
                "resources": {GPU: 1},
                "dashboard_address": ":0",
                "silence_logs": logging.ERROR,
            }
        ]
    else:
        assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in env.values()) == ["0", "1"]


def _ndwi_small_blocks() -> RunConfig:
    """A spectral index on 64-pixel blocks: many quick blocks, the statistics pass first."""
    return RunConfig(
        classes=("water",),
        models=("ndwi",),
        bands=(2, 4),
        smooth="none",
        block=64,
        inference=InferenceOptions(tile=64, threads=1),
    )


def test_killing_the_only_worker_is_survived_with_identical_output(
    make_scene, tmp_path: Path
) -> None:
    """kill -9 of the one worker of a default-sized local cluster (one worker below 16 cores).

    Before: the plan was scattered to that worker only, so every block failed with
    FutureCancelledError ('... already forgotten') and a traceback.
    """
    import os
    import signal

    scene, _ = make_scene(256, 256, seed=6)
    config = _ndwi_small_blocks()
    reference = run_scene(scene, tmp_path / "ref.gpkg", config)
    killed: list[int] = []
    with _process_cluster(1) as client:
        (pid,) = client.run(os.getpid).values()

        def kill(done: int, total: int) -> None:
            if done == 3 and not killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        summary = run_scene(
            scene, tmp_path / "killed.gpkg", config, client=client, progress=kill, max_in_flight=4
        )
        (new_pid,) = client.run(os.getpid).values()
    assert killed and new_pid != pid, "the worker was killed and replaced mid-run"
    assert summary.blocks == 16
    with rasterio.open(summary.raster) as a, rasterio.open(reference.raster) as b:
        assert (a.read() == b.read()).all()
    df, ref = (pyogrio.read_dataframe(p, layer="water") for p in (summary.gpkg, reference.gpkg))
    assert [g.wkb for g in df.geometry] == [g.wkb for g in ref.geometry]


def test_worker_peak_memory_is_the_runs_not_the_workers_lifetime(
    make_scene, tmp_path: Path
) -> None:
    """On an attached cluster the workers have run other jobs: their lifetime peak is not
    this run's. Before: a worker that once held 600 MB reported 600 MB for any run."""
    scene, _ = make_scene(128, 128, seed=6)
    with _process_cluster(1) as client:

        def hog() -> float:
            import numpy as np

            from geoseg.run.memory import peak_rss_mb

            block = np.ones(600 * 2**20 // 8)  # touched: resident
            del block
            return peak_rss_mb()

        (lifetime,) = client.run(hog).values()
        summary = run_scene(scene, tmp_path / "o.gpkg", _ndwi_small_blocks(), client=client)
    (run_peak,) = summary.worker_peak_rss_mb.values()
    report = summary.report()["peak_rss_mb"]
    assert report["workers_scope"] == "run"
    assert lifetime > 600 and run_peak < lifetime - 300, (lifetime, run_peak)


@pytest.mark.slow
def test_kill_9_of_the_worker_of_geoseg_run_on_the_default_cluster(
    make_scene, tmp_path: Path
) -> None:
    """The command line on its own local cluster of one worker: the worker process is killed
    (SIGKILL) mid-run; the run still ends with exit 0 and the uninterrupted run's output."""
    import signal
    import time

    import psutil

    scene, _ = make_scene(512, 512, seed=6)
    base = [sys.executable, "-m", "geoseg.cli", "run", str(scene), "-c", "water", "-m", "ndwi"]
    base += ["--bands", "2,4", "--smooth", "none", "--block", "64", "--tile", "64", "-q"]
    ref = subprocess.run(
        [*base, "-o", str(tmp_path / "ref.gpkg"), "--scheduler", "sync"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ref.returncode == 0
    proc = subprocess.Popen(
        [*base, "-o", str(tmp_path / "o.gpkg"), "--workers", "1", "--threads", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = tmp_path / ".o.gpkg.journal"
    deadline = time.monotonic() + 120
    while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline())
    ]
    assert len(workers) == 1 and proc.poll() is None, "one worker, run under way"
    workers[0].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert err == ""
    with (
        rasterio.open(tmp_path / "o_classes.tif") as a,
        rasterio.open(tmp_path / "ref_classes.tif") as b,
    ):
        assert (a.read() == b.read()).all()
