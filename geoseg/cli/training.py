"""``geoseg train`` and ``geoseg evaluate``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from geoseg.cli._base import (
    _common,
    _handles_errors,
    _progress,
    _split,
    main,
)
from geoseg.errors import ConfigError


def _train_command(config_file: str, options: Sequence[tuple[str, object]]) -> str:
    """The ``geoseg train`` command line of a run, for its card: the options as given."""
    words = ["geoseg", "train", config_file]
    for flag, value in options:
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return shlex.join(words)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--epochs", type=int, help="Override the number of epochs.")
@click.option("--steps", type=int, help="Override the batches per epoch.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue a run.")
@click.option(
    "--evaluate/--no-evaluate",
    "score",
    default=True,
    show_default=True,
    help="Then score the held-out data through the geoseg run pipeline into the card.",
)
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
    score: bool,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Train a model from CONFIG_FILE (YAML: inputs, class_map, bands, architecture ...).

    Relative paths in the file are relative to the file (input paths to its `data_root`
    when set). Checkpoints go to ``<output>.ckpt/`` unless ``checkpoint_dir`` is set, so an
    interrupted run resumes. Then the held-out data is scored through the real `geoseg run`
    pipeline, without smoothing and with the default recipes (and against the index methods
    the file's `compare` lists), into the card, which also records this command.
    """
    from geoseg.errors import OutputExistsError
    from geoseg.training.config_file import read_train_file
    from geoseg.training.loop import train as run_training
    from geoseg.training.progress import TrainProgress
    from geoseg.training.scoring import check_scoring, score_held_out

    command = _train_command(
        config_file,
        [
            ("-o", output),
            ("--epochs", epochs),
            ("--steps", steps),
            ("--device", device),
            ("--no-resume", not resume),
            ("--no-evaluate", not score),
            ("--overwrite", overwrite),
        ],
    )
    overrides: dict[str, Any] = {"resume": resume, "command": command}
    if output:
        overrides["output"] = str(Path(output).resolve())
    for key, value in (("epochs", epochs), ("steps_per_epoch", steps), ("device", device)):
        if value is not None:
            overrides[key] = value
    config = read_train_file(config_file, overrides=overrides)
    if Path(config.output).exists() and not overwrite:
        raise OutputExistsError(f"{config.output!r} exists; pass --overwrite to replace it")
    if score:
        check_scoring(config)  # before hours of training, not after
    with _progress(quiet=quiet, label="training") as bar:

        def report(p: TrainProgress) -> None:
            if p.stage == "train":
                total = p.epochs * p.steps
                bar((p.epoch - 1) * p.steps + p.step, total)
            elif p.stage == "epoch" and p.record is not None and not quiet:
                click.echo(f"geoseg: epoch {p.epoch}/{p.epochs} {p.record.describe()}", err=True)

        result = run_training(config, progress=report)
    if score:
        from geoseg.run.evaluate import evaluate as run_evaluation

        def say(line: str) -> None:
            if not quiet:
                click.echo(f"geoseg: {line}", err=True)

        score_held_out(result.model_path, config, evaluate=run_evaluation, progress=say)
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
    from geoseg.models.card import ClassInfo, read_card
    from geoseg.models.spectral import is_spectral, spectral_card
    from geoseg.run.evaluate import evaluate as run_evaluation
    from geoseg.run.evaluate import evaluation_labels
    from geoseg.scheduler import open_execution
    from geoseg.tiling.grid import PixelWindow
    from geoseg.training.labels import ClassMap

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
