"""Dask clusters for geoseg: local by default, any existing scheduler, GPU workers.

- ``local`` (default): a ``LocalCluster`` of worker *processes* sized to the machine. On CPU
  one worker per 8 cores (at least one), each with two Dask threads (one reads, smooths or
  vectorizes a block while the other predicts) and ``cores / workers`` torch threads, so
  torch threads x workers never exceeds the cores. The torch threads are split between
  ``min(Dask threads, torch threads)`` forward passes that run side by side on the model's own
  threads (:class:`~geoseg.models.predictor.TorchSegmenter`'s slots).
- With CUDA GPUs: one worker per GPU, pinned with ``CUDA_VISIBLE_DEVICES`` and declaring a
  ``GPU`` resource that model tasks require. ``dask_cuda.LocalCUDACluster`` is used when
  installed, otherwise an equivalent ``SpecCluster``.
- ``tcp://host:8786`` (or any address): attach to an existing scheduler. Inputs must be
  readable from every worker (shared file system or GDAL virtual paths). Attaching waits
  :data:`WORKER_WAIT_S` for a worker, and :func:`preflight` checks, before any work, that
  every worker imports this geoseg version and can open the scene and the model files.
- ``sync``: no Dask at all, every block in this process (debugging, tiny scenes).
"""

from __future__ import annotations

import atexit
import functools
import gc
import glob
import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from geoseg.errors import ClusterError, ConfigError, GeosegError

__all__ = [
    "ClusterShape",
    "DaskLogMute",
    "Execution",
    "check_address",
    "cpu_cluster_shape",
    "dask_setup",
    "freeze_gc_at_exit",
    "gpu_count",
    "gpu_worker_specs",
    "open_execution",
    "preflight",
    "task_resources",
]

GPU = "GPU"

WORKER_WAIT_S = 10.0
"""How long attaching to a scheduler waits for its first worker."""
PREFLIGHT_TIMEOUT_S = 60.0
"""How long the workers have to answer :func:`preflight` (opening a remote scene included)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Execution:
    """Where blocks run: a Dask client (or ``None`` for in-process) and how."""

    client: Any
    torch_threads: int
    resources: Mapping[str, float] | None
    description: str
    model_slots: int = 1

    def with_cluster_threads(self, options: Any) -> Any:
        """``options`` (:class:`~geoseg.config.InferenceOptions`) with this cluster's torch
        threads and concurrent forward passes per worker, unless the caller set threads itself
        or the cluster is not geoseg's own."""
        if not self.torch_threads or options.threads:
            return options
        return replace(options, threads=self.torch_threads, concurrent_batches=self.model_slots)


class ClusterShape(NamedTuple):
    """A local CPU cluster: workers, Dask threads and torch threads per worker."""

    workers: int
    threads: int
    torch_threads: int

    @property
    def model_slots(self) -> int:
        """Forward passes a worker runs side by side: one per torch thread a Dask thread
        can feed."""
        return min(self.threads, self.torch_threads)


