"""ONNX models: export geoseg models, import foreign ones, run them with onnxruntime.

A geoseg ONNX model is one ``.onnx`` file: the network, ending in its activation (softmax
over the output channels, or the sigmoid of one logit), so it outputs probabilities; the
geoseg card as JSON in the file's ``metadata_props`` under ``geoseg.card``; and the keys the
Deepness QGIS plugin reads, so geoseg exports run in Deepness and Deepness zoo models import
into geoseg (:func:`import_onnx`). The card is read without the weights, and the Deepness
keys are translated, in :mod:`geoseg.models.onnx_card`.

onnxruntime and onnx are an optional extra (``pip install 'geoseg[onnx]'``): exporting,
importing and running need them, reading a card does not.

An ONNX model runs through the same tiling, normalisation, batching, model slots and
blending as a torch network: :func:`load_onnx` gives the card and an :class:`OnnxNetwork`, a
``torch.nn.Module`` whose forward pass is an onnxruntime session, for
:class:`~geoseg.models.predictor.TorchSegmenter`, which runs it in fp32 (autocast and weight
casting do not apply to a session). The network returns logits to the segmenter: the
logarithm of probabilities, whose softmax is the probabilities again (``log(p / (1 - p))``
for one sigmoid channel).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from geoseg.config import InferenceOptions
from geoseg.errors import ConfigError, ModelCardError
from geoseg.models.card import CARD_KEY, ClassInfo, ModelCard, card_from_json, card_to_json
from geoseg.models.onnx_card import (
    deepness_class_names,
    deepness_metadata,
    deepness_normalisation,
    deepness_overlap,
    deepness_resolution,
    deepness_tile,
    deepness_value,
    is_onnx,
    read_onnx_metadata,
)

if TYPE_CHECKING:
    import onnx
    import onnxruntime

__all__ = [
    "OPSET",
    "OUTPUTS_KEY",
    "OUTPUT_KINDS",
    "OnnxNetwork",
    "export_onnx",
    "import_onnx",
    "load_onnx",
    "require_onnx",
]

OPSET = 17
OUTPUTS_KEY = "geoseg.outputs"
"""What the graph outputs: ``probabilities`` (geoseg exports, Deepness models) or ``logits``."""
OUTPUT_KINDS = ("probabilities", "logits")
EXPORT_TOLERANCE = 2e-3
"""Largest difference of a probability between onnxruntime and torch that an export may
show on its check tile. Rounding alone stays far below (2e-6 for the tests' trained U-Net,
2e-4 for an untrained ResNet-34 U-Net, whose logits are large); a graph that computes
something else (a size baked in by tracing, an operator exported differently) differs by
tenths."""
_EXTRA = "ONNX models need onnxruntime and onnx: pip install 'geoseg[onnx]'"


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or a ConfigError naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"{_EXTRA} ({err})") from err
    return onnx, onnxruntime


# ------------------------------------------------------------------------------------- export


class _Probabilities(torch.nn.Module):
    """A network followed by its card's activation: what an exported graph computes."""

    def __init__(self, network: torch.nn.Module, *, activation: str) -> None:
        super().__init__()
        self.network = network
        self.sigmoid = activation == "sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        return torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)


