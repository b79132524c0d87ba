"""The one-call Python API: ``geoseg.run(scene, classes=[...], ...)`` and ``geoseg.load_model``.

:func:`run` does what ``geoseg run`` does, with the same validation, errors and defaults:
options are checked before any cluster starts (a :class:`~geoseg.errors.ConfigError` names the
bad value), a local Dask cluster runs the blocks unless the caller passes a
``dask.distributed.Client`` of their own (or ``scheduler="sync"`` / an address), and nothing
is printed: progress goes to an optional callback.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.config import InferenceOptions, run_config
from geoseg.errors import ConfigError
from geoseg.models.predictor import Segmenter
from geoseg.run.outputs import check_outputs, output_paths
from geoseg.run.pipeline import RunSummary, run_scene
from geoseg.run.plan import plan_run
from geoseg.scheduler import Execution, check_address, open_execution, task_resources
from geoseg.tiling.stac import is_stac_item, scene_from_item

__all__ = ["RunResult", "load_model", "resolve_scene", "run"]

_OPTIONS = tuple(p for p in inspect.signature(run_config).parameters if p not in ("classes",))


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    """What a run wrote and how it went.

    ``polygons`` counts the polygons of each class layer, ``lines`` the features of each line
    layer (road centrelines); ``report`` is what ``geoseg run --report`` writes.
    """

    gpkg: Path
    raster: Path | None
    probabilities: Path | None
    uncertainty: Path | None
    polygons: Mapping[str, int]
    lines: Mapping[str, int]
    seconds: float
    timings: Mapping[str, float]
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    report: Mapping[str, Any] = field(default_factory=dict)
    summary: RunSummary | None = None


def run(
    scene: str | os.PathLike[str],
    *,
    classes: str | Sequence[str],
    models: Sequence[str | os.PathLike[str]] = (),
    output: str | os.PathLike[str] | None = None,
    scheduler: str = "local",
    client: Any = None,
    workers: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    resume: bool = False,
    **options: Any,
) -> RunResult:
    """Segment ``scene`` and write polygons per class to a GeoPackage.

    Parameters
    ----------
    scene
        A GeoTIFF path or GDAL path (``/vsis3/...``, ``https://...``), or a STAC item
        (``item.json`` or its URL): its bands, composed without copying pixels.
    classes
        ``["water", "roads"]`` or ``"water,roads"``.
    models
        Model files or built-in methods; empty: each class's default model.
    output
        The ``.gpkg`` to write; default ``<scene stem>.gpkg`` (a STAC item: ``<item id>.gpkg``)
        in the current folder.
    scheduler
        ``"local"`` (a new local Dask cluster, closed afterwards), ``"sync"`` (in this
        process) or a scheduler address; ignored when ``client`` is given.
    client
        A ``dask.distributed.Client`` to run the blocks on (not closed afterwards).
    workers, threads
        Local cluster shape (default: the CLI's).
    progress
        Called with ``(blocks_done, blocks_total)``.
    resume
        Reuse the blocks an interrupted run of the same job finished.
    **options
        Any option of :func:`geoseg.config.run_config` (``block``, ``tile``, ``smooth``,
        ``min_area_m2``, ``probabilities``, ``overwrite`` ...), as ``geoseg run`` takes them.

    Raises
    ------
    GeosegError
        A subclass saying what is wrong (``ConfigError`` for a bad option, ``SceneReadError``,
        ``ModelCardError``, ``OutputExistsError`` ...); never ``SystemExit``.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; valid options: {', '.join(_OPTIONS)}")
    config = run_config(classes=classes, models=[str(m) for m in models], **options)
    scene, stem = resolve_scene(os.fspath(scene))
    out = Path(output) if output is not None else Path(f"{stem}.gpkg")
    paths = output_paths(
        out,
        raster=config.raster,
        probabilities=config.probabilities,
        uncertainty=config.uncertainty,
    )
    if client is None:
        check_address(scheduler)
    check_outputs(paths.all(), overwrite=config.overwrite)
    plan = plan_run(scene, config)
    with _execution(client, scheduler=scheduler, workers=workers, threads=threads) as ex:
        summary = run_scene(
            scene, out, config, execution=ex, progress=progress, resume=resume, plan=plan
        )
    lines = set(summary.line_layers)
    return RunResult(
        gpkg=summary.gpkg,
        raster=summary.raster,
        probabilities=summary.probabilities,
        uncertainty=summary.uncertainty,
        polygons={k: v for k, v in summary.features.items() if k not in lines},
        lines={k: v for k, v in summary.features.items() if k in lines},
        seconds=summary.seconds,
        timings=dict(summary.timings),
        devices=summary.devices,
        precisions=summary.precisions,
        report=summary.report() | {"cluster": ex.description, "scene": str(scene)},
        summary=summary,
    )


def resolve_scene(scene: str) -> tuple[str, str]:
    """The GDAL path of a ``geoseg run`` scene argument and the stem its outputs are named
    from: a raster is itself and its file stem; a STAC item is its assets (one GeoTIFF, or
    its band assets composed as a VRT) and its id."""
    if is_stac_item(scene):
        asset = scene_from_item(scene)
        return asset.path, asset.item_id
    return scene, Path(scene).stem


@contextmanager
def _execution(
    client: Any, *, scheduler: str, workers: int | None, threads: int | None
) -> Iterator[Execution]:
    if client is not None:
        yield Execution(
            client=client,
            torch_threads=0,
            resources=task_resources(client),
            description="the caller's Dask client",
        )
        return
    with open_execution(scheduler, n_workers=workers, threads_per_worker=threads) as ex:
        yield ex


def load_model(
    path: str | os.PathLike[str], *, device: str = "auto", precision: str = "auto"
) -> Segmenter:
    """A model file (or built-in method with a fixed threshold, ``"ndwi:0.1"``) loaded for
    prediction.

    The result has the model's ``card`` and ``predict(image, valid)``: raw scene pixels
    ``(bands, H, W)`` in the card's band order and a validity mask ``(H, W)`` give blended
    class probabilities ``(classes, H, W)``.

    Raises
    ------
    ModelCardError
        If the file is missing, not a geoseg model, or its weights do not fit its card.
    """
    from geoseg.models.predictor import load_segmenter
    from geoseg.models.spectral import SpectralSegmenter, is_spectral, spectral_card

    if is_spectral(str(path)):
        return SpectralSegmenter(spectral_card(str(path)))
    return load_segmenter(path, options=InferenceOptions(device=device, precision=precision))
