"""What an ONNX model file says about its model: metadata read without the weights, and the
Deepness QGIS plugin's keys to and from a geoseg card.

An ONNX file is one protobuf ``ModelProto``: the network (``graph``, which holds the weights)
and ``metadata_props``, string key-value pairs where a geoseg model keeps its card
(:data:`geoseg.models.card.CARD_KEY`) and the keys the Deepness QGIS plugin reads. The
reader below walks the top-level fields of the file and skips the graph by seeking past
it, so reading a card costs a few small reads whatever the model's size, and needs neither
the ``onnx`` package nor onnxruntime (``geoseg models show`` and run planning work without
the optional extra).

Deepness's conventions (its documentation, "Adding metadata to ONNX model", and its
``ModelBase``): an input tile of ``C`` channels is scaled to 0-1 by dividing by 255, then
standardised with ``standardization_mean`` and ``standardization_std`` (one per channel);
the output is ``(N, C, H, W)`` probabilities, one channel taken as a binary mask; metadata
values are JSON: ``model_type`` ``"Segmentor"``, ``class_names`` ``{"0": "background", ...}``,
``resolution`` in cm/px, ``tile_size`` (the documentation says ``tiles_size``; both are
written), ``tiles_overlap`` in percent of the tile, ``seg_thresh``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from geoseg.errors import ConfigError, ModelCardError
from geoseg.models.normalisation import Transform

if TYPE_CHECKING:
    from geoseg.models.card import ModelCard

log = logging.getLogger(__name__)

__all__ = [
    "DEEPNESS_SCALE",
    "ONNX_SUFFIX",
    "deepness_class_names",
    "deepness_metadata",
    "deepness_normalisation",
    "deepness_overlap",
    "deepness_resolution",
    "deepness_tile",
    "deepness_value",
    "is_onnx",
    "read_onnx_metadata",
]

ONNX_SUFFIX = ".onnx"

# ModelProto fields (onnx.proto3) -> wire type: 0 varint, 2 length-delimited.
_MODEL_FIELDS = {
    1: 0,  # ir_version
    2: 2,  # producer_name
    3: 2,  # producer_version
    4: 2,  # domain
    5: 0,  # model_version
    6: 2,  # doc_string
    7: 2,  # graph
    8: 2,  # opset_import
    14: 2,  # metadata_props
    20: 2,  # training_info
    25: 2,  # functions
    26: 2,  # configuration
}
_GRAPH = 7
_METADATA = 14

DEEPNESS_SCALE = 255.0
"""Deepness divides every input value by this before standardising."""
TYPICAL_8BIT = (127.5, 73.6)
"""Mean and std of uniform 8-bit values: the typical input of a Deepness model that has no
standardisation (nodata fill, the units check of ``geoseg run``)."""


def is_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model file as a dict (a repeated key: the last).

    Raises
    ------
    ModelCardError
        If the file is missing, unreadable or not an ONNX model.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelCardError(f"model file {str(p)!r} does not exist")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            return _scan(f, size)
    except _NotOnnx as err:
        raise ModelCardError(f"{str(p)!r} is not an ONNX model: {err}") from None
    except OSError as err:
        raise ModelCardError(f"cannot read {str(p)!r}: {err}") from err


class _NotOnnx(Exception):
    pass


def _scan(f: BinaryIO, size: int) -> dict[str, str]:
    props: dict[str, str] = {}
    graph = False
    while (first := f.read(1)) != b"":
        tag = _varint(f, first=first[0])
        field, wire = tag >> 3, tag & 7
        if _MODEL_FIELDS.get(field) != wire:
            raise _NotOnnx(f"unexpected field {field} (wire type {wire}) at byte {f.tell()}")
        if wire == 0:
            _varint(f)
            continue
        length = _varint(f)
        if f.tell() + length > size:
            raise _NotOnnx(f"field {field} runs past the end of the file (truncated?)")
        if field == _METADATA:
            key, value = _entry(f.read(length))
            props[key] = value
        else:
            graph |= field == _GRAPH
            f.seek(length, os.SEEK_CUR)  # the graph, with the weights: never read
    if not graph:
        raise _NotOnnx("it has no graph")
    return props


def _varint(f: BinaryIO, *, first: int | None = None) -> int:
    """A protobuf varint read from ``f`` (``first``: its first byte, already read)."""
    value = shift = 0
    while True:
        if first is not None:
            byte, first = first, None
        else:
            read = f.read(1)
            if not read:
                raise _NotOnnx("the file ends inside a field")
            byte = read[0]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise _NotOnnx("malformed number")


def _entry(data: bytes) -> tuple[str, str]:
    """A ``StringStringEntryProto``: ``key`` (field 1) and ``value`` (field 2)."""
    fields = {1: "", 2: ""}
    i = 0
    while i < len(data):
        tag, i = _varint_at(data, i)
        field, wire = tag >> 3, tag & 7
        if wire != 2:
            raise _NotOnnx(f"malformed metadata entry (field {field}, wire type {wire})")
        length, i = _varint_at(data, i)
        if i + length > len(data):
            raise _NotOnnx("malformed metadata entry (runs past its end)")
        if field in fields:
            try:
                fields[field] = data[i : i + length].decode("utf-8")
            except UnicodeDecodeError as err:
                raise _NotOnnx(f"metadata entry is not UTF-8: {err}") from None
        i += length
    return fields[1], fields[2]


def _varint_at(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(data):
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    raise _NotOnnx("malformed metadata entry (ends inside a number)")


# ------------------------------------------------------------------------------ Deepness keys


def deepness_metadata(card: ModelCard) -> dict[str, str]:
    """The Deepness plugin's metadata for a geoseg model, as JSON strings.

    ``standardization_mean``/``_std`` are written when the card's normalisation is one affine
    map per band (z-score, scale, affine, divide; Deepness's ``(x / 255 - m) / s`` is then the
    same map) and left out otherwise (``clip``, ``log1p`` and ``sigmoid`` steps have no
    Deepness equivalent: Deepness would feed the network ``x / 255``). They hold for a scene
    stored in the card's input units: geoseg converts a scene to reflectance x
    ``reflectance_scale`` from its metadata, Deepness never does. ``seg_thresh`` is 0.5 for a
    sigmoid model and 0 for softmax, where geoseg takes the most probable class with no
    threshold. ``seg_small_segment`` is not written: geoseg's smoothing and minimum polygon
    area are options of a run, not of the model.
    """
    names = _channel_names(card)
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): n for i, n in enumerate(names)},
        "tile_size": card.tile_size,
        "tiles_size": card.tile_size,
        "tiles_overlap": round(100 * card.overlap / card.tile_size),
        "seg_thresh": 0.5 if card.activation == "sigmoid" else 0.0,
    }
    if card.resolution_m:
        meta["resolution"] = round(card.resolution_m * 100, 6)
    standard = _deepness_standardization(card.transforms, bands=len(card.bands))
    if standard is not None:
        meta["standardization_mean"], meta["standardization_std"] = standard
    return {k: json.dumps(v) for k, v in meta.items()}


def _channel_names(card: ModelCard) -> list[str]:
    """A class name for every channel Deepness shows (a single sigmoid channel is two)."""
    merged = card.class_channels
    if merged is None:
        return list(card.class_names)
    owner = {ch: c.name for c, chans in zip(card.classes, merged, strict=True) for ch in chans}
    return [owner.get(ch, card.classes[0].name) for ch in range(card.probability_channels)]


def _deepness_standardization(
    transforms: Sequence[Transform], *, bands: int
) -> tuple[list[float], list[float]] | None:
    """Deepness's ``(mean, std)`` on 0-1 input for a chain that is ``a * x + b`` per band."""
    a, b = np.ones(bands), np.zeros(bands)
    for t in transforms:
        p = {
            k: np.broadcast_to(np.asarray(v, dtype=np.float64), (bands,))
            for k, v in t.params.items()
        }
        if t.op == "scale":
            a, b = a * p["factor"], b * p["factor"]
        elif t.op == "affine":
            a, b = a * p["scale"], b * p["scale"] + p["offset"]
        elif t.op == "divide":
            a, b = a / p["divisor"], b / p["divisor"]
        elif t.op == "zscore":
            a, b = a / p["std"], (b - p["mean"]) / p["std"]
        else:
            return None
    if np.any(a <= 0):
        return None
    # (x / 255 - m) / s == a * x + b  <=>  s = 1 / (255 a), m = -b s
    std = 1.0 / (DEEPNESS_SCALE * a)
    mean = -b * std
    return [float(v) for v in mean], [float(v) for v in std]


