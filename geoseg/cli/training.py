"""``geoseg train`` and ``geoseg evaluate``."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
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


def _evaluate_outputs(
    model: str,
    image: str,
    labels: Any,
    /,
    *,
    class_map: Any,
    region: Any,
    smooth: str | None,
    bands: tuple[int, ...] | None,
    sensor: str | None,
    merge: Mapping[str, str],
    relaxed_px: int | None,
    objects: bool,
    classes: Sequence[str] | None = None,
    smooth_params: tuple[str, ...] = (),
    client: Any = None,
) -> tuple[Any, float]:
    """Run ``model`` over ``image`` as `geoseg run` does, into a temporary folder, and score
    its class raster and polygons (:func:`geoseg.training.output_scores.score_outputs`).

    Returns the scores and the run's seconds.
    """
    import tempfile

    from geoseg.config import InferenceOptions, RunConfig
    from geoseg.models.card import read_card
    from geoseg.models.spectral import is_spectral, spectral_card
    from geoseg.run.pipeline import plan_run, run_scene
    from geoseg.training.held_out import EVALUATION_BATCH
    from geoseg.training.output_scores import score_outputs

    if not classes:
        card = spectral_card(model) if is_spectral(model) else read_card(model)
        classes = card.class_names[1:]
    config = RunConfig(
        classes=tuple(classes),
        models=(model,),
        bands=bands,
        sensor=sensor,
        inference=InferenceOptions(batch_size=EVALUATION_BATCH),
        smooth=smooth,
        smooth_params=smooth_params,
    )
    plan = plan_run(image, config)
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp:
        run = run_scene(image, Path(tmp) / "eval.gpkg", config, client=client, plan=plan)
        scores = score_outputs(
            str(run.raster),
            run.gpkg,
            image=image,
            labels=labels,
            run_classes=plan.classes,
            class_map=class_map,
            region=region,
            merge=merge,
            relaxed_px=relaxed_px,
            objects=objects,
        )
    return scores, run.seconds


def _choose_threshold(config: Any, model: Path, *, say: Any) -> None:
    """Choose ``config.threshold_class``'s threshold on the held-out data; fold it in."""
    import tempfile

    import numpy as np

    from geoseg.config import InferenceOptions, RunConfig
    from geoseg.models.card import read_card
    from geoseg.run.pipeline import plan_run, run_scene
    from geoseg.training.config import data_relative
    from geoseg.training.held_out import EVALUATION_BATCH, held_out_data
    from geoseg.training.threshold import LEVELS, apply_threshold, choose_threshold, held_out_counts

    name = config.threshold_class
    training = read_card(model).training or {}
    if "threshold" in training:
        say(f"{name} threshold {training['threshold']['threshold']:.3f} already folded in")
        return
    held = held_out_data(config)
    if not held:
        raise ConfigError("threshold_class needs held-out data to choose the threshold on")
    pos = np.zeros(LEVELS, dtype=np.int64)
    neg = np.zeros(LEVELS, dtype=np.int64)
    for piece in held:
        say(f"choosing the {name} threshold on {Path(piece.image).name}")
        run_config = RunConfig(
            classes=(name,),
            models=(str(model),),
            bands=config.band_numbers,
            sensor=config.sensor,
            inference=InferenceOptions(batch_size=EVALUATION_BATCH),
            smooth="none",
            probabilities=True,
            centerlines=False,
        )
        plan = plan_run(piece.image, run_config)
        with tempfile.TemporaryDirectory(prefix="geoseg-threshold-") as tmp:
            run = run_scene(piece.image, Path(tmp) / "t.gpkg", run_config, plan=plan)
            p, n = held_out_counts(
                str(run.probabilities),
                band=1,
                image=piece.image,
                labels=piece.labels,
                class_map=config.class_map,
                class_name=name,
                region=piece.region,
            )
        pos += p
        neg += n
    choice = choose_threshold(pos, neg)
    apply_threshold(
        str(model),
        class_name=name,
        choice=choice,
        held_out=[data_relative(p.image) or p.image for p in held],
    )
    say(
        f"{name} threshold {choice.threshold:.3f} (IoU {choice.iou:.3f}; argmax "
        f"{choice.argmax_iou:.3f}) folded into the last layer"
    )


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
@click.option(
    "--only-evaluate",
    is_flag=True,
    help="Do not train: score the existing model file (-o or the file's output) on the "
    "held-out and test data into its card, as after training.",
)
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
    only_evaluate: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Train a model from CONFIG_FILE (YAML: inputs, class_map, bands, architecture ...).

    Relative paths in the file are relative to the file (input paths to its `data_root`
    when set). Checkpoints go to ``<output>.ckpt/`` unless ``checkpoint_dir`` is set, so an
    interrupted run resumes. Then the held-out data is scored through the real `geoseg run`
    pipeline, without smoothing and with the default recipes (and against the index methods
    the file's `compare` lists), into the card, which also records this command; so are the
    held-out and `test` data with the file's `scores` (merged classes, relaxed scores,
    polygon matching).
    """
    from geoseg.errors import OutputExistsError
    from geoseg.training.config_file import read_train_file
    from geoseg.training.loop import train as run_training
    from geoseg.training.progress import TrainProgress
    from geoseg.training.scoring import check_scoring

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
    if only_evaluate:
        if not Path(config.output).is_file():
            raise ConfigError(f"--only-evaluate: no model file {config.output!r} to score")
        _score(config, Path(config.output), quiet=quiet)
        return
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
        _score(config, result.model_path, quiet=quiet)
    if not quiet:
        click.echo(f"geoseg: wrote {result.model_path} ({result.describe()})", err=True)


def _score(config: Any, model: Path, *, quiet: bool) -> None:
    """Held-out scores (and ``scores`` on the held-out and test data) into the card."""
    from geoseg.run.evaluate import evaluate as run_evaluation
    from geoseg.training.scoring import score_held_out, score_outputs_into_card

    def say(line: str) -> None:
        if not quiet:
            click.echo(f"geoseg: {line}", err=True)

    if config.threshold_class is not None:
        _choose_threshold(config, model, say=say)
    score_held_out(model, config, evaluate=run_evaluation, progress=say)
    if config.scores or config.test:
        score_outputs_into_card(model, config, evaluate_outputs=_evaluate_outputs, progress=say)


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
@click.option(
    "--smooth",
    type=click.Choice(["none", "morph", "crf", "crf+morph", "gridcrf", "gridcrf+morph"]),
)
@click.option("--bands", help="Scene band numbers feeding the model.")
@click.option("--sensor", help="Sensor preset naming the bands.")
@click.option("--scheduler", default="sync", show_default=True, help="sync, local or address.")
@click.option(
    "--merge",
    "merge_map",
    help="Score predictions of a class as another, e.g. field_boundary=crops (cropland).",
)
@click.option(
    "--relaxed",
    "relaxed_px",
    type=click.IntRange(min=0),
    help="Also relaxed precision/recall/F1 with this slack in pixels (Mnih 2013; 3 for roads).",
)
@click.option(
    "--objects",
    is_flag=True,
    help="Vector labels: also object precision/recall/F1, the run's polygons matched one to "
    "one with the labelled polygons at IoU >= 0.5 (fields).",
)
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
    merge_map: str | None,
    relaxed_px: int | None,
    objects: bool,
    as_json: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Score MODEL on IMAGE against LABEL (raster on the same grid or vector file).

    Runs the real `geoseg run` pipeline (tiling, blending, smoothing) and reports per-class
    IoU, F1, precision and recall over the labelled pixels only (with vector labels, by
    default the pixels inside the polygons). With --merge, --relaxed or --objects, also
    merged classes (a field-boundary class scored as cropland), relaxed scores (roads drawn
    as centrelines) and object scores (the run's polygons against labelled polygons).
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
    if merge_map or relaxed_px is not None or objects:
        from geoseg.training.scoring import scored_labels

        merge = _parse_value_map(merge_map)
        if cmap is not None:
            labels, cmap = scored_labels(labels, cmap, merge)
        with open_execution(scheduler) as ex:
            scores, seconds = _evaluate_outputs(
                model,
                image,
                labels,
                class_map=cmap,
                region=window,
                smooth=smooth,
                bands=parse_band_list(bands) if bands else None,
                sensor=sensor,
                merge=merge,
                relaxed_px=relaxed_px,
                objects=objects,
                classes=names,
                client=ex.client,
            )
        if as_json:
            click.echo(json.dumps({**scores.to_dict(), "run_seconds": round(seconds, 2)}, indent=2))
            return
        _print_scores(scores, seconds)
        return
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


def _print_scores(scores: Any, seconds: float) -> None:
    click.echo(f"{'class':<14} {'IoU':>7} {'F1':>7} {'precision':>10} {'recall':>7} {'support':>9}")
    for sc in scores.metrics.classes:
        click.echo(
            f"{sc.name:<14} {sc.iou:7.3f} {sc.f1:7.3f} {sc.precision:10.3f} {sc.recall:7.3f} "
            f"{sc.support:9d}"
        )
    for src, dst in scores.merged.items():
        click.echo(f"(predicted {src} scored as {dst})")
    for name, r in scores.relaxed.items():
        click.echo(
            f"{name:<14} relaxed ({r.slack} px): F1 {r.f1:.3f}, precision {r.precision:.3f}, "
            f"recall {r.recall:.3f}"
        )
    for name, o in scores.objects.items():
        click.echo(
            f"{name:<14} objects (IoU >= {o.min_iou:g}): F1 {o.f1:.3f}, precision "
            f"{o.precision:.3f}, recall {o.recall:.3f} ({o.matched} matched of "
            f"{o.predicted} predicted, {o.labelled} labelled)"
        )
    click.echo(f"labelled pixels: {scores.labelled_pixels}, run {seconds:.1f} s")
