"""Model cards: a model file describes itself.

A geoseg model file is one ``.safetensors`` file: the weights as tensors and the card as
JSON in the file's metadata under the key ``geoseg.card``. Loading needs no pickle and the
card can be read without touching the weights (``geoseg models show``).

Two card formats are read. ``geoseg-model/1`` normalises with per-band ``mean``/``std`` and
maps softmax output channels to classes one to one. ``geoseg-model/2`` adds named
normalisation transforms (:mod:`geoseg.models.normalisation`), the physical units of the
input (``reflectance_scale``), the output activation (softmax, or sigmoid of one logit),
classes made of several output channels (``channels``), and the licence and attribution of
weights made elsewhere. A card that uses none of these is written as format 1, so models
trained by geoseg stay readable by older versions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geoseg.errors import ModelCardError
from geoseg.models.normalisation import Transform, transform_from_dict, transform_to_dict

__all__ = [
    "ACTIVATIONS",
    "CARD_KEY",
    "FORMAT",
    "FORMATS",
    "ClassInfo",
    "ModelCard",
    "card_from_json",
    "card_to_json",
    "read_card",
]

CARD_KEY = "geoseg.card"
FORMAT = "geoseg-model/2"
FORMAT_1 = "geoseg-model/1"
FORMATS = (FORMAT_1, FORMAT)
ACTIVATIONS = ("softmax", "sigmoid")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassInfo:
    """One class of a model. ``classes[0]`` of every model is the background.

    ``channels`` lists the network's probability channels (after the activation) whose sum
    is this class's probability; ``None`` means the channel at the class's own index, or,
    for the background of a card whose other classes list channels, every channel no other
    class takes.
    """

    name: str
    color: str = "#808080"
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ModelCardError(
                f"class name {self.name!r} must be non-empty letters, digits, '_' or '-'"
            )
        if not _COLOR.match(self.color):
            raise ModelCardError(
                f"class {self.name!r} colour {self.color!r} is not '#rrggbb' (e.g. '#1f78b4')"
            )
        if self.channels is not None:
            channels = _tuple(self.channels, f"classes.{self.name}.channels", int)
            object.__setattr__(self, "channels", channels)
            if any(c < 0 for c in channels) or len(set(channels)) != len(channels):
                raise ModelCardError(
                    f"class {self.name!r} channels {list(channels)} must be distinct "
                    "non-negative output channel numbers"
                )

    @property
    def rgb(self) -> tuple[int, int, int]:
        c = self.color
        return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCard:
    """Everything needed to run a model correctly on a new scene.

    Parameters
    ----------
    name
        Short identifier, e.g. ``"roads-unet-r34"``.
    architecture
        Registry name (``geoseg models list``): ``unet``, ``deeplabv3plus``, ``dynamicworld``
        ... or a spectral method (``spectral``).
    encoder
        smp encoder name (``resnet34``); empty for spectral methods and architectures
        without an encoder.
    bands
        Canonical input band roles in input order (``("red", "green", "blue")``).
    mean, std
        Per-band mean and standard deviation of the model's input values (in the units it
        reads, see ``reflectance_scale``). Without ``normalisation`` the model sees
        ``(x - mean) / std``. They also tell whether a scene's values are in the model's
        units (:func:`geoseg.models.defaults.units_misfit`) and scale the image for CRF
        smoothing.
    classes
        The model's classes; ``classes[0]`` is the background. Each is one probability
        channel of the network, or the sum of the channels it lists (:class:`ClassInfo`).
    tile_size, overlap
        Tile plan the model was trained for.
    resolution_m
        Ground sampling distance of the training data, metres.
    sensor
        Sensor preset of the training data, if any (informative).
    params
        Architecture keyword arguments (smp) or method parameters (spectral).
    training
        Free-form summary: data, epochs, time, validation metrics.
    description
        One paragraph for people.
    normalisation
        Transforms from input values to network input, in order
        (:mod:`geoseg.models.normalisation`); ``None``: ``zscore`` with ``mean`` and ``std``.
    reflectance_scale
        ``None``: the model reads the scene's values as stored. A number: the model reads
        reflectance times this number (``1`` for reflectance 0-1, ``10000`` for the digital
        numbers of Sentinel-2): when a scene's scale and offset are known (its band
        metadata, else its sensor preset) its values are converted to reflectance and
        multiplied by this; otherwise they are taken to be in these units already.
    activation
        ``softmax`` over the network's outputs, or ``sigmoid`` of a single logit, whose
        probability channels are then ``[1 - p, p]``.
    outputs
        Number of network output channels (logits); default one per class (softmax) or 1
        (sigmoid). Needed when classes list channels.
    licence, attribution, source
        For weights made elsewhere: the licence (SPDX id), the attribution it requires
        (verbatim), and where the weights come from (URL and version).
    """

    name: str
    architecture: str
    encoder: str = ""
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[ClassInfo, ...]
    tile_size: int = 512
    overlap: int = 64
    resolution_m: float | None = None
    sensor: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    normalisation: tuple[Transform, ...] | None = None
    reflectance_scale: float | None = None
    activation: str = "softmax"
    outputs: int | None = None
    licence: str = ""
    attribution: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.bands:
            raise ModelCardError(f"model {self.name!r} lists no input bands")
        if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise ModelCardError(
                f"model {self.name!r}: {len(self.bands)} bands but {len(self.mean)} means and "
                f"{len(self.std)} stds; give one of each per band"
            )
        if any(s <= 0 for s in self.std):
            raise ModelCardError(f"model {self.name!r}: every std must be positive: {self.std}")
        if len(self.classes) < 2:
            raise ModelCardError(
                f"model {self.name!r} needs a background class and at least one class"
            )
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ModelCardError(f"model {self.name!r} has duplicate class names: {names}")
        if self.tile_size % 32 or self.tile_size <= 0:
            raise ModelCardError(
                f"model {self.name!r}: tile size {self.tile_size} is not a multiple of 32"
            )
        # Checked here, not first at `geoseg run`: the tiling needs overlap <= tile / 2
        # (each pixel is blended from at most two ramps per axis).
        if not 0 <= self.overlap <= self.tile_size // 2:
            raise ModelCardError(
                f"model {self.name!r}: overlap {self.overlap} must be between 0 and half the "
                f"tile size {self.tile_size}; use an overlap of at most {self.tile_size // 2} "
                f"(e.g. {min(64, self.tile_size // 2)})"
            )
        if self.normalisation is not None:
            for step in self.normalisation:
                step.check_bands(len(self.bands), model=self.name)
        if self.reflectance_scale is not None and not self.reflectance_scale > 0:
            raise ModelCardError(
                f"model {self.name!r}: reflectance_scale {self.reflectance_scale} must be "
                "positive (1 for reflectance 0-1, 10000 for reflectance x 10000)"
            )
        self._check_outputs()

    def _check_outputs(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ModelCardError(
                f"model {self.name!r}: activation {self.activation!r} is not one of "
                f"{', '.join(ACTIVATIONS)}"
            )
        if self.outputs is not None and self.outputs < 1:
            raise ModelCardError(f"model {self.name!r}: outputs {self.outputs} must be at least 1")
        if self.activation == "sigmoid" and self.outputs not in (None, 1):
            raise ModelCardError(
                f"model {self.name!r}: a sigmoid model has one output logit, not {self.outputs}"
            )
        mapped = [c for c in self.classes[1:] if c.channels is not None]
        n = self.probability_channels
        if not mapped and self.classes[0].channels is None:
            if len(self.classes) != n:
                raise ModelCardError(
                    f"model {self.name!r}: {len(self.classes)} classes but {n} probability "
                    f"channels; list each class's channels or give one class per channel"
                )
            return
        if len(mapped) != len(self.classes) - 1:
            unmapped = next(c.name for c in self.classes[1:] if c.channels is None)
            raise ModelCardError(
                f"model {self.name!r}: class {unmapped!r} lists no channels; when classes "
                "merge channels every class but the background must list its own"
            )
        if self.activation == "softmax" and self.outputs is None:
            raise ModelCardError(
                f"model {self.name!r}: classes list channels, so give the network's output "
                "count (outputs)"
            )
        owner: dict[int, str] = {}
        for c in self.classes:
            for ch in c.channels or ():
                if ch >= n:
                    raise ModelCardError(
                        f"model {self.name!r}: class {c.name!r} takes channel {ch} but the "
                        f"network has {n} probability channels (0-{n - 1})"
                    )
                if ch in owner:
                    raise ModelCardError(
                        f"model {self.name!r}: channel {ch} is in both {owner[ch]!r} and "
                        f"{c.name!r}; a channel belongs to one class"
                    )
                owner[ch] = c.name

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def network_outputs(self) -> int:
        """Output channels (logits) of the network."""
        if self.activation == "sigmoid":
            return 1
        return self.outputs if self.outputs is not None else len(self.classes)

    @property
    def probability_channels(self) -> int:
        """Channels after the activation: the logits' for softmax, ``[1 - p, p]`` for sigmoid."""
        return 2 if self.activation == "sigmoid" else self.network_outputs

    @property
    def class_channels(self) -> tuple[tuple[int, ...], ...] | None:
        """The probability channels summed into each class, or ``None`` for one channel per
        class in order (no merging)."""
        if all(c.channels is None for c in self.classes):
            return None
        taken = {ch for c in self.classes for ch in (c.channels or ())}
        rest = tuple(ch for ch in range(self.probability_channels) if ch not in taken)
        return tuple(rest if c.channels is None else c.channels for c in self.classes)

    @property
    def transforms(self) -> tuple[Transform, ...]:
        """The normalisation chain in effect (``zscore`` of mean and std by default)."""
        if self.normalisation is not None:
            return self.normalisation
        return (Transform(op="zscore", params={"mean": self.mean, "std": self.std}),)

    def class_index(self, name: str) -> int:
        """Output channel of class ``name``."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ModelCardError(
                f"model {self.name!r} has no class {name!r}; "
                f"it has {', '.join(self.class_names[1:])}"
            ) from None

    def with_training(self, **summary: Any) -> ModelCard:
        return replace(self, training={**self.training, **summary})


# Fields that format 1 did not have, with their defaults: a card whose values are all the
# defaults is written as format 1.
_FORMAT_2_FIELDS: Mapping[str, Any] = {
    "normalisation": None,
    "reflectance_scale": None,
    "activation": "softmax",
    "outputs": None,
    "licence": "",
    "attribution": "",
    "source": "",
}


def _class_json(c: ClassInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"name": c.name, "color": c.color}
    if c.channels is not None:
        body["channels"] = list(c.channels)
    return body


def card_to_json(card: ModelCard) -> str:
    """The card as indented JSON (``format`` first): format 1 when it needs nothing newer."""
    body: dict[str, Any] = {}
    for name in ModelCard.__dataclass_fields__:
        body[name] = getattr(card, name)
    body["bands"] = list(card.bands)
    body["mean"] = list(card.mean)
    body["std"] = list(card.std)
    body["classes"] = [_class_json(c) for c in card.classes]
    body["params"] = dict(card.params)
    body["training"] = dict(card.training)
    newer = any(c.channels is not None for c in card.classes) or any(
        getattr(card, k) != v for k, v in _FORMAT_2_FIELDS.items()
    )
    if newer:
        norm = card.normalisation
        body["normalisation"] = None if norm is None else [transform_to_dict(t) for t in norm]
        fmt = FORMAT
    else:
        for k in _FORMAT_2_FIELDS:
            del body[k]
        fmt = FORMAT_1
    return json.dumps({"format": fmt, **body}, indent=2, sort_keys=False)


def _tuple(value: Any, what: str, kind: type) -> tuple[Any, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ModelCardError(f"card field {what!r} must be a list, got {value!r}")
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ModelCardError(f"card field {what!r} has a bad entry: {err}") from err


def card_from_json(text: str | Mapping[str, Any]) -> ModelCard:
    """Parse and validate a card (format 1 or 2).

    Raises
    ------
    ModelCardError
        On malformed JSON, an unknown format, missing or mistyped fields.
    """
    try:
        raw = json.loads(text) if isinstance(text, str) else dict(text)
    except json.JSONDecodeError as err:
        raise ModelCardError(f"model card is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ModelCardError("model card must be a JSON object")
    fmt = raw.pop("format", None)
    if fmt not in FORMATS:
        raise ModelCardError(
            f"unsupported model card format {fmt!r}; expected one of {', '.join(FORMATS)}"
        )
    known = set(ModelCard.__dataclass_fields__)
    if fmt == FORMAT_1:
        known -= set(_FORMAT_2_FIELDS)
    unknown = sorted(set(raw) - known)
    if unknown:
        newer = [k for k in unknown if k in _FORMAT_2_FIELDS]
        if newer:
            raise ModelCardError(
                f"card field {newer[0]!r} needs format {FORMAT!r}, the card says {fmt!r}"
            )
        raise ModelCardError(f"unknown model card fields {unknown}; valid: {sorted(known)}")
    try:
        classes = tuple(_class_from_json(c) for c in raw.pop("classes"))
        norm = raw.pop("normalisation", None)
        if norm is not None:
            if not isinstance(norm, list):
                raise ModelCardError(
                    f"card field 'normalisation' must be a list of steps, got {norm!r}"
                )
            raw["normalisation"] = tuple(transform_from_dict(step) for step in norm)
        return ModelCard(
            classes=classes,
            bands=_tuple(raw.pop("bands"), "bands", str),
            mean=_tuple(raw.pop("mean"), "mean", float),
            std=_tuple(raw.pop("std"), "std", float),
            **raw,
        )
    except KeyError as err:
        raise ModelCardError(f"model card lacks the required field {err.args[0]!r}") from err
    except TypeError as err:
        raise ModelCardError(f"model card is malformed: {err}") from err


def _class_from_json(raw: Any) -> ClassInfo:
    if not isinstance(raw, Mapping):
        raise ModelCardError(f"a class must be an object with a name, got {raw!r}")
    body = dict(raw)
    if body.get("channels") is not None:
        body["channels"] = _tuple(body["channels"], f"classes.{body.get('name')}.channels", int)
    return ClassInfo(**body)


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read only the card of a model file, without loading weights.

    Raises
    ------
    ModelCardError
        If the file is missing, not safetensors or ONNX, or carries no geoseg card.
    """
    from safetensors import SafetensorError, safe_open

    from geoseg.models.onnx_card import is_onnx, read_onnx_metadata

    p = Path(path)
    if not p.is_file():
        raise ModelCardError(f"model file {str(p)!r} does not exist")
    if is_onnx(p):
        meta = read_onnx_metadata(p)  # metadata only: neither the weights nor onnx
        if CARD_KEY not in meta:
            raise ModelCardError(
                f"{str(p)!r} has no geoseg card; make it a geoseg model with "
                f"`geoseg models import {p.name} --bands ... --classes ...`"
            )
        return card_from_json(meta[CARD_KEY])
    try:
        with safe_open(str(p), framework="np") as f:  # metadata only: no torch import
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelCardError(f"{str(p)!r} is not a safetensors model file: {err}") from err
    if CARD_KEY not in meta:
        raise ModelCardError(
            f"{str(p)!r} has no geoseg card; import plain weights with `geoseg models import`"
        )
    return card_from_json(meta[CARD_KEY])
