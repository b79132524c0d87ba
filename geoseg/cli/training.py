"""``geoseg train`` and ``geoseg evaluate``."""

from __future__ import annotations

import sys
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
    from geoseg.training.loop import TrainConfig, TrainProgress
    from geoseg.training.loop import train as run_training

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
