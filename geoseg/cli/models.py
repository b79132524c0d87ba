"""``geoseg models list | show | import``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import click

from geoseg.cli._base import (
    _PALETTE,
    _common,
    _floats,
    _handles_errors,
    _split,
    _usage_errors,
    main,
)
from geoseg.errors import ConfigError
from geoseg.models.card import ModelCard
from geoseg.models.normalisation import Transform


@main.group()
def models() -> None:
    """List, inspect and import models."""


@models.command("list")
@_common
@_handles_errors
def models_list(verbose: bool, quiet: bool) -> None:
    """Default models per class, built-in methods and the architectures geoseg builds."""
    from geoseg.models.defaults import DEFAULT_MODELS, default_model_cards
    from geoseg.models.registry import ARCHITECTURES, GEOSEG_ARCHITECTURES, SMP_ARCHITECTURES
    from geoseg.models.spectral import METHODS

    cards = default_model_cards()
    click.echo("default models (used when --model is not given; first that fits the scene):")
    for name, sources in DEFAULT_MODELS.items():
        click.echo(f"  {name:<15} {' -> '.join(sources)}")
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
        arch = f"{card.architecture}/{card.encoder}" if card.encoder else card.architecture
        licence = f"; {card.licence}" if card.licence else ""
        click.echo(
            f"  {source}: {arch}, bands {', '.join(card.bands)}, "
            f"{card.resolution_m or '?'} m; validation {ious or 'n/a'}{licence}"
        )
        if card.attribution:
            credit = textwrap.fill(
                _credit(card.attribution), width=96, initial_indent="    ", subsequent_indent="    "
            )
            click.echo(credit)
    click.echo("built-in methods (no weights; --model NAME, NAME:otsu or NAME:0.1):")
    for name, method in METHODS.items():
        click.echo(f"  {name:<8} {method.class_name}: {method.description}")
    click.echo("architectures:")
    for name in ARCHITECTURES:
        if name in SMP_ARCHITECTURES:
            click.echo(f"  {name:<15} segmentation-models-pytorch {SMP_ARCHITECTURES[name]}")
        else:
            module, cls, _ = GEOSEG_ARCHITECTURES[name]
            click.echo(f"  {name:<15} geoseg.models.architectures.{module}.{cls}")


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
    click.echo(f"input:         {_units(card)}")
    if card.normalisation is None:
        click.echo(f"normalisation: mean {list(card.mean)} std {list(card.std)}")
    else:
        steps = " -> ".join(_step(t) for t in card.normalisation) or "none"
        click.echo(f"normalisation: {steps}")
        click.echo(f"typical input: mean {list(card.mean)} std {list(card.std)}")
    classes = ", ".join(f"{c.name} ({c.color})" for c in card.classes)
    click.echo(f"classes:       {classes}")
    click.echo(f"outputs:       {_outputs(card)}")
    click.echo(f"tile/overlap:  {card.tile_size}/{card.overlap}")
    if card.resolution_m:
        click.echo(f"resolution:    {card.resolution_m} m")
    if card.description:
        click.echo(f"description:   {card.description}")
    if card.licence:
        click.echo(f"licence:       {card.licence}")
    if card.source:
        click.echo(f"source:        {card.source}")
    if card.attribution:
        click.echo("attribution:")
        for line in card.attribution.splitlines():
            click.echo(f"  {line}".rstrip())
    for key, value in card.training.items():
        click.echo(f"training.{key}: {value}")


def _credit(attribution: str) -> str:
    """An attribution on one line, without the licence's boilerplate (shown in full by
    ``geoseg models show``)."""
    lines: list[str] = []
    for line in attribution.splitlines():
        if line.strip().lower().startswith("permission is hereby granted"):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines)


def _units(card: ModelCard) -> str:
    if card.reflectance_scale is None:
        return "the scene's values as stored"
    scale = f" x {card.reflectance_scale:g}" if card.reflectance_scale != 1 else " (0-1)"
    return (
        f"reflectance{scale} (the scene's scale and offset applied when known: band metadata, "
        "else --sensor)"
    )


def _step(transform: Transform) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, tuple):
            return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    args = ", ".join(f"{k}={fmt(v)}" for k, v in transform.params.items())
    return f"{transform.op}({args})"


def _outputs(card: ModelCard) -> str:
    text = (
        "sigmoid of 1 logit -> [1 - p, p]"
        if card.activation == "sigmoid"
        else f"softmax over {card.network_outputs} logits"
    )
    merged = card.class_channels
    if merged is not None:
        parts = [
            f"{c.name}={'+'.join(map(str, chans)) or 'none'}"
            for c, chans in zip(card.classes, merged, strict=True)
        ]
        text += f"; classes from channels: {', '.join(parts)}"
    return text


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
