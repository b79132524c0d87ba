"""Model cards: a model file describes itself.

A geoseg model file is one ``.safetensors`` file: the weights as tensors and the card as
JSON in the file's metadata under the key ``geoseg.card``. Loading needs no pickle and the
card can be read without touching the weights (``geoseg models show``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from geoseg.errors import ModelCardError

__all__ = [
    "CARD_KEY",
    "FORMAT",
    "ClassInfo",
    "ModelCard",
    "card_from_json",
    "card_to_json",
    "read_card",
]

CARD_KEY = "geoseg.card"
FORMAT = "geoseg-model/1"
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassInfo:
    """One output channel of a model. Channel 0 of every model is the background."""

    name: str
    color: str = "#808080"

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ModelCardError(
                f"class name {self.name!r} must be non-empty letters, digits, '_' or '-'"
            )
        if not _COLOR.match(self.color):
            raise ModelCardError(
                f"class {self.name!r} colour {self.color!r} is not '#rrggbb' (e.g. '#1f78b4')"
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
        Registry name (``geoseg models list``): ``unet``, ``deeplabv3plus`` ... or a spectral
        method (``spectral``).
    encoder
        smp encoder name (``resnet34``); empty for spectral methods.
    bands
        Canonical input band roles in input order (``("red", "green", "blue")``).
    mean, std
        Per-band normalisation in the scene's units: the model sees ``(x - mean) / std``.
    classes
        Output channels; ``classes[0]`` is the background.
    tile_size, overlap
        Tile plan the model was trained for.
    resolution_m
        Ground sampling distance of the training data, metres.
    params
        Architecture keyword arguments (smp) or method parameters (spectral).
    training
        Free-form summary: data, epochs, time, validation metrics.
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

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

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


def card_to_json(card: ModelCard) -> str:
    """The card as indented JSON (``format`` first)."""
    body = asdict(card)
    body["params"] = dict(card.params)
    body["training"] = dict(card.training)
    return json.dumps({"format": FORMAT, **body}, indent=2, sort_keys=False)


def _tuple(value: Any, what: str, kind: type) -> tuple[Any, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ModelCardError(f"card field {what!r} must be a list, got {value!r}")
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ModelCardError(f"card field {what!r} has a bad entry: {err}") from err


def card_from_json(text: str | Mapping[str, Any]) -> ModelCard:
    """Parse and validate a card.

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
    if fmt != FORMAT:
        raise ModelCardError(f"unsupported model card format {fmt!r}; expected {FORMAT!r}")
    known = set(ModelCard.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelCardError(f"unknown model card fields {unknown}; valid: {sorted(known)}")
    try:
        classes = tuple(ClassInfo(**c) for c in raw.pop("classes"))
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


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read only the card of a model file, without loading weights.

    Raises
    ------
    ModelCardError
        If the file is missing, not safetensors, or carries no geoseg card.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ModelCardError(f"model file {str(p)!r} does not exist")
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
