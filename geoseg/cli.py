"""The ``geoseg`` command line.

A malformed command line exits 2: click's own checks (a missing option, a bad choice) and
option values geoseg rejects (a :class:`~geoseg.errors.ConfigError` while the options are
read: ``--tile 100``, ``--scheduler foo``). Any other :class:`~geoseg.errors.GeosegError`
(a missing or corrupt scene, an existing output, a class no model has, no GPU) exits 1.
Either way one line on stderr, and a traceback only with ``-v``. Progress is drawn with rich
on stderr when it is a terminal, unless ``--quiet``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from geoseg import __version__
from geoseg.errors import ConfigError, GeosegError

F = TypeVar("F", bound=Callable[..., Any])

_PALETTE = ("#000000", "#1f78b4", "#e31a1c", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928")


def _fail(err: BaseException, *, verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    click.echo(f"geoseg: error: {err}", err=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd, Airflow, kill) stops a command as cleanly as Ctrl-C."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _handles_errors(fn: F) -> F:
    """Turn GeosegError into one line and exit 1; Ctrl-C or SIGTERM into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        _setup_logging(verbose=verbose, quiet=bool(kwargs.get("quiet")))
        try:
            with _sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except GeosegError as err:
            _fail(err, verbose=verbose)
            sys.exit(1)
        except KeyboardInterrupt:
            hint = ""
            if fn.__name__ == "run":  # its finished blocks are journalled
                hint = "; the same command with --resume reuses the blocks already done"
            click.echo(f"geoseg: interrupted; no output was finished{hint}", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@contextmanager
def _usage_errors(
    *, verbose: bool, kinds: tuple[type[GeosegError], ...] = (ConfigError,)
) -> Iterator[None]:
    """Errors in the command line's option values: one line and exit 2 (STYLE.md)."""
    try:
        yield
    except kinds as err:
        _fail(err, verbose=verbose)
        sys.exit(2)


def _setup_logging(*, verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="geoseg: %(levelname)s: %(message)s", force=True)
    for noisy in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)


def _common(fn: F) -> F:
    fn = click.option("-v", "--verbose", is_flag=True, help="Debug logging and tracebacks.")(fn)
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")(fn)