def cpu_cluster_shape(
    cores: int, *, n_workers: int | None = None, threads_per_worker: int | None = None
) -> ClusterShape:
    """``(workers, dask threads per worker, torch threads per worker)`` for a CPU machine.

    torch threads x workers <= cores always holds.
    """
    if cores < 1:
        raise ConfigError(f"core count {cores} must be positive")
    workers = n_workers if n_workers is not None else max(1, cores // 8)
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    threads = threads_per_worker if threads_per_worker is not None else 2
    if threads < 1:
        raise ConfigError(f"--threads {threads} must be at least 1")
    return ClusterShape(workers, threads, max(1, cores // workers))


def gpu_worker_specs(n_gpus: int, *, threads_per_worker: int = 2) -> dict[str, dict[str, Any]]:
    """A ``SpecCluster`` worker spec: one worker per GPU, pinned and declaring ``GPU: 1``."""
    from distributed import Nanny

    return {
        f"gpu-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads_per_worker,
                "resources": {GPU: 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(i)},
                "name": f"gpu-{i}",
            },
        }
        for i in range(n_gpus)
    }


def task_resources(client: Any) -> dict[str, float] | None:
    """``{"GPU": 1}`` when any worker declares a GPU resource, else ``None``."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if any(GPU in (w.get("resources") or {}) for w in workers.values()):
        return {GPU: 1}
    return None


def check_address(address: str | None) -> None:
    """Fail with one clear line on a ``--scheduler`` value that cannot be an address.

    Only the form is checked (no connection is made): ``local``, ``sync`` or an address
    such as ``tcp://host:8786`` (``host:port`` means tcp).

    Raises
    ------
    ConfigError
        For a malformed address, naming the valid forms.
    """
    if address is None or address in ("local", "sync"):
        return
    from distributed.comm import get_address_host_port, parse_address
    from distributed.comm.registry import backends

    try:
        scheme, _ = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(sorted(backends))}")
        if scheme in ("tcp", "tls", "ws", "wss"):
            _, port = get_address_host_port(address)
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range")
    except ValueError as err:
        raise ConfigError(
            f"--scheduler {address!r} is not a scheduler address ({err}); use local (a new "
            "cluster on this machine), sync (no Dask) or an address like tcp://host:8786"
        ) from None


def _gpu_count() -> int:
    """CUDA devices on this machine; torch (hundreds of MB) is imported only if any exist."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    if not glob.glob("/dev/nvidia[0-9]*") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_count() -> int:
    """CUDA devices on this machine (torch is imported only when the system shows any)."""
    return _gpu_count()


class DaskLogMute:
    """Silences Dask's loggers (and tornado's, asyncio's) from :meth:`now` to the end of the
    ``with`` block.

    A stopped run or batch closes its cluster with tasks cancelled and results abandoned:
    what Dask logs about that (``Couldn't gather keys``...) is expected, and the user is told
    in one line instead.
    """

    _NAMES = ("distributed", "tornado", "asyncio")

    def __init__(self) -> None:
        self._saved: dict[logging.Logger, int] = {}

    def __enter__(self) -> DaskLogMute:
        return self

    def now(self) -> None:
        """Mute from here on (safe to call from a signal handler, and more than once)."""
        names = [
            n for n in list(logging.Logger.manager.loggerDict) if n.split(".", 1)[0] in self._NAMES
        ]
        for name in {*self._NAMES, *names}:
            logger = logging.getLogger(name)
            self._saved.setdefault(logger, logger.level)
            logger.setLevel(logging.CRITICAL + 1)

    def __exit__(self, *exc: object) -> None:
        for logger, level in self._saved.items():
            logger.setLevel(level)
        self._saved.clear()


def dask_setup(worker: Any) -> None:
    """Dask preload of geoseg's local workers: signals and a quick exit.

    SIGINT and SIGTERM belong to the client. Ctrl-C in a terminal (and ``kill`` of a
    process group) signals every process of the group. A worker killed that way prints a
    traceback and takes its blocks and the scattered plan with it, which Dask reports as
    lost data. Ignoring both, the workers are closed by the client when it has stopped;
    they still exit when the client process dies (their nanny's pipe closes).

    The worker also exits quickly (:func:`freeze_gc_at_exit`): the client waits for it
    when it closes the cluster.
    """
    freeze_gc_at_exit()
    _route_warnings(worker_warning_level())
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


WARNING_LOGGERS = ("py.warnings", "rasterio", "pyogrio")
"""Loggers of library warnings (Python warnings, torch's included; GDAL messages through
rasterio and pyogrio): shown only with ``-v``."""


def _route_warnings(level: int) -> None:
    """Python warnings become log records; library warnings show at ``level`` and above."""
    logging.captureWarnings(True)
    for name in WARNING_LOGGERS:
        logging.getLogger(name).setLevel(level)


def worker_warning_level() -> int:
    """The level library warnings show at on geoseg's local workers: their log level
    (``geoseg.worker-log-level`` in the Dask config the nannies pass on), ERROR by default."""
    import dask

    return int(dask.config.get("geoseg.worker-log-level", logging.ERROR))


@functools.cache
def freeze_gc_at_exit() -> None:
    """At interpreter exit, freeze the garbage collector's objects before module teardown.

    For geoseg's own processes (the CLI, local Dask workers). torch and smp leave hundreds of
    thousands of tracked objects, and the interpreter's final collections over them make a
    process's exit (and closing a local cluster, which waits for it) slow. Only cyclic garbage
    is then left to the OS, which reclaims the whole process anyway.
    """
    atexit.register(gc.freeze)


def _worker_config(torch_threads: int, *, arenas: int) -> dict[str, Any]:
    """Dask settings for local model workers, CPU or GPU (read by the nannies when they spawn
    workers).

    Dask's defaults suit pandas-style work, not a CPU-bound torch model:
    ``MALLOC_TRIM_THRESHOLD_=65536`` makes glibc return every freed activation buffer to the
    kernel, so each forward pass faults its memory back in; ``OMP_NUM_THREADS=1`` starves
    OpenMP's pool; the 10 ms statistical profiler costs a few more percent.

    ``MALLOC_ARENA_MAX``: glibc gives threads that allocate at once their own arenas (up to
    8 per core), and a forward pass's activations, freed and allocated again for every tile,
    then come from heaps that are created, trimmed and deleted under it. One arena per model
    slot (``arenas``) keeps them, with fewer page faults, less system time and a lower peak.
    """
    n = str(max(1, torch_threads))
    return {
        "distributed.nanny.pre-spawn-environ": {
            "MALLOC_ARENA_MAX": str(max(1, arenas)),
            "MALLOC_TRIM_THRESHOLD_": None,
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
        },
        "distributed.worker.profile.enabled": False,
    }


@contextmanager
def _worker_settings(torch_threads: int, *, arenas: int) -> Iterator[None]:
    """:func:`_worker_config` for the workers started inside, whatever this process's
    environment holds, and that environment left as it was.

    A nanny takes a pre-spawn variable from ``os.environ`` when it is set there (over the
    config), lets a variable the config leaves out be inherited, and writes its values into
    this process's ``os.environ`` to spawn. So one earlier Dask cluster in the same process
    (a notebook's ``Client()``) would give geoseg's workers ``MALLOC_TRIM_THRESHOLD_=65536``
    and ``OMP_NUM_THREADS=1``, and geoseg's cluster would leave its values to the next one.
    The variables are taken out of ``os.environ`` while the workers spawn and put back after.
    A worker that its nanny restarts later (after a crash) gets the config's values again
    but inherits ``MALLOC_TRIM_THRESHOLD_`` if this process has it by then.
    """
    import dask

    config = _worker_config(torch_threads, arenas=arenas)
    saved = {k: os.environ.get(k) for k in config["distributed.nanny.pre-spawn-environ"]}
    try:
        for key in saved:
            os.environ.pop(key, None)
        with dask.config.set(config):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def open_execution(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    dashboard: bool = False,
    worker_log_level: int = logging.ERROR,
) -> Iterator[Execution]:
    """Start or attach to the cluster that runs blocks; closes what it started.

    Parameters
    ----------
    address
        ``None``/``"local"``: a new local cluster; ``"sync"``: in-process; otherwise the
        address of a running Dask scheduler.
    n_workers, threads_per_worker
        Local cluster shape (CPU); defaults per :func:`cpu_cluster_shape`.
    dashboard
        The caller wants the Dask dashboard (served on a free port when bokeh is installed).
    worker_log_level
        Log level of a local cluster's workers and scheduler (they log to stderr). The CLI
        passes ``CRITICAL`` unless ``-v``: task errors reach the user as one line anyway.

    Raises
    ------
    ConfigError
        For a malformed scheduler address (see :func:`check_address`).
    GeosegError
        When the scheduler at ``address`` cannot be reached.
    """
    cores = os.cpu_count() or 1
    if address == "sync":
        yield Execution(client=None, torch_threads=0, resources=None, description="in-process")
        return
    import dask
    from distributed import Client

    if address not in (None, "local"):
        check_address(address)
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise GeosegError(f"cannot reach the Dask scheduler at {address}: {err}") from err
        except ValueError as err:  # a form check_address let through
            raise ConfigError(f"--scheduler {address!r} is not a scheduler address: {err}") from err
        try:
            _wait_for_workers(client, address)
            yield Execution(
                client=client,
                torch_threads=0,
                resources=task_resources(client),
                description=f"scheduler {address}",
            )
        finally:
            client.close()
        return
    # Always a free port: Dask's HTTP server (health, metrics; the dashboard when bokeh is
    # installed) would otherwise claim 8787 and warn when another cluster holds it.
    dash = ":0"
    if dashboard:
        try:
            import bokeh  # noqa: F401
        except ImportError:
            logging.getLogger(__name__).warning(
                "the Dask dashboard needs bokeh: pip install 'bokeh>=3.1'"
            )
    gpus = _gpu_count()
    cluster: Any
    # Every local worker runs dask_setup (this module) when it starts.
    preload = list(dask.config.get("distributed.worker.preload", None) or [])
    settings = {
        "distributed.worker.preload": [*preload, __name__],
        "geoseg.worker-log-level": worker_log_level,
    }
    with dask.config.set(settings):
        cluster, torch_threads, slots, desc = _start_local_cluster(
            gpus,
            cores=cores,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            dashboard_address=dash,
            log_level=worker_log_level,
        )
    try:
        with Client(cluster) as client:
            yield Execution(
                client=client,
                torch_threads=torch_threads,
                resources={GPU: 1} if gpus else None,
                description=desc,
                model_slots=slots,
            )
    finally:
        cluster.close()


def _start_local_cluster(
    gpus: int,
    *,
    cores: int,
    n_workers: int | None,
    threads_per_worker: int | None,
    dashboard_address: str,
    log_level: int,
) -> tuple[Any, int, int, str]:
    """A local cluster (one worker per GPU, else CPU workers); its torch threads, concurrent
    forward passes per worker (one per torch thread a Dask thread can feed on CPU) and a
    label."""
    from distributed import LocalCluster, SpecCluster

    dash = dashboard_address
    cluster: Any
    if gpus:
        threads = threads_per_worker or 2
        torch_threads, desc = max(1, cores // gpus), f"{gpus} GPU worker(s)"
        slots = 1
        # One malloc arena per Dask thread: the host side (reading, pinned staging, blending)
        # is done by those threads; the forward passes run on the device.
        with _worker_settings(torch_threads, arenas=threads):
            try:
                from dask_cuda import LocalCUDACluster

                cluster = LocalCUDACluster(
                    threads_per_worker=threads,
                    resources={GPU: 1},
                    dashboard_address=dash,
                    silence_logs=log_level,
                )
            except ImportError:
                from distributed import Scheduler

                cluster = SpecCluster(
                    workers=gpu_worker_specs(gpus, threads_per_worker=threads),
                    scheduler={"cls": Scheduler, "options": {"dashboard_address": dash}},
                    silence_logs=log_level,
                )
    else:
        shape = cpu_cluster_shape(cores, n_workers=n_workers, threads_per_worker=threads_per_worker)
        workers, threads, torch_threads = shape
        slots = shape.model_slots
        with _worker_settings(torch_threads, arenas=slots):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=dash,
                silence_logs=log_level,
            )
        desc = f"{workers} local worker(s) x {threads} threads, {torch_threads} torch threads"
    if slots > 1:
        desc += f" as {slots} concurrent forward passes"
    return cluster, torch_threads, slots, desc


def _wait_for_workers(client: Any, address: str) -> None:
    """A scheduler without workers would queue the blocks for ever: wait a little, then say."""
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError) as err:
        raise ClusterError(
            f"the Dask scheduler at {address} has no workers (waited {WORKER_WAIT_S:g} s); "
            f"start some (dask worker {address}) and run again"
        ) from err