def deepness_value(meta: Mapping[str, str], key: str) -> Any:
    """A Deepness metadata value (JSON, or a Python literal as some zoo models hold)."""
    text = meta[key]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise ModelCardError(
                f"metadata {key!r} is neither JSON nor a literal: {text!r}"
            ) from err


def deepness_class_names(meta: Mapping[str, str]) -> tuple[str, ...] | None:
    """The class names of ``class_names`` (or the older ``names``) in index order, made
    geoseg names (other characters become ``_``); ``None`` when the metadata has none."""
    key = next((k for k in ("class_names", "names") if k in meta), None)
    if key is None:
        return None
    raw = deepness_value(meta, key)
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
        raw = raw[0]  # one dict per output layer
    if not isinstance(raw, dict):
        raise ModelCardError(f"metadata {key!r} is not a dict of class index to name: {raw!r}")
    try:
        ordered = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError as err:
        raise ModelCardError(f"metadata {key!r} has a class index that is not a number") from err
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise ModelCardError(f"metadata {key!r} does not number its classes 0, 1, 2...: {raw}")
    return tuple(_class_name(name, i) for i, name in ordered)


def _class_name(name: str, index: int) -> str:
    """A geoseg class name (letters, digits, '_' and '-') for a free-form one."""
    clean = re.sub(r"[^A-Za-z0-9_\-]+", "_", name.strip()).strip("_") or f"class{index}"
    return ("_" if name.strip().startswith("_") else "") + clean