def export_onnx(
    model: str | os.PathLike[str], out: str | os.PathLike[str], *, opset: int = OPSET
) -> Path:
    """Write a geoseg model file as an ONNX model (fp32, any batch size and tile size).

    The graph ends in the card's activation and outputs probabilities; the card and the
    Deepness keys (:func:`~geoseg.models.onnx_card.deepness_metadata`) are in its metadata.
    The export is checked: onnxruntime must give the torch network's probabilities on a tile
    of the card's size. The file is written whole or not at all.

    Raises
    ------
    ModelCardError
        If the network cannot be exported or the exported graph computes something else.
    ConfigError
        Without onnx and onnxruntime, or with an opset below 17.
    """
    from geoseg.models.registry import load_network

    onnx, _ = require_onnx()
    if opset < OPSET:
        raise ConfigError(f"opset {opset} is too old; use {OPSET} or newer")
    if is_onnx(model):
        raise ModelCardError(f"{str(model)!r} is an ONNX model already")
    card, network = load_network(model)
    graph = _Probabilities(network, activation=card.activation).eval()
    x = torch.randn(
        1,
        len(card.bands),
        card.tile_size,
        card.tile_size,
        generator=torch.Generator().manual_seed(0),
    )
    target = Path(out)
    tmp = target.with_name(f".{target.name}.partial")
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, which needs
            # onnxscript; its warnings are not the user's to act on.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": axes},
            )
        proto = onnx.load(str(tmp))
        proto.doc_string = card.description
        _set_metadata(
            proto,
            {CARD_KEY: card_to_json(card), OUTPUTS_KEY: "probabilities", **deepness_metadata(card)},
        )
        onnx.save(proto, str(tmp))
        with torch.inference_mode():
            expected = graph(x).numpy()
        got = _session(tmp, device="cpu", threads=0)[0].run(None, {"input": x.numpy()})[0]
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= EXPORT_TOLERANCE:
            raise ModelCardError(
                f"the ONNX export of {card.architecture} computes other probabilities than the "
                f"torch network (max difference {diff:.2g}); it cannot be exported faithfully"
            )
        _publish(tmp, target)
    except ModelCardError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as err:  # the exporter and onnx raise many kinds
        tmp.unlink(missing_ok=True)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ModelCardError(f"cannot export {card.architecture} to ONNX: {first}") from err
    return target


def _set_metadata(proto: onnx.ModelProto, values: Mapping[str, str]) -> None:
    """Set ``values`` in ``proto.metadata_props``, keeping its other keys."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _publish(tmp: Path, target: Path) -> None:
    # Model files are shared artefacts: readable like any file the user creates (umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------- import


def import_onnx(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    bands: Sequence[str],
    name: str,
    classes: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    palette: Sequence[str] = (),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resolution_m: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    outputs: str | None = None,
) -> ModelCard:
    """Make a foreign ONNX segmentation model a geoseg model: a copy with a card inside.

    What is not given is taken from the model's Deepness metadata where it has it: class
    names, resolution, tile size, overlap and normalisation (Deepness's ``(x / 255 - m) /
    s`` is a z-score of the scene's values with mean ``255 m`` and std ``255 s``; a Deepness
    model without standardisation reads ``x / 255``); the tile size otherwise from a fixed
    input size. The model is run once on a tile: one output channel makes a sigmoid model of
    two classes, ``C`` channels a softmax model of ``C`` classes. ``outputs`` says whether the
    graph ends in its activation (``probabilities``, the default, as Deepness models do) or
    not (``logits``).

    Raises
    ------
    ConfigError
        For options that do not fit the model (bands, classes, tile) or that it lacks.
    ModelCardError
        If the file is not a single-input, single-output segmentation model that runs.
    """
    onnx, _ = require_onnx()
    src = Path(source)
    if not src.is_file():
        raise ModelCardError(f"ONNX model {str(src)!r} does not exist")
    try:
        proto = onnx.load(str(src))
    except Exception as err:  # protobuf's DecodeError, OSError, onnx's own
        raise ModelCardError(f"{str(src)!r} is not an ONNX model: {err}") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    kind = outputs or meta.get(OUTPUTS_KEY, "probabilities")
    if kind not in OUTPUT_KINDS:
        raise ConfigError(f"outputs {kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
    deepness = "model_type" in meta
    if deepness and str(deepness_value(meta, "model_type")).capitalize() != "Segmentor":
        raise ModelCardError(
            f"{str(src)!r} is a Deepness {deepness_value(meta, 'model_type')} model; geoseg "
            "imports segmentation models (Segmentor)"
        )
    in_shape = _input_shape(proto, src)
    if in_shape[1] is not None and in_shape[1] != len(bands):
        raise ConfigError(
            f"{src.name} takes {in_shape[1]} input channels but --bands lists {len(bands)}: "
            f"{', '.join(bands)}"
        )
    size = deepness_tile(meta, in_shape, tile, src=src)
    normalisation, card_mean, card_std = deepness_normalisation(meta, bands, mean, std, src=src)
    channels = _output_channels(src, bands=len(bands), tile=size, kind=kind)
    names = tuple(classes) if classes else deepness_class_names(meta)
    if not names:
        raise ConfigError(f"--classes required: {src.name} names no classes in its metadata")
    activation = "sigmoid" if channels == 1 else "softmax"
    if activation == "sigmoid" and len(names) == 1:
        names = ("background", *names)
    want = 2 if activation == "sigmoid" else channels
    if len(names) != want:
        raise ConfigError(
            f"{src.name} has {channels} output channel{'s' * (channels != 1)}, so "
            f"{want} classes (background first), but {len(names)} are given: {', '.join(names)}"
        )
    cols = (
        tuple(colors)
        if colors
        else tuple(palette[i % len(palette)] if palette else "#808080" for i in range(len(names)))
    )
    if len(cols) != len(names):
        raise ConfigError(f"{len(cols)} colours for {len(names)} classes")
    card = ModelCard(
        name=name,
        architecture="onnx",
        bands=tuple(bands),
        mean=card_mean,
        std=card_std,
        classes=tuple(ClassInfo(name=n, color=c) for n, c in zip(names, cols, strict=True)),
        tile_size=size,
        overlap=deepness_overlap(meta, overlap, size),
        resolution_m=resolution_m if resolution_m is not None else deepness_resolution(meta),
        normalisation=normalisation,
        activation=activation,
        training={"imported_from": src.name},
    )
    target = Path(out)
    tmp = target.with_name(f".{target.name}.partial")
    _set_metadata(
        proto, {**deepness_metadata(card), CARD_KEY: card_to_json(card), OUTPUTS_KEY: kind}
    )
    try:
        onnx.save(proto, str(tmp))
        _publish(tmp, target)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    return card


def _input_shape(proto: onnx.ModelProto, src: Path) -> tuple[int | None, ...]:
    """The single input's shape, ``None`` for a dynamic axis."""
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ModelCardError(
            f"{src.name} has {len(inputs)} inputs and {len(proto.graph.output)} outputs; a "
            "segmentation model has one of each"
        )
    tensor = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    if len(dims) != 4:
        raise ModelCardError(
            f"{src.name} takes a {len(dims)}-d input; a segmentation model takes (N, C, H, W)"
        )
    if tensor.elem_type != 1:  # TensorProto.FLOAT
        raise ModelCardError(
            f"{src.name} does not take float32 input (element type {tensor.elem_type})"
        )
    return dims