# The pre-flight probe runs on every worker before geoseg can be assumed there, so it is
# made from source in a module of its own name: cloudpickle then ships it by value, and a
# worker without geoseg runs it and says so (a function of geoseg's would fail to unpickle
# and take the worker down with it).
_PROBE_SOURCE = """
def probe(version, scene, models):
    import os
    import socket

    report = {"host": socket.gethostname(), "problems": []}
    try:
        import geoseg
    except BaseException as err:
        report["import_error"] = f"{type(err).__name__}: {err}"
        return report
    report["version"] = getattr(geoseg, "__version__", "unknown")
    if report["version"] != version:
        return report
    from geoseg.models.card import read_card
    from geoseg.tiling.io import read_scene_info

    checks = [(read_scene_info, scene)] if scene else []
    checks += [(read_card, m) for m in models]
    for check, path in checks:
        try:
            check(path)
        except Exception as err:
            report["problems"].append(str(err).splitlines()[0] if str(err) else repr(err))
    return report
"""


def _probe() -> Any:
    namespace: dict[str, Any] = {"__name__": "geoseg_preflight_probe"}
    exec(compile(_PROBE_SOURCE, "<geoseg pre-flight>", "exec"), namespace)
    return namespace["probe"]


def preflight(
    client: Any,
    *,
    address: str,
    scene: str | None,
    models: tuple[str, ...] = (),
    timeout: float | None = None,
) -> int:
    """Check, before any work, that every worker can run this job; returns the worker count.

    Each worker must import geoseg of this client's version and open ``scene`` (its header)
    and every model file (its card), at the paths this client uses: a path only the client
    sees fails here, in seconds, not as "does not exist" from a block.

    Raises
    ------
    ClusterError
        One line naming the first worker that cannot, and the remedy (install geoseg, the
        same version; a shared path or a GDAL virtual path).
    """
    from geoseg import __version__

    wait = PREFLIGHT_TIMEOUT_S if timeout is None else timeout
    try:
        reports = client.run(
            _probe(), __version__, scene, tuple(models), on_error="return", callback_timeout=wait
        )
    except (TimeoutError, OSError) as err:
        raise ClusterError(
            f"the workers of {address} did not answer geoseg's pre-flight check within {wait:g} s"
        ) from err
    if not reports:
        raise ClusterError(f"the Dask scheduler at {address} has no workers left")
    for worker, report in sorted(reports.items()):
        if isinstance(report, BaseException):
            raise ClusterError(
                f"worker {worker} failed geoseg's pre-flight check ({type(report).__name__}: "
                f"{report}); check that worker's log"
            )
        where = f"worker {worker} ({report.get('host', '?')})"
        if "import_error" in report:
            raise ClusterError(
                f"{where} cannot import geoseg ({report['import_error']}); install geoseg "
                f"{__version__} in the workers' Python environment"
            )
        if report.get("version") != __version__:
            raise ClusterError(
                f"{where} runs geoseg {report.get('version')}, this client {__version__}; "
                "install the same geoseg version on the client and every worker"
            )
        if report["problems"]:
            raise ClusterError(
                f"{where} cannot use this run's inputs: {report['problems'][0]}; the scene "
                "and model files must be readable by every worker at the same path (a shared "
                "file system, or a GDAL virtual path such as /vsis3/... or https://...)"
            )
    return len(reports)
