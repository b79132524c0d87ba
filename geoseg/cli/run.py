"""``geoseg run``: one scene end to end."""

from __future__ import annotations

import os
from pathlib import Path

import click

from geoseg.cli._base import (
    _common,
    _handles_errors,
    _progress,
    _setup_logging,
    _usage_errors,
    _worker_log_level,
    main,
)
from geoseg.errors import ConfigError


@main.command()
@click.argument("scene", type=str)
@click.option("--classes", "-c", required=True, help="Classes to extract, e.g. water,roads.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .gpkg.")
@click.option(
    "--model", "-m", "models", multiple=True, help="Model file (repeat for several models)."
)
@click.option("--bands", help="Scene band numbers feeding the model, e.g. 4,3,2,8.")
@click.option("--sensor", help="Sensor preset naming the bands: sentinel2, landsat8, ...")
@click.option(
    "--block", default=2048, show_default=True, help="Block core size (pixels, 64 to 8192)."
)
@click.option("--tile", type=int, help="Tile size override (default: the model card's).")
@click.option("--overlap", type=int, help="Tile overlap override (default: the card's).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto = bf16 on CPUs that support it, fp16/bf16 on CUDA.",
)
@click.option("--batch-size", type=int, default=0, help="Tiles per forward pass (0 = auto).")
@click.option(
    "--tta",
    type=click.Choice(["auto", "none", "flips", "d4"]),
    default="auto",
    show_default=True,
    help="Test-time augmentation: average over flips or the 8 flips and rotations "
    "(auto: what the model card recommends, else none).",
)
@click.option(
    "--scheduler",
    default="local",
    show_default=True,
    help="local (new cluster), sync (no Dask) or a scheduler address tcp://host:8786.",
)
@click.option("--workers", type=int, help="Local cluster worker processes.")
@click.option("--threads", type=int, help="Dask threads per local worker.")
@click.option(
    "--smooth",
    type=click.Choice(["none", "morph", "crf", "crf+morph", "gridcrf", "gridcrf+morph"]),
    help="Smoothing for every class (default: each class's recipe: water crf+morph, "
    "roads and crops morph).",
)
@click.option(
    "--smooth-param",
    "smooth_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a smoothing parameter, e.g. min_object_area_m2=500 or crf.iterations=3.",
)
@click.option("--min-area", type=float, default=0.0, help="Drop polygons under this many m2.")
@click.option("--simplify", type=float, default=0.0, help="Simplify tolerance in metres.")
@click.option(
    "--raster/--no-raster", default=True, show_default=True, help="Write the class raster."
)
@click.option(
    "--probabilities", is_flag=True, help="Also write per-class probabilities (uint8 COG)."
)
@click.option(
    "--uncertainty",
    is_flag=True,
    help="Also write per-pixel uncertainty, the class probabilities' entropy 0-1 (uint8 COG).",
)
@click.option(
    "--cog/--no-cog", default=True, show_default=True, help="Rasters as Cloud Optimized GeoTIFF."
)
@click.option("--dst-crs", help="Reproject the polygons to this CRS, e.g. EPSG:3857.")
@click.option(
    "--centerlines/--no-centerlines",
    default=True,
    show_default=True,
    help="Also write road centrelines (roads_centerlines layer).",
)
@click.option(
    "--prune",
    type=float,
    default=20.0,
    show_default=True,
    help="Centreline spur length to drop (m).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--dashboard", is_flag=True, help="Serve the Dask dashboard (local cluster).")