def _output_channels(src: Path, *, bands: int, tile: int, kind: str) -> int:
    """Run the model once on a tile: its output channel count (checking the output)."""
    session, _ = _session(src, device="cpu", threads=0)
    x = np.random.default_rng(0).standard_normal((1, bands, tile, tile)).astype(np.float32)
    try:
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as err:  # onnxruntime's errors have no common public base
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ModelCardError(f"{src.name} does not run on a {tile} px tile: {first}") from err
    if out.ndim != 4 or out.shape[2:] != (tile, tile):
        raise ModelCardError(
            f"{src.name} outputs shape {list(out.shape)} for a {tile} x {tile} tile; a "
            f"segmentation model outputs (N, C, {tile}, {tile})"
        )
    if kind == "probabilities" and not (out.min() >= -1e-3 and out.max() <= 1 + 1e-3):
        raise ConfigError(
            f"{src.name} outputs values from {out.min():.3g} to {out.max():.3g}, not "
            "probabilities; import it with --outputs logits"
        )
    return int(out.shape[1])


# ---------------------------------------------------------------------------------- inference


def _session(
    path: str | os.PathLike[str], *, device: str, threads: int
) -> tuple[onnxruntime.InferenceSession, str]:
    """An onnxruntime session on ``device`` (``auto``, ``cpu``, ``cuda[:N]``) and the device."""
    _, ort = require_onnx()
    device = _device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), *providers]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    # Idle pool threads must not spin against the reading, blending and vectorizing that
    # share the cores (the same concern as torch's OpenMP teams, see predictor).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers), device
    except Exception as err:  # onnxruntime's errors have no common public base
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ModelCardError(f"onnxruntime cannot load {str(path)!r}: {first}") from err


