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
    """List, inspect, import and export models."""


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
@click.argument("source", type=click.Path(dir_okay=False))
@click.option(
    "--arch", help="Architecture name (see `geoseg models list`); required for state dicts."
)
@click.option("--encoder", help="smp encoder name, e.g. resnet34 (architectures with one).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Architecture setting, repeatable; VALUE is JSON or YAML: --param encoder_depth=4 "
    "--param decoder_channels=[128,64,32,16].",
)
@click.option("--bands", required=True, help="Input band roles in order, e.g. red,green,blue.")
@click.option(
    "--classes",
    help="Output channels in order, background first: bg,water (an ONNX model's metadata may "
    "name them).",
)
@click.option("--colors", help="Class colours '#rrggbb' in the same order.")
@click.option(
    "--mean",
    help="Per-band mean of the training inputs (scene units); required but for ONNX models "
    "whose metadata has it: 1200,1100,900.",
)
@click.option("--std", help="Per-band std of the training inputs (scene units), as --mean.")
@click.option("--tile", type=int, help="Tile size, px (default: the ONNX metadata's, else 512).")
@click.option(
    "--overlap", type=int, help="Tile overlap, px (default: the ONNX metadata's, else 64)."
)
@click.option("--resolution", type=float, help="Training ground resolution, metres.")
@click.option(
    "--outputs",
    type=click.Choice(["probabilities", "logits"]),
    help="ONNX: whether the graph ends in its softmax/sigmoid (default probabilities, as "
    "Deepness models do).",
)
@click.option("--name", help="Model name (default: the output file stem).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
@_common
@_handles_errors
def models_import(
    source: str,
    arch: str | None,
    encoder: str | None,
    params: tuple[str, ...],
    bands: str,
    classes: str | None,
    colors: str | None,
    mean: str | None,
    std: str | None,
    tile: int | None,
    overlap: int | None,
    resolution: float | None,
    outputs: str | None,
    name: str | None,
    output: str,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Make SOURCE a geoseg model: a plain smp state dict (.pth / .safetensors, a geoseg
    model file too) or an ONNX segmentation model (.onnx, e.g. from the Deepness model zoo).

    A state dict needs --arch, and --encoder and --param for the settings it was trained
    with; the result is a .safetensors model file. An ONNX model keeps its graph and gets
    the card in its metadata (-o must end in .onnx); what its Deepness metadata holds
    (class names, resolution, tile size, overlap, standardisation) need not be given.

    --mean and --std are required unless the ONNX metadata has them: the network only works
    on inputs normalised as in its training, and no default (0 and 1) is right for scene
    values.
    """
    from geoseg.errors import ModelCardError, OutputExistsError

    if Path(source).suffix.lower() == ".onnx":
        _import_onnx(
            source,
            arch=arch,
            encoder=encoder,
            params=params,
            bands=bands,
            classes=classes,
            colors=colors,
            mean=mean,
            std=std,
            tile=tile,
            overlap=overlap,
            resolution=resolution,
            outputs=outputs,
            name=name,
            output=output,
            overwrite=overwrite,
            verbose=verbose,
            quiet=quiet,
        )
        return
    from geoseg.models.card import ClassInfo, ModelCard
    from geoseg.models.registry import (
        ARCHITECTURES,
        GEOSEG_ARCHITECTURES,
        import_state_dict,
    )

    with _usage_errors(verbose=verbose, kinds=(ConfigError, ModelCardError)):
        if outputs:
            raise ConfigError("--outputs applies to ONNX models; a state dict holds logits")
        if not arch:
            raise ConfigError(
                f"--arch required for a state dict; one of {', '.join(ARCHITECTURES)}"
            )
        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown --arch {arch!r}; valid: {', '.join(ARCHITECTURES)}")
        takes_encoder = arch not in GEOSEG_ARCHITECTURES or GEOSEG_ARCHITECTURES[arch][2]
        if takes_encoder and not encoder:
            raise ConfigError(
                f"--encoder required: {arch} is built over an encoder (e.g. resnet34)"
            )
        if encoder and not takes_encoder:
            raise ConfigError(f"{arch} has no encoder; drop --encoder {encoder}")
        band_names = _split(bands)
        class_names = _split(classes)
        if not class_names:
            raise ConfigError("--classes required: the output channels in order, background first")
        color_list = _class_colors(colors, len(class_names))
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
            encoder=encoder or "",
            bands=band_names,
            mean=_floats(mean, "--mean"),
            std=_floats(std, "--std"),
            classes=tuple(
                ClassInfo(name=n, color=c) for n, c in zip(class_names, color_list, strict=True)
            ),
            tile_size=512 if tile is None else tile,
            overlap=64 if overlap is None else overlap,
            resolution_m=resolution,
            params=_params(params),
            training={"imported_from": Path(source).name},
        )
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"{output!r} exists; pass --overwrite to replace it")
    path = import_state_dict(source, card, output)
    if not quiet:
        click.echo(f"geoseg: wrote {path}", err=True)


def _import_onnx(
    source: str,
    *,
    arch: str | None,
    encoder: str | None,
    params: tuple[str, ...],
    bands: str,
    classes: str | None,
    colors: str | None,
    mean: str | None,
    std: str | None,
    tile: int | None,
    overlap: int | None,
    resolution: float | None,
    outputs: str | None,
    name: str | None,
    output: str,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    from geoseg.errors import ModelCardError, OutputExistsError
    from geoseg.models.onnx import import_onnx, require_onnx

    with _usage_errors(verbose=verbose, kinds=(ConfigError,)):
        given = [f for f, v in (("--arch", arch), ("--encoder", encoder), ("--param", params)) if v]
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply to state dicts; an ONNX model holds its architecture"
            )
        if Path(output).suffix.lower() != ".onnx":
            raise ConfigError(
                f"-o {output!r}: an imported ONNX model stays ONNX; "
                f"name it {Path(output).stem}.onnx"
            )
        if (mean is None) != (std is None):
            raise ConfigError(
                "give both --mean and --std, or neither (to use the model's metadata)"
            )
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"{output!r} exists; pass --overwrite to replace it")
    require_onnx()
    with _usage_errors(verbose=verbose, kinds=(ConfigError, ModelCardError)):
        band_names = _split(bands)
        class_names = _split(classes) or None
        color_list = _split(colors) or None
        mean_values = _floats(mean, "--mean") if mean else None
        std_values = _floats(std, "--std") if std else None
    # Problems with the file itself are exit 1; options that do not fit it, exit 2.
    with _usage_errors(verbose=verbose, kinds=(ConfigError,)):
        card = import_onnx(
            source,
            output,
            bands=band_names,
            name=name or Path(output).stem,
            classes=class_names,
            colors=color_list,
            palette=_PALETTE,
            mean=mean_values,
            std=std_values,
            resolution_m=resolution,
            tile=tile,
            overlap=overlap,
            outputs=outputs,
        )
    if not quiet:
        click.echo(
            f"geoseg: wrote {output} ({', '.join(card.class_names)}; tile {card.tile_size}, "
            f"overlap {card.overlap})",
            err=True,
        )


def _class_colors(colors: str | None, count: int) -> tuple[str, ...]:
    color_list = _split(colors) or tuple(_PALETTE[i % len(_PALETTE)] for i in range(count))
    if len(color_list) != count:
        raise ConfigError(f"{len(color_list)} colours for {count} classes")
    return color_list


# Set by geoseg from --bands, --classes and --encoder, never by --param.
_RESERVED_PARAMS = ("in_channels", "classes", "encoder_name", "encoder_weights")


def _params(items: tuple[str, ...]) -> dict[str, object]:
    """``--param KEY=VALUE`` options as architecture keyword arguments (VALUE: JSON/YAML)."""
    import json

    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"--param {item!r} is not KEY=VALUE (e.g. --param encoder_depth=4 or "
                "--param decoder_channels=[128,64,32,16])"
            )
        if key in _RESERVED_PARAMS:
            raise ConfigError(
                f"--param {key} is set from --bands, --classes and --encoder; drop it"
            )
        if key in out:
            raise ConfigError(f"--param {key} is given twice")
        try:
            value = yaml.safe_load(text)
            json.dumps(value)
        except (yaml.YAMLError, TypeError, ValueError) as err:
            detail = str(err).strip().splitlines()[0]
            raise ConfigError(
                f"--param {key}={text!r} is not a JSON or YAML number, string, list or "
                f"mapping ({detail})"
            ) from None
        out[key] = value
    return out


@models.command("export")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option(
    "--onnx",
    "as_onnx",
    is_flag=True,
    help="Write an ONNX model (onnxruntime, the Deepness QGIS plugin) with the card inside.",
)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@_common
@_handles_errors
def models_export(
    model_file: str,
    as_onnx: bool,
    opset: int,
    output: str,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Write MODEL_FILE (a geoseg .safetensors model) in another format.

    --onnx: an fp32 graph for any batch and tile size that outputs probabilities, with the
    geoseg card and the Deepness plugin's metadata (classes, resolution, tile size and
    overlap, and the standardisation when the card's normalisation is affine per band).
    Needs the onnx extra: pip install 'geoseg[onnx]'.
    """
    from geoseg.errors import OutputExistsError
    from geoseg.models.onnx import OPSET, export_onnx, require_onnx

    with _usage_errors(verbose=verbose):
        if not as_onnx:
            raise ConfigError("choose the format to write: --onnx")
        if Path(output).suffix.lower() != ".onnx":
            raise ConfigError(f"-o {output!r} must end in .onnx")
        if opset < OPSET:
            raise ConfigError(f"--opset {opset} is too old; use {OPSET} or newer")
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"{output!r} exists; pass --overwrite to replace it")
    require_onnx()
    path = export_onnx(model_file, output, opset=opset)
    if not quiet:
        click.echo(f"geoseg: wrote {path}", err=True)


# --------------------------------------------------------------------------- batch workflows
