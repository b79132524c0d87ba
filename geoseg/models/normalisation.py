"""Input normalisation: named transforms, in order, from scene values to network input.

A model card lists its normalisation as transforms with parameters, applied in order to the
values the model reads (see :attr:`geoseg.models.card.ModelCard.reflectance_scale` for their
units), e.g. Dynamic World's::

    [{"op": "scale", "factor": 0.005}, {"op": "log1p"},
     {"op": "zscore", "mean": [...], "std": [...]}, {"op": "sigmoid", "gain": 5, "shift": -1}]

=========  ====================  ===============================================================
op         parameters            output
=========  ====================  ===============================================================
scale      factor                ``x * factor``
affine     scale, offset         ``x * scale + offset``
divide     divisor               ``x / divisor``
clip       min and/or max        ``x`` limited to ``[min, max]``
log1p                            ``ln(1 + x)``; ``x`` at or below -1 is taken as ``-1 + 1e-6``
zscore     mean, std             ``(x - mean) / std``
sigmoid    gain, shift           ``1 / (1 + exp(-(gain * x + shift)))``
=========  ====================  ===============================================================

Every parameter is a number (all bands) or a list with one number per input band. A card with
only ``mean`` and ``std`` (format 1) normalises with ``zscore`` of them, computed exactly as
before transforms existed.

:class:`Normaliser` applies a chain to tiles of raw values in float32 without temporaries of
the tile's size, and fills nodata pixels with the chain's value at the card's typical input
(the band means), so they look like an ordinary pixel to the network (0 after a z-score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.errors import ModelCardError

__all__ = [
    "OPS",
    "Normaliser",
    "Transform",
    "apply_scaling",
    "input_scaling",
    "transform_from_dict",
    "transform_to_dict",
]

# op -> (required parameters, optional parameters)
OPS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "scale": (("factor",), ()),
    "affine": (("scale", "offset"), ()),
    "divide": (("divisor",), ()),
    "clip": ((), ("min", "max")),
    "log1p": ((), ()),
    "zscore": (("mean", "std"), ()),
    "sigmoid": (("gain", "shift"), ()),
}

LOG1P_FLOOR = -1.0 + 1e-6
"""Inputs of ``log1p`` are raised to at least this (``ln`` of 0 or less is undefined)."""

Value = float | tuple[float, ...]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelCardError(f"normalisation {what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ModelCardError(f"normalisation {what} must be finite, got {value!r}")
    return number


def _value(value: Any, what: str) -> Value:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise ModelCardError(f"normalisation {what} is an empty list; give one number per band")
        return tuple(_number(v, what) for v in value)
    return _number(value, what)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transform:
    """One normalisation step: ``op`` (a key of :data:`OPS`) and its parameters."""

    op: str
    params: Mapping[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = OPS.get(self.op)
        if spec is None:
            raise ModelCardError(f"unknown normalisation op {self.op!r}; valid: {', '.join(OPS)}")
        required, optional = spec
        unknown = sorted(set(self.params) - set(required) - set(optional))
        if unknown:
            allowed = ", ".join((*required, *optional)) or "none"
            raise ModelCardError(
                f"normalisation op {self.op!r} takes no parameter {unknown[0]!r} "
                f"(parameters: {allowed})"
            )
        missing = [p for p in required if p not in self.params]
        if missing:
            raise ModelCardError(
                f"normalisation op {self.op!r} needs {', '.join(required)}; missing {missing[0]!r}"
            )
        params = {k: _value(v, f"{self.op}.{k}") for k, v in self.params.items()}
        object.__setattr__(self, "params", params)
        if self.op == "clip" and not params:
            raise ModelCardError("normalisation op 'clip' needs min, max or both")
        if self.op == "clip" and "min" in params and "max" in params:
            lo, hi = np.broadcast_arrays(np.asarray(params["min"]), np.asarray(params["max"]))
            if lo.shape == hi.shape and np.any(lo > hi):
                raise ModelCardError(
                    f"normalisation clip min {params['min']} exceeds max {params['max']}"
                )
        for name in ("std", "divisor"):
            if name in params and np.any(np.asarray(params[name]) == 0):
                raise ModelCardError(
                    f"normalisation {self.op}.{name} must not be 0: {params[name]}"
                )
        if self.op == "zscore" and np.any(np.asarray(params["std"]) <= 0):
            raise ModelCardError(f"normalisation zscore std must be positive: {params['std']}")

    def check_bands(self, bands: int, *, model: str) -> None:
        """Raise unless every per-band parameter has ``bands`` entries."""
        for name, value in self.params.items():
            if isinstance(value, tuple) and len(value) != bands:
                raise ModelCardError(
                    f"model {model!r}: normalisation {self.op}.{name} has {len(value)} values "
                    f"for {bands} bands; give one per band or a single number"
                )


def transform_to_dict(transform: Transform) -> dict[str, Any]:
    """``{"op": ..., **params}`` with per-band values as lists (the card's JSON form)."""
    body: dict[str, Any] = {"op": transform.op}
    for name, value in transform.params.items():
        body[name] = list(value) if isinstance(value, tuple) else value
    return body


def transform_from_dict(raw: Any) -> Transform:
    """Parse ``{"op": "zscore", "mean": [...], "std": [...]}``."""
    if not isinstance(raw, Mapping) or "op" not in raw:
        raise ModelCardError(
            f"a normalisation step must be an object with an 'op', got {raw!r}; "
            f'e.g. {{"op": "scale", "factor": 0.0001}}'
        )
    params = {k: v for k, v in raw.items() if k != "op"}
    return Transform(op=str(raw["op"]), params=params)


def input_scaling(
    reflectance_scale: float | None,
    bands: Sequence[int],
    *,
    file_scales: Sequence[float] = (),
    file_offsets: Sequence[float] = (),
    preset: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-band ``(scales, offsets)`` turning stored scene values into a model's input units.

    The model's input is ``stored * scale + offset`` for each of its bands; ``None`` means
    the stored values as they are. A card without ``reflectance_scale`` reads stored values
    (models trained on a scene's own numbers). A card with one reads reflectance times it:
    the band metadata's scale and offset when any of the model's bands has some, else the
    sensor preset's (:func:`geoseg.models.bands.preset_scaling`), else ``None`` (the scene is
    taken to be in the model's units already; the units check compares its values with the
    card's ``mean``).

    Parameters
    ----------
    reflectance_scale
        The card's :attr:`~geoseg.models.card.ModelCard.reflectance_scale`.
    bands
        1-based scene bands feeding the model, in the model's order.
    file_scales, file_offsets
        Every scene band's scale and offset metadata (1 and 0 where a band has none).
    preset
        Every scene band's ``(scales, offsets)`` from the sensor preset, or ``None``.

    Examples
    --------
    >>> input_scaling(10000.0, (2, 3), preset=((1e-4,) * 4, (-0.1,) * 4))
    ((1.0, 1.0), (-1000.0, -1000.0))
    >>> input_scaling(None, (1,), file_scales=(2.75e-05,), file_offsets=(-0.2,)) is None
    True
    """
    if reflectance_scale is None:
        return None
    k = float(reflectance_scale)
    scales = [file_scales[b - 1] if b <= len(file_scales) else 1.0 for b in bands]
    offsets = [file_offsets[b - 1] if b <= len(file_offsets) else 0.0 for b in bands]
    if not any(s != 1.0 or o != 0.0 for s, o in zip(scales, offsets, strict=True)):
        if preset is None:
            return None
        scales = [preset[0][b - 1] for b in bands]
        offsets = [preset[1][b - 1] for b in bands]
    return tuple(s * k for s in scales), tuple(o * k for o in offsets)


def _array(value: Value, bands: int) -> np.ndarray:
    """A parameter as float32 ``(bands, 1, 1)`` (a number repeated)."""
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, bands)
    return arr[:, None, None]


class Normaliser:
    """A card's transform chain, ready to run on ``(bands, H, W)`` tiles.

    Parameters
    ----------
    transforms
        The chain, in order.
    bands
        Number of input bands.
    typical
        Per-band typical input (the card's ``mean``): nodata pixels are given the chain's
        value at it.
    """

    def __init__(
        self, transforms: Sequence[Transform], *, bands: int, typical: Sequence[float]
    ) -> None:
        self.transforms = tuple(transforms)
        self.bands = bands
        self._steps = [
            (t.op, {k: _array(v, bands) for k, v in t.params.items()}) for t in transforms
        ]
        centre = np.asarray(typical, dtype=np.float32).reshape(bands, 1, 1)
        self.fill = self.apply(centre).reshape(bands)

    def apply(self, image: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """The chain applied to ``image`` (any dtype) as float32, in ``out`` when given."""
        if out is None:
            out = np.empty(image.shape, dtype=np.float32)
        if not self._steps:
            np.copyto(out, image, casting="unsafe")
            return out
        src: np.ndarray = image
        # Values a chain cannot take (ln of a negative, exp overflow) must not warn per tile:
        # they are limited (log1p) or saturate (sigmoid) by design.
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            for op, p in self._steps:
                _STEPS[op](src, out, p)
                src = out
        return out

    def __call__(
        self, image: np.ndarray, valid: np.ndarray, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`apply`, with nodata pixels (``~valid``) set to :attr:`fill`."""
        out = self.apply(image, out=out)
        if not valid.all():
            out[:, ~valid] = self.fill[:, None]
        return out


def _scale(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    np.multiply(src, p["factor"], out=out, dtype=np.float32)


def _affine(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    np.multiply(src, p["scale"], out=out, dtype=np.float32)
    np.add(out, p["offset"], out=out)


def _divide(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    np.divide(src, p["divisor"], out=out, dtype=np.float32)


def _clip(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    if src is not out:
        np.copyto(out, src, casting="unsafe")
    if "min" in p:
        np.maximum(out, p["min"], out=out)
    if "max" in p:
        np.minimum(out, p["max"], out=out)


def _log1p(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    np.maximum(src, np.float32(LOG1P_FLOOR), out=out, dtype=np.float32)
    np.log1p(out, out=out)


def _zscore(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    # As format-1 cards always normalised: bit-identical outputs for the models made then.
    np.subtract(src, p["mean"], out=out, dtype=np.float32)
    np.divide(out, p["std"], out=out)


def _sigmoid(src: np.ndarray, out: np.ndarray, p: dict[str, np.ndarray]) -> None:
    # 1 / (1 + exp(-z)): exp overflows to inf for very negative z, giving exactly 0.
    np.multiply(src, p["gain"], out=out, dtype=np.float32)
    np.add(out, p["shift"], out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.add(out, np.float32(1.0), out=out)
    np.reciprocal(out, out=out)


_STEPS = {
    "scale": _scale,
    "affine": _affine,
    "divide": _divide,
    "clip": _clip,
    "log1p": _log1p,
    "zscore": _zscore,
    "sigmoid": _sigmoid,
}


def apply_scaling(
    image: np.ndarray, scaling: tuple[Sequence[float], Sequence[float]]
) -> np.ndarray:
    """``image * scale + offset`` per band (``(bands, H, W)``), float32, as a new array (the
    stored one may be shared); ``scaling`` is what :func:`input_scaling` returns."""
    scales = np.asarray(scaling[0], dtype=np.float32)[:, None, None]
    offsets = np.asarray(scaling[1], dtype=np.float32)[:, None, None]
    return image.astype(np.float32) * scales + offsets