@click.option(
    "--resume", is_flag=True, help="Reuse the blocks an interrupted run of the same job finished."
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True),
    help="Write timings per stage, throughput, devices and peak memory as JSON.",
)
@_common
@_handles_errors
def run(
    scene: str,
    classes: str,
    output: str | None,
    models: tuple[str, ...],
    bands: str | None,
    sensor: str | None,
    block: int,
    tile: int | None,
    overlap: int | None,
    device: str,
    precision: str,
    batch_size: int,
    tta: str,
    scheduler: str,
    workers: int | None,
    threads: int | None,
    smooth: str | None,
    smooth_params: tuple[str, ...],
    min_area: float,
    simplify: float,
    raster: bool,
    probabilities: bool,
    uncertainty: bool,
    cog: bool,
    dst_crs: str | None,
    centerlines: bool,
    prune: float,
    overwrite: bool,
    dashboard: bool,
    resume: bool,
    report: str | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Segment SCENE and write polygons per class to a GeoPackage."""
    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    from geoseg.cli._base import JOURNAL_META
    from geoseg.config import run_config
    from geoseg.models.spectral import is_spectral
    from geoseg.run.lock import output_lock
    from geoseg.run.outputs import check_outputs, output_paths
    from geoseg.run.pipeline import plan_run, run_scene
    from geoseg.scheduler import (
        check_address,
        cpu_cluster_shape,
        open_execution,
        preflight,
    )

    _setup_logging(verbose=verbose, quiet=quiet)
    out = output or f"{Path(scene).stem}.gpkg"
    # Everything is checked before a cluster starts, so bad input fails in a fraction of a
    # second: first the option values (exit 2), then the files and the scene (exit 1).
    with _usage_errors(verbose=verbose):
        config = run_config(
            classes=classes,
            models=models,
            bands=bands or None,
            sensor=sensor,
            block=block,
            tile=tile,
            overlap=overlap,
            device=device,
            precision=precision,
            batch_size=batch_size,
            tta=tta,
            smooth=smooth,
            smooth_params=smooth_params,
            min_area_m2=min_area,
            simplify_m=simplify,
            raster=raster,
            probabilities=probabilities,
            uncertainty=uncertainty,
            cog=cog,
            dst_crs=dst_crs,
            centerlines=centerlines,
            prune_m=prune,
            overwrite=overwrite,
        )
        paths = output_paths(
            out, raster=raster, probabilities=probabilities, uncertainty=uncertainty
        )
        check_address(scheduler)
        if scheduler == "local":
            cpu_cluster_shape(os.cpu_count() or 1, n_workers=workers, threads_per_worker=threads)
    inputs = [("scene", scene)] + [("model", m) for m in models if not is_spectral(m)]
    check_outputs(paths.all(), overwrite=overwrite, inputs=inputs, side=paths.side_files())
    if report:
        _check_report_path(report, inputs=inputs, outputs=[*paths.all(), *paths.side_files()])
    if scheduler in ("local", "sync"):
        _check_device(config.inference.device)
    # The lock is the first file written: an unwritable folder or a full disk shows here,
    # and a second run on the same output stops here, before any work.
    with output_lock(paths.gpkg, lock=paths.lock):
        click.get_current_context().meta[JOURNAL_META] = paths.journal
        with _usage_errors(verbose=verbose):  # a ConfigError here is an option (--tile...)
            plan = plan_run(scene, config)
        with open_execution(
            scheduler,
            n_workers=workers,
            threads_per_worker=threads,
            dashboard=dashboard,
            worker_log_level=_worker_log_level(verbose=verbose),
        ) as ex:
            if scheduler not in ("local", "sync"):
                preflight(
                    ex.client,
                    address=scheduler,
                    scene=plan.scene.path,
                    models=tuple(u.source for u in plan.models if not is_spectral(u.source)),
                )
            if ex.client is not None and dashboard and not quiet:
                click.echo(f"geoseg: dashboard at {ex.client.dashboard_link}", err=True)
            with _progress(quiet=quiet, label=f"{Path(scene).name}") as progress:
                summary = run_scene(
                    scene,
                    out,
                    config,
                    execution=ex,
                    progress=progress,
                    resume=resume,
                    plan=plan,
                )
    if report:
        import json

        from geoseg.errors import OutputWriteError
        from geoseg.tiling.atomic import write_text_atomic

        body = summary.report() | {"cluster": ex.description, "scene": scene}
        try:
            write_text_atomic(report, json.dumps(body, indent=2) + "\n")
        except OSError as err:
            raise OutputWriteError(
                f"wrote {summary.gpkg} but not the report {report!r}: {err}"
            ) from err
    if not quiet:
        counts = ", ".join(
            f"{k}: {v}" for k, v in summary.features.items() if k not in summary.line_layers
        )
        lines = ", ".join(
            f"{k}: {v}" for k, v in summary.features.items() if k in summary.line_layers
        )
        counts = f"{counts} polygons" + (f"; {lines} lines" if lines else "")
        raster_note = f" and {summary.raster}" if summary.raster else ""
        resumed = f", {summary.resumed_blocks} blocks resumed" if summary.resumed_blocks else ""
        rss = summary.report()["peak_rss_mb"]["total"]
        busy = summary.model_busy
        # A spectral index (precision "index") is no model to keep busy.
        networks = set(summary.precisions) - {"index"}
        busy_note = f", model busy {busy:.0%}" if busy is not None and networks else ""
        click.echo(
            f"geoseg: wrote {summary.gpkg}{raster_note} ({counts}) in "
            f"{summary.seconds:.1f} s, {summary.mpx_per_s:.2f} Mpx/s on "
            f"{', '.join(summary.devices) or 'cpu'} "
            f"({', '.join(summary.precisions) or 'fp32'}; {ex.description}){busy_note}"
            f"{resumed}; peak memory {rss:.0f} MB",
            err=True,
        )


def _check_report_path(report: str, *, inputs: list[tuple[str, str]], outputs: list[Path]) -> None:
    """``--report`` must be writable before the run, not found wanting after it, and must
    be neither an input nor another output of the run."""
    from geoseg.run.outputs import check_outputs

    folder = Path(report).absolute().parent
    if not folder.is_dir():
        raise ConfigError(
            f"--report {report!r}: folder {str(folder)!r} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--report {report!r}: folder {str(folder)!r} is not writable")
    # A report replaces an existing file of its name (its own, from an earlier run).
    check_outputs([Path(report)], overwrite=True, inputs=inputs)
    if any(os.path.realpath(report) == os.path.realpath(p) for p in outputs):
        raise ConfigError(f"--report {report!r} is one of the run's outputs; name it otherwise")


def _check_device(device: str) -> None:
    """``--device cuda`` needs a CUDA device here, whatever the model (an index needs none,
    but the user asked for one: exit 1 rather than a silent run on the CPU)."""
    if not device.startswith("cuda"):
        return
    from geoseg.errors import GeosegError
    from geoseg.scheduler import gpu_count

    n = gpu_count()
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if n == 0:
        raise GeosegError(
            f"device {device!r} requested but CUDA is not available here; use --device cpu or auto"
        )
    if index >= n:
        raise GeosegError(
            f"device {device!r} requested but this machine has {n} CUDA device(s) "
            f"(cuda:0 to cuda:{n - 1})"
        )