def deepness_tile(
    meta: Mapping[str, str], shape: Sequence[int | None], tile: int | None, *, src: Path
) -> int:
    """The tile size: ``tile``, else the model's fixed input size, else ``tile_size`` (or
    ``tiles_size``), else 512. ``shape`` is the input's ``(N, C, H, W)``, ``None`` where
    dynamic."""
    h, w = shape[2], shape[3]
    if h is not None and w is not None and h != w:
        raise ModelCardError(f"{src.name} takes {h} x {w} px tiles; geoseg tiles are square")
    key = next((k for k in ("tile_size", "tiles_size") if k in meta), None)
    size = tile or (h if h is not None else None)
    if size is None:
        size = int(deepness_value(meta, key)) if key else 512
    if h is not None and size != h:
        raise ConfigError(f"{src.name} takes {h} px tiles only; use --tile {h}")
    return size


def deepness_overlap(meta: Mapping[str, str], overlap: int | None, tile: int) -> int:
    """The overlap in px: ``overlap``, else ``tiles_overlap`` percent of the tile (at most
    half a tile), else 64 (at most half a tile)."""
    if overlap is not None:
        return overlap
    if "tiles_overlap" not in meta:
        return min(64, tile // 2)
    percent = float(deepness_value(meta, "tiles_overlap"))
    px = round(tile * percent / 100)
    if px > tile // 2:
        # geoseg blends each pixel from at most two tiles per axis
        log.info(
            "overlap %d%% of %d px is more than half a tile; using %d px", percent, tile, tile // 2
        )
    return min(px, tile // 2)


def deepness_resolution(meta: Mapping[str, str]) -> float | None:
    """``resolution`` (cm/px) in metres, or ``None``."""
    if "resolution" not in meta:
        return None
    cm = float(deepness_value(meta, "resolution"))
    return cm / 100 if cm > 0 else None


def deepness_normalisation(
    meta: Mapping[str, str],
    bands: Sequence[str],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    *,
    src: Path,
) -> tuple[tuple[Transform, ...] | None, tuple[float, ...], tuple[float, ...]]:
    """``(normalisation, mean, std)`` of a card: ``mean`` and ``std`` (scene units) when
    given; else Deepness's standardisation, ``(x / 255 - m) / s``, which is a z-score with
    mean ``255 m`` and std ``255 s``; else, for a Deepness model (``model_type``), its plain
    ``x / 255`` with the typical input of 8-bit imagery. A model with no Deepness metadata
    needs ``mean`` and ``std``."""
    n = len(bands)
    if mean is not None and std is not None:
        return None, tuple(mean), tuple(std)
    if mean is not None or std is not None:
        raise ConfigError("give both --mean and --std, or neither (to use the model's metadata)")
    if "standardization_mean" in meta and "standardization_std" in meta:
        m = np.asarray(deepness_value(meta, "standardization_mean"), dtype=np.float64).reshape(-1)
        s = np.asarray(deepness_value(meta, "standardization_std"), dtype=np.float64).reshape(-1)
        if m.size < n or s.size < n:
            m, s = (
                np.broadcast_to(m, (n,)) if m.size == 1 else m,
                np.broadcast_to(s, (n,)) if s.size == 1 else s,
            )
        if m.size < n or s.size < n:
            raise ConfigError(
                f"{src.name} standardises {min(m.size, s.size)} channels, not the {n} of --bands"
            )
        # Deepness passes the first channels of the raster to the model.
        return (
            None,
            tuple(float(v) for v in DEEPNESS_SCALE * m[:n]),
            tuple(float(v) for v in DEEPNESS_SCALE * s[:n]),
        )
    if "model_type" in meta:
        typical_mean, typical_std = TYPICAL_8BIT
        return (
            (Transform(op="divide", params={"divisor": DEEPNESS_SCALE}),),
            (typical_mean,) * n,
            (typical_std,) * n,
        )
    raise ConfigError(
        f"--mean and --std required: {src.name} has no Deepness standardisation in its "
        "metadata; give the per-band mean and std of the inputs the model was trained on, in "
        "scene units (the model sees (x - mean) / std)"
    )