def _device(device: str) -> str:
    """``auto`` -> ``cuda`` when onnxruntime has its CUDA provider, else ``cpu``."""
    _, ort = require_onnx()
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if device.startswith("cuda") and not cuda:
        raise ConfigError(
            f"device {device!r} requested but this onnxruntime has no CUDA provider "
            "(pip install onnxruntime-gpu); or use --device cpu"
        )
    return device


class OnnxNetwork(torch.nn.Module):
    """An onnxruntime session as a network: ``(N, C, H, W)`` float tensor in, logits out.

    A graph that outputs probabilities has them turned into logits (``log p``; ``log(p / (1 -
    p))`` for one sigmoid channel), which the card's activation turns back into ``p``. A
    graph with a fixed batch size is run in batches of that size. It has no parameters:
    moving it to a device or memory format changes nothing, and it cannot be traced.
    """

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        *,
        outputs: str,
        channels: int,
        source: str,
    ) -> None:
        super().__init__()
        if outputs not in OUTPUT_KINDS:
            raise ModelCardError(
                f"{source!r}: {OUTPUTS_KEY} {outputs!r} is not one of {', '.join(OUTPUT_KINDS)}"
            )
        self.session = session
        self.outputs = outputs
        self.channels = channels
        self.source = source
        first = session.get_inputs()[0]
        self._input = first.name
        batch = first.shape[0]
        self._step = batch if isinstance(batch, int) and batch > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # torch.fx tracing (batch-norm folding) stops here
            raise TypeError("an onnxruntime session runs on tensors only")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self._step or len(arr)
        try:
            parts = [
                self.session.run(None, {self._input: arr[i : i + step]})[0]
                for i in range(0, len(arr), step)
            ]
        except Exception as err:  # onnxruntime's errors have no common public base
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise ModelCardError(
                f"onnxruntime cannot run {self.source!r} on input {list(arr.shape)}: {first}"
            ) from err
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if out.shape != (len(arr), self.channels, *arr.shape[2:]):
            raise ModelCardError(
                f"{self.source!r} outputs shape {list(out.shape)} for input {list(arr.shape)}; "
                f"its card expects (N, {self.channels}, H, W)"
            )
        logits = _logits(out.astype(np.float32, copy=False), sigmoid=self.channels == 1)
        return torch.from_numpy(logits if self.outputs == "probabilities" else out).to(x.device)


def _logits(p: np.ndarray, *, sigmoid: bool) -> np.ndarray:
    tiny = np.finfo(np.float32).tiny
    with np.errstate(divide="ignore"):
        if sigmoid:
            return np.log(np.maximum(p, tiny)) - np.log1p(-np.minimum(p, 1.0))
        return np.log(np.maximum(p, tiny))


def load_onnx(
    path: str | os.PathLike[str], *, options: InferenceOptions
) -> tuple[ModelCard, OnnxNetwork, InferenceOptions]:
    """A geoseg ONNX model for :class:`~geoseg.models.predictor.TorchSegmenter`: its card,
    the session as a network, and the options to run it with (fp32, the session's device).

    On a CPU each of the ``concurrent_batches`` model slots runs its passes with
    ``threads // concurrent_batches`` onnxruntime threads, as torch networks do.

    Raises
    ------
    ModelCardError
        If the file is not an ONNX model with a geoseg card, or onnxruntime cannot load it.
    ConfigError
        Without onnxruntime, or for a CUDA device this onnxruntime cannot use.
    """
    p = Path(path)
    meta = read_onnx_metadata(p)
    if CARD_KEY not in meta:
        raise ModelCardError(
            f"{str(p)!r} has no geoseg card; import it with `geoseg models import {p.name} "
            "--bands ... --classes ...`"
        )
    card = card_from_json(meta[CARD_KEY])
    device = _device(options.device)
    threads = options.threads or torch.get_num_threads()
    slots = options.concurrent_batches if device == "cpu" else 1
    session, _ = _session(p, device=device, threads=max(1, threads // slots))
    network = OnnxNetwork(
        session,
        outputs=meta.get(OUTPUTS_KEY, "probabilities"),
        channels=card.network_outputs,
        source=str(p),
    )
    return card, network, replace(options, device=device, precision="fp32")