@contextmanager
def _progress(*, quiet: bool, label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a rich bar on stderr when it is a terminal."""
    if quiet or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
def main() -> None:
    """Segment large satellite GeoTIFFs into georeferenced polygons."""


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _floats(text: str | None, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _split(text))
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be comma-separated numbers") from None


@main.command()
@click.argument("scene", type=str)
@click.option("--classes", "-c", required=True, help="Classes to extract, e.g. water,roads.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .gpkg.")
@click.option(
    "--model", "-m", "models", multiple=True, help="Model file (repeat for several models)."
)
@click.option("--bands", help="Scene band numbers feeding the model, e.g. 4,3,2,8.")
@click.option("--sensor", help="Sensor preset naming the bands: sentinel2, landsat8, ...")
@click.option("--block", default=2048, show_default=True, help="Block core size (pixels).")
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
    "--scheduler",
    default="local",
    show_default=True,
    help="local (new cluster), sync (no Dask) or a scheduler address tcp://host:8786.",
)
@click.option("--workers", type=int, help="Local cluster worker processes.")
@click.option("--threads", type=int, help="Dask threads per local worker.")
@click.option(
    "--smooth",
    type=click.Choice(["none", "morph", "crf", "crf+morph"]),
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
    scheduler: str,
    workers: int | None,
    threads: int | None,
    smooth: str | None,
    smooth_params: tuple[str, ...],
    min_area: float,
    simplify: float,
    raster: bool,
    probabilities: bool,
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
    from dataclasses import replace

    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    from geoseg.config import RunConfig, parse_band_list, parse_class_list
    from geoseg.models.predictor import InferenceOptions
    from geoseg.outputs import output_paths
    from geoseg.pipeline import plan_run, run_scene
    from geoseg.plan import check_outputs
    from geoseg.scheduler import check_address, cpu_cluster_shape, open_execution

    _setup_logging(verbose=verbose, quiet=quiet)
    out = output or f"{Path(scene).stem}.gpkg"
    # Everything is checked before a cluster starts, so bad input fails in a fraction of a
    # second: first the option values (exit 2), then the files and the scene (exit 1).
    with _usage_errors(verbose=verbose):
        config = RunConfig(
            classes=parse_class_list(classes),
            models=models,
            bands=parse_band_list(bands) if bands else None,
            sensor=sensor,
            block=block,
            inference=InferenceOptions(
                device=device,
                precision=precision,
                batch_size=batch_size,
                tile=tile,
                overlap=overlap,
            ),
            smooth=smooth,
            smooth_params=smooth_params,
            min_area_m2=min_area,
            simplify_m=simplify,
            raster=raster,
            probabilities=probabilities,
            cog=cog,
            dst_crs=dst_crs,
            centerlines=centerlines,
            prune_m=prune,
            overwrite=overwrite,
        )
        paths = output_paths(out, raster=raster, probabilities=probabilities)
        check_address(scheduler)
        if scheduler == "local":
            cpu_cluster_shape(os.cpu_count() or 1, n_workers=workers, threads_per_worker=threads)
    check_outputs(paths.all(), overwrite=overwrite)
    if report:
        _check_report_path(report)
    with _usage_errors(verbose=verbose):  # a ConfigError here is an option (--tile, --bands...)
        plan = plan_run(scene, config)
    with open_execution(
        scheduler,
        n_workers=workers,
        threads_per_worker=threads,
        dashboard=dashboard,
        worker_log_level=logging.INFO if verbose else logging.CRITICAL,
    ) as ex:
        if ex.torch_threads and not config.inference.threads:
            config = replace(config, inference=replace(config.inference, threads=ex.torch_threads))
            plan = replace(plan, inference=config.inference)
        if ex.client is not None and dashboard and not quiet:
            click.echo(f"geoseg: dashboard at {ex.client.dashboard_link}", err=True)
        with _progress(quiet=quiet, label=f"{Path(scene).name}") as progress:
            summary = run_scene(
                scene,
                out,
                config,
                client=ex.client,
                progress=progress,
                resources=ex.resources,
                resume=resume,
                plan=plan,
            )
    if report:
        import json

        from geoseg.errors import OutputWriteError

        body = summary.report() | {"cluster": ex.description, "scene": scene}
        try:
            Path(report).write_text(json.dumps(body, indent=2) + "\n")
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
        click.echo(
            f"geoseg: wrote {summary.gpkg}{raster_note} ({counts}) in "
            f"{summary.seconds:.1f} s, {summary.mpx_per_s:.2f} Mpx/s on "
            f"{', '.join(summary.devices) or 'cpu'} "
            f"({', '.join(summary.precisions) or 'fp32'}; {ex.description}){resumed}; "
            f"peak memory {rss:.0f} MB",
            err=True,
        )


def _check_report_path(report: str) -> None:
    """``--report`` must be writable before the run, not found wanting after it."""
    folder = Path(report).absolute().parent
    if not folder.is_dir():
        raise ConfigError(
            f"--report {report!r}: folder {str(folder)!r} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--report {report!r}: folder {str(folder)!r} is not writable")


def _resolve_relative(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make a training file's relative paths relative to the file, not the shell."""

    def fix(p: str) -> str:
        return p if (p.startswith("/vsi") or "://" in p or Path(p).is_absolute()) else str(base / p)

    out = dict(data)
    inputs = []
    for item in out.get("inputs", []):
        item = dict(item)
        if "image" in item:
            item["image"] = fix(str(item["image"]))
        labels = item.get("labels")
        if isinstance(labels, str):
            item["labels"] = fix(labels)
        elif isinstance(labels, dict) and "path" in labels:
            item["labels"] = {**labels, "path": fix(str(labels["path"]))}
        inputs.append(item)
    if inputs:
        out["inputs"] = inputs
    for key in ("output", "checkpoint_dir"):
        if isinstance(out.get(key), str):
            out[key] = fix(out[key])
    return out


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--epochs", type=int, help="Override the number of epochs.")
@click.option("--steps", type=int, help="Override the batches per epoch.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue a run.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
@_common
@_handles_errors
def train(
    config_file: str,
    output: str | None,
    epochs: int | None,
    steps: int | None,
    device: str | None,
    resume: bool,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Train a model from CONFIG_FILE (YAML: inputs, class_map, bands, architecture ...).

    Relative paths in the file are relative to the file. Checkpoints go to
    ``<output>.ckpt/`` unless ``checkpoint_dir`` is set, so an interrupted run resumes.
    """
    import yaml

    from geoseg.errors import OutputExistsError
    from geoseg.models.training import TrainConfig, TrainProgress
    from geoseg.models.training import train as run_training

    path = Path(config_file)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read training file {config_file!r}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"training file {config_file!r} must hold a mapping of options")
    data = _resolve_relative(data, path.parent.resolve())
    overrides: dict[str, Any] = {"resume": resume, "command": " ".join(sys.argv)}
    if output:
        overrides["output"] = str(Path(output).resolve())
    for key, value in (("epochs", epochs), ("steps_per_epoch", steps), ("device", device)):
        if value is not None:
            overrides[key] = value
    data.update(overrides)
    if "output" not in data:
        raise ConfigError("no output model file: set `output:` in the file or pass -o")
    data.setdefault("checkpoint_dir", f"{data['output']}.ckpt")
    config = TrainConfig.from_dict(data)
    if Path(config.output).exists() and not overwrite:
        raise OutputExistsError(f"{config.output!r} exists; pass --overwrite to replace it")
    with _progress(quiet=quiet, label="training") as bar:

        def report(p: TrainProgress) -> None:
            if p.stage == "train":
                total = p.epochs * p.steps
                bar((p.epoch - 1) * p.steps + p.step, total)
            elif p.stage == "epoch" and p.record is not None and not quiet:
                click.echo(f"geoseg: epoch {p.epoch}/{p.epochs} {p.record.describe()}", err=True)

        result = run_training(config, progress=report)
    if not quiet:
        click.echo(f"geoseg: wrote {result.model_path} ({result.describe()})", err=True)


def _parse_value_map(text: str | None) -> dict[str, str]:
    """``"6=water,2=crops"`` -> ``{"6": "water", "2": "crops"}``."""
    out: dict[str, str] = {}
    for item in _split(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--map entry {item!r} must look like VALUE=CLASS, e.g. 6=water")
        out[key.strip()] = value.strip()
    return out


@main.command()
@click.argument("model", type=str)
@click.argument("image", type=str)
@click.argument("label", type=str)
@click.option("--attribute", help="Vector labels: the column holding the class.")
@click.option("--layer", help="Vector labels: the layer to read (default: the first).")
@click.option(
    "--outside",
    type=click.Choice(["ignore", "background"]),
    help="Vector labels: pixels outside every polygon are not scored (ignore, the default: "
    "sparse polygons) or are background (a wall-to-wall map).",
)
@click.option(
    "--all-touched", is_flag=True, help="Vector labels: label every pixel a polygon touches."
)
@click.option(
    "--values",
    "--map",
    "value_map",
    help="Label value -> class, e.g. 6=water,2=crops (other values: background).",
)
@click.option("--classes", help="Classes to score (default: all of the model's).")
@click.option("--region", help="Score only ROW,COL,HEIGHT,WIDTH (a held-out window).")
@click.option("--smooth", type=click.Choice(["none", "morph", "crf", "crf+morph"]))
@click.option("--bands", help="Scene band numbers feeding the model.")
@click.option("--sensor", help="Sensor preset naming the bands.")
@click.option("--scheduler", default="sync", show_default=True, help="sync, local or address.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_common
@_handles_errors
def evaluate(
    model: str,
    image: str,
    label: str,
    attribute: str | None,
    layer: str | None,
    outside: str | None,
    all_touched: bool,
    value_map: str | None,
    classes: str | None,
    region: str | None,
    smooth: str | None,
    bands: str | None,
    sensor: str | None,
    scheduler: str,
    as_json: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Score MODEL on IMAGE against LABEL (raster on the same grid or vector file).

    Runs the real `geoseg run` pipeline (tiling, blending, smoothing) and reports per-class
    IoU, F1, precision and recall over the labelled pixels only (with vector labels, by
    default the pixels inside the polygons).
    """
    import json

    from geoseg.config import parse_band_list, parse_class_list
    from geoseg.evaluate import evaluate as run_evaluation
    from geoseg.evaluate import evaluation_labels
    from geoseg.models.card import ClassInfo, read_card
    from geoseg.models.labels import ClassMap
    from geoseg.models.spectral import is_spectral, spectral_card
    from geoseg.scheduler import open_execution
    from geoseg.tiling.grid import PixelWindow

    labels = evaluation_labels(
        label, attribute=attribute, layer=layer, outside=outside, all_touched=all_touched
    )
    card = spectral_card(model) if is_spectral(model) else read_card(model)
    names = parse_class_list(classes) if classes else card.class_names[1:]
    mapping = _parse_value_map(value_map)
    cmap = None
    if mapping:
        cmap = ClassMap(
            classes=(ClassInfo(name="background"), *(ClassInfo(name=n) for n in names)),
            values=mapping,
        )
    window = None
    if region:
        try:
            r, c, h, w = (int(v) for v in region.split(","))
        except ValueError:
            raise ConfigError(f"--region {region!r} must be ROW,COL,HEIGHT,WIDTH") from None
        window = PixelWindow(row_off=r, col_off=c, height=h, width=w)
    with open_execution(scheduler) as ex:
        result = run_evaluation(
            model,
            image,
            labels,
            class_map=cmap,
            classes=names,
            region=window,
            smooth=smooth,
            bands=parse_band_list(bands) if bands else None,
            sensor=sensor,
            client=ex.client,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{'class':<14} {'IoU':>7} {'F1':>7} {'precision':>10} {'recall':>7} {'support':>9}")
    for name in result.classes:
        sc = result.metrics[name]
        click.echo(
            f"{name:<14} {sc.iou:7.3f} {sc.f1:7.3f} {sc.precision:10.3f} {sc.recall:7.3f} "
            f"{sc.support:9d}"
        )
    share = 100 * result.labelled_pixels / result.region_pixels
    pct = f"{share:.2g}" if share < 10 else f"{share:.0f}"  # sparse labels: 0.015 %
    click.echo(
        f"labelled pixels: {result.labelled_pixels} of {result.region_pixels} ({pct} %), "
        f"run {result.run.seconds:.1f} s"
    )


@main.group()
def models() -> None:
    """List, inspect and import models."""


@models.command("list")
@_common
@_handles_errors
def models_list(verbose: bool, quiet: bool) -> None:
    """Default models per class, built-in methods and the architectures geoseg builds."""
    from geoseg.models.defaults import DEFAULT_MODELS, default_model_cards
    from geoseg.models.registry import ARCHITECTURES
    from geoseg.models.spectral import METHODS

    cards = default_model_cards()
    click.echo("default models (used when --model is not given; first that fits the scene):")
    for name, sources in DEFAULT_MODELS.items():
        click.echo(f"  {name:<8} {' -> '.join(sources)}")
    click.echo("shipped model files:")
    for source, card in cards.items():
        if card.architecture == "spectral":
            continue
        val = card.training.get("validation", {})
        scores = val.get("classes", {}) if isinstance(val, dict) else {}
        ious = ", ".join(
            f"{c} IoU {scores[c]['iou']:.2f}"
            for c in card.class_names[1:]
            if isinstance(scores.get(c), dict) and scores[c].get("iou") is not None
        )
        click.echo(
            f"  {source}: {card.architecture}/{card.encoder}, bands {', '.join(card.bands)}, "
            f"{card.resolution_m or '?'} m; validation {ious or 'n/a'}"
        )
    click.echo("built-in methods (no weights; --model NAME, NAME:otsu or NAME:0.1):")
    for name, method in METHODS.items():
        click.echo(f"  {name:<8} {method.class_name}: {method.description}")
    click.echo("architectures (segmentation-models-pytorch):")
    for name, cls in ARCHITECTURES.items():
        click.echo(f"  {name:<15} smp.{cls}")


@models.command("show")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw card JSON.")
@_common
@_handles_errors
def models_show(model_file: str, as_json: bool, verbose: bool, quiet: bool) -> None:
    """Print the card of MODEL_FILE."""
    from geoseg.models.card import card_to_json, read_card

    card = read_card(model_file)
    if as_json:
        click.echo(card_to_json(card))
        return
    click.echo(f"name:          {card.name}")
    click.echo(f"architecture:  {card.architecture} / {card.encoder or '-'}")
    click.echo(f"bands:         {', '.join(card.bands)}")
    click.echo(f"normalisation: mean {list(card.mean)} std {list(card.std)}")
    classes = ", ".join(f"{c.name} ({c.color})" for c in card.classes)
    click.echo(f"classes:       {classes}")
    click.echo(f"tile/overlap:  {card.tile_size}/{card.overlap}")
    if card.resolution_m:
        click.echo(f"resolution:    {card.resolution_m} m")
    if card.description:
        click.echo(f"description:   {card.description}")
    for key, value in card.training.items():
        click.echo(f"training.{key}: {value}")


@models.command("import")
@click.argument("state_dict", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="Architecture name (see `geoseg models list`).")
@click.option("--encoder", required=True, help="smp encoder name, e.g. resnet34.")
@click.option("--bands", required=True, help="Input band roles in order, e.g. red,green,blue.")
@click.option(
    "--classes", required=True, help="Output channels in order, background first: bg,water."
)
@click.option("--colors", help="Class colours '#rrggbb' in the same order.")
@click.option(
    "--mean", help="Per-band mean of the training inputs (scene units), required: 1200,1100,900."
)
@click.option("--std", help="Per-band std of the training inputs (scene units), required.")
@click.option("--tile", default=512, show_default=True)
@click.option("--overlap", default=64, show_default=True)
@click.option("--resolution", type=float, help="Training ground resolution, metres.")
@click.option("--name", help="Model name (default: the output file stem).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
@_common
@_handles_errors
def models_import(
    state_dict: str,
    arch: str,
    encoder: str,
    bands: str,
    classes: str,
    colors: str | None,
    mean: str | None,
    std: str | None,
    tile: int,
    overlap: int,
    resolution: float | None,
    name: str | None,
    output: str,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Wrap a plain smp STATE_DICT (.pth / .safetensors) into a geoseg model file.

    --mean and --std are required: the network only works on inputs normalised as in its
    training, and no default (0 and 1) is right for scene values.
    """
    from geoseg.errors import ModelCardError, OutputExistsError
    from geoseg.models.card import ClassInfo, ModelCard
    from geoseg.models.registry import ARCHITECTURES, import_state_dict

    with _usage_errors(verbose=verbose, kinds=(ConfigError, ModelCardError)):
        band_names = _split(bands)
        class_names = _split(classes)
        color_list = _split(colors) or tuple(
            _PALETTE[i % len(_PALETTE)] for i in range(len(class_names))
        )
        if len(color_list) != len(class_names):
            raise ConfigError(f"{len(color_list)} colours for {len(class_names)} classes")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown --arch {arch!r}; valid: {', '.join(ARCHITECTURES)}")
        missing = [opt for opt, value in (("--mean", mean), ("--std", std)) if not value]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} required: the per-band mean and std of the inputs the "
                "model was trained on, in scene units, one per band (e.g. --mean "
                "1200,1100,900 --std 400,380,350); the model sees (x - mean) / std, and no "
                "default fits every model"
            )
        card = ModelCard(
            name=name or Path(output).stem,
            architecture=arch,
            encoder=encoder,
            bands=band_names,
            mean=_floats(mean, "--mean"),
            std=_floats(std, "--std"),
            classes=tuple(
                ClassInfo(name=n, color=c) for n, c in zip(class_names, color_list, strict=True)
            ),
            tile_size=tile,
            overlap=overlap,
            resolution_m=resolution,
            training={"imported_from": Path(state_dict).name},
        )
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"{output!r} exists; pass --overwrite to replace it")
    path = import_state_dict(state_dict, card, output)
    if not quiet:
        click.echo(f"geoseg: wrote {path}", err=True)


# --------------------------------------------------------------------------- batch workflows


class _BatchGroup(click.Group):
    """A group whose default command is ``run``: ``geoseg batch FILE`` runs FILE."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BatchGroup)
def batch() -> None:
    """Run batch workflows: many scenes from one YAML file, safe to re-run any time.

    \b
    geoseg batch FILE           same as `geoseg batch run FILE`
    geoseg batch run FILE       run what is missing: new, changed and failed scenes
    geoseg batch status FILE    each scene: done, failed, pending or running, with times
    Exit codes of run: 0 every scene done, 1 some failed, 2 invalid workflow file,
    130 interrupted. See workflows/README.md for the file format.
    """


def _workflow_or_exit(path: str, *, verbose: bool) -> Any:
    """The validated workflow, or every problem on stderr and exit code 2."""
    from geoseg.errors import WorkflowError
    from geoseg.workflow import load_workflow

    try:
        return load_workflow(path)
    except WorkflowError as err:
        _fail(err, verbose=verbose)
        sys.exit(2)


_BATCH_STYLE = {"done": "green", "failed": "red", "pending": "yellow", "running": "cyan"}


@contextmanager
def _batch_progress(*, quiet: bool) -> Iterator[Callable[[Any], None]]:
    """Render batch events: rich bars on a terminal, one line per scene otherwise."""
    if quiet:
        yield lambda event: None
        return
    if not sys.stderr.isatty():

        def line(event: Any) -> None:
            if event.kind in ("done", "failed"):  # a stop is told once, at the end
                note = f": {event.message}" if event.message else ""
                click.echo(f"geoseg: {event.kind} {event.scene}{note}", err=True)

        yield line
        return
    import threading

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    lock = threading.Lock()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        overall = bar.add_task("scenes", total=None)
        tasks: dict[str, Any] = {}

        def update(event: Any) -> None:
            with lock:
                if event.kind == "plan":
                    bar.update(overall, total=event.total)
                elif event.kind == "start":
                    tasks[event.scene] = bar.add_task(f"  {escape(event.scene)}", total=None)
                elif event.kind == "progress" and event.scene in tasks:
                    bar.update(tasks[event.scene], completed=event.done, total=event.total)
                elif event.kind in ("done", "failed", "stopped"):
                    if event.scene in tasks:
                        bar.remove_task(tasks.pop(event.scene))
                    if event.kind == "stopped":  # told once, at the end
                        return
                    bar.advance(overall)
                    colour = {"done": "green", "failed": "red"}.get(event.kind, "yellow")
                    note = f": {escape(event.message)}" if event.message else ""
                    bar.console.print(
                        f"[{colour}]{event.kind}[/] {escape(event.scene)}{note}", highlight=False
                    )

        yield update


def _interrupted_line(workflow: Any, result: Any) -> str:
    """One line for a stopped batch: what was kept and what a re-run does."""
    if result is None:  # interrupted again while stopping: no summary of the stop
        return (
            f"{workflow.name}: interrupted; finished scenes are kept, the others are pending: "
            f"`geoseg batch {workflow.path}` goes on with them"
        )
    done, pending, failed = (result.count(s) for s in ("done", "pending", "failed"))
    stopped = f" ({result.stopped} stopped mid-scene)" if result.stopped else ""
    return (
        f"{workflow.name}: interrupted; {done} done ({result.ran} in this run), {pending} "
        f"pending{stopped}" + (f", {failed} failed" if failed else "") + ". Done scenes are "
        f"kept; `geoseg batch {workflow.path}` "
        + (f"does the {pending} pending" if pending else "has nothing pending to do")
        + (" (reusing the blocks they finished)" if result.stopped else "")
        + (" and retries the failed" if failed else "")
    )


@batch.command("run")
@click.argument("workflow_file", type=click.Path(dir_okay=False))
@click.option("--retry-failed", is_flag=True, help="Also retry scenes whose retries are used up.")
@_common
@_handles_errors
def batch_run(workflow_file: str, retry_failed: bool, verbose: bool, quiet: bool) -> None:
    """Run WORKFLOW_FILE: every scene not yet done with its current input and settings."""
    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    from geoseg.workflow import run_workflow

    workflow = _workflow_or_exit(workflow_file, verbose=verbose)
    _setup_logging(verbose=verbose, quiet=quiet)
    if not quiet:
        for warning in workflow.warnings:
            click.echo(f"geoseg: warning: {warning}", err=True)
    try:
        with _batch_progress(quiet=quiet) as on_event:
            result = run_workflow(workflow, on_event=on_event, retry_failed=retry_failed)
    except KeyboardInterrupt as err:
        click.echo(f"geoseg: {_interrupted_line(workflow, getattr(err, 'result', None))}", err=True)
        sys.exit(130)
    if not quiet:
        counts = ", ".join(
            f"{result.count(s)} {s}" for s in ("done", "failed", "pending") if result.count(s)
        )
        click.echo(
            f"geoseg: {workflow.name}: ran {result.ran} of {len(result.scenes)} scenes; "
            f"{counts or 'no scenes'}; summary in {result.summary}",
            err=True,
        )
    if result.exit_code:
        sys.exit(result.exit_code)


@batch.command("status")
@click.argument("workflow_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@_common
@_handles_errors
def batch_status(workflow_file: str, as_json: bool, verbose: bool, quiet: bool) -> None:
    """Show each scene of WORKFLOW_FILE: done, failed, pending or running, with times."""
    import json

    from geoseg.workflow import workflow_status

    workflow = _workflow_or_exit(workflow_file, verbose=verbose)
    if not quiet and not as_json:
        for warning in workflow.warnings:
            click.echo(f"geoseg: warning: {warning}", err=True)
    rows: list[dict[str, Any]] = []
    for s in workflow_status(workflow):
        r = s.record
        rows.append(
            {
                "scene": s.scene.label,
                "input": s.scene.input,
                "status": s.status,
                "note": s.reason,
                "attempts": r.attempts if r else 0,
                "started": r.started if r else None,
                "finished": r.finished if r else None,
                "seconds": r.seconds if r else None,
                "features": dict(r.features) if r else {},
                "gpkg": str(s.scene.gpkg),
                "error": r.error if r and s.status != "done" else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{workflow.name} -> {workflow.folder}", title_justify="left")
    for column in ("scene", "status", "tries", "started (UTC)", "seconds", "polygons", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        status = row["status"]
        started = (row["started"] or "").replace("T", " ").removesuffix("Z")
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else ""
        polygons = str(sum(row["features"].values())) if row["features"] else ""
        note = row["note"] + (f": {row['error']}" if row["error"] else "")
        note = note if len(note) <= 90 else note[:89] + "…"  # all of it: --json
        table.add_row(
            escape(row["scene"]),
            f"[{_BATCH_STYLE.get(status, '')}]{status}[/]",
            str(row["attempts"] or ""),
            started,
            seconds,
            polygons,
            escape(note),
        )
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    totals = {k: sum(r["status"] == k for r in rows) for k in _BATCH_STYLE}
    console.print(", ".join(f"{v} {k}" for k, v in totals.items() if v) or "no scenes")


if __name__ == "__main__":  # pragma: no cover
    main()
