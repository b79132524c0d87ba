"""Spectral-index methods: segmentation without weights.

``ndwi`` (green, nir) and ``mndwi`` (green, swir1) find water, ``ndvi`` (red, nir) finds
vegetation. Each is a built-in model selectable like a model file (``--model ndwi``,
``--model ndwi:0.1`` for a fixed threshold, ``--model ndwi:otsu``). With ``otsu`` (the
default) the threshold is computed over the whole scene from a streamed histogram, so
every block uses the same threshold and there are no seams.

Probabilities are a logistic of the distance to the threshold, so blending, smoothing and
confidences work as for networks while ``argmax`` reproduces the threshold exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ConfigError
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.splitmerge import PREFIX, SplitMerge, SplitMergeParams, split_merge

__all__ = [
    "METHODS",
    "SpectralMethod",
    "SpectralSegmenter",
    "SplitMergeSegmenter",
    "index_histogram",
    "is_spectral",
    "normalized_difference",
    "otsu_threshold",
    "spectral_card",
    "splitmerge_card",
]

HIST_BINS = 2000  # over [-1, 1]: 0.001 resolution, plenty for a threshold


@dataclass(frozen=True, kw_only=True, slots=True)
class SpectralMethod:
    """A normalised difference ``(a - b) / (a + b)`` thresholded into one class."""

    name: str
    bands: tuple[str, str]
    class_name: str
    color: str
    description: str


METHODS: dict[str, SpectralMethod] = {
    m.name: m
    for m in (
        SpectralMethod(
            name="ndwi",
            bands=("green", "nir"),
            class_name="water",
            color="#1f78b4",
            description="McFeeters NDWI (green - nir) / (green + nir); water above the threshold",
        ),
        SpectralMethod(
            name="mndwi",
            bands=("green", "swir1"),
            class_name="water",
            color="#1f78b4",
            description="Xu MNDWI (green - swir1) / (green + swir1); water above the threshold",
        ),
        SpectralMethod(
            name="ndvi",
            bands=("nir", "red"),
            class_name="vegetation",
            color="#33a02c",
            description="NDVI (nir - red) / (nir + red); vegetation above the threshold",
        ),
    )
}


def is_spectral(source: str) -> bool:
    """Whether a ``--model`` value names a built-in spectral method (``ndwi``,
    ``splitmerge:ndwi``, ...)."""
    head = source.split(":", 1)[0].strip().lower()
    return head in METHODS or head == "splitmerge"


def spectral_card(source: str, *, threshold: float | None = None) -> ModelCard:
    """The card of a built-in method: ``"ndwi"``, ``"ndwi:otsu"`` or ``"ndwi:0.15"``.

    ``threshold`` fills in a computed Otsu threshold. ``splitmerge:ndwi[:t]`` is
    split-and-merge on the index (:func:`splitmerge_card`).
    """
    if source.split(":", 1)[0].strip().lower() == PREFIX:
        return splitmerge_card(source, threshold=threshold)
    name, _, arg = source.partition(":")
    method = METHODS.get(name.lower())
    if method is None:
        raise ConfigError(f"unknown spectral method {name!r}; valid: {', '.join(METHODS)}")
    mode: str | float
    if arg in ("", "otsu"):
        mode = "otsu"
    else:
        try:
            mode = float(arg)
        except ValueError:
            raise ConfigError(
                f"threshold {arg!r} of {name} must be a number in [-1, 1] or 'otsu', "
                f"e.g. {name}:0.1"
            ) from None
        if not -1.0 <= mode <= 1.0:
            raise ConfigError(f"threshold {mode} of {name} must lie in [-1, 1]")
    params: dict[str, object] = {"index": method.name, "mode": mode, "softness": 0.05}
    if threshold is not None:
        params["threshold"] = float(threshold)
    elif isinstance(mode, float):
        params["threshold"] = mode
    return ModelCard(
        name=f"{method.name}-{'otsu' if mode == 'otsu' else mode}",
        architecture="spectral",
        bands=method.bands,
        mean=(0.0, 0.0),
        std=(1.0, 1.0),
        classes=(
            ClassInfo(name="background", color="#000000"),
            ClassInfo(name=method.class_name, color=method.color),
        ),
        tile_size=512,
        overlap=0,
        # An index is a ratio of reflectances: digital numbers with a scale and offset (the
        # file's, or a product preset's such as Sentinel-2 L2A's -1000) are converted first.
        reflectance_scale=1.0,
        params=params,
        description=method.description,
    )


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` as float32; NaN where undefined (both zero)."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    den = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / den
    out[den == 0] = np.nan
    return np.clip(out, -1.0, 1.0, out=out)


def index_histogram(index: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Counts of ``index`` over ``HIST_BINS`` bins on [-1, 1], valid finite pixels only."""
    vals = index[valid & np.isfinite(index)]
    hist, _ = np.histogram(vals, bins=HIST_BINS, range=(-1.0, 1.0))
    return hist.astype(np.int64)


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold over a histogram on [-1, 1] (maximises between-class variance).

    Raises
    ------
    ConfigError
        If the histogram is empty (no valid pixel).
    """
    total = hist.sum()
    if total == 0:
        raise ConfigError("no valid pixels to compute an Otsu threshold from")
    centers = -1.0 + (np.arange(len(hist)) + 0.5) * (2.0 / len(hist))
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = total - w0
    m0 = np.cumsum(hist * centers)
    mu_total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_total * w0 - total * m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between))
    return float(centers[k] + 1.0 / len(hist))  # the upper edge of bin k


def _decision(card: ModelCard) -> tuple[float, float]:
    """``(threshold, softness)`` of a spectral card: the index threshold of the class decision
    and the width of the logistic that turns the distance to it into a probability.

    Raises
    ------
    ConfigError
        If the card still asks for Otsu's threshold (computed over the scene before a run).
    """
    threshold = card.params.get("threshold")
    if threshold is None:
        raise ConfigError(f"{card.name}: the Otsu threshold must be computed over the scene first")
    return float(threshold), float(card.params.get("softness", 0.05))


class SpectralSegmenter:
    """A :class:`~geoseg.models.predictor.Segmenter` for a spectral index and threshold."""

    device = "cpu"

    def __init__(self, card: ModelCard) -> None:
        if card.architecture != "spectral":
            raise ConfigError(f"card {card.name!r} is not a spectral method")
        self.card = card
        self.threshold, self.softness = _decision(card)

    def index(self, image: np.ndarray) -> np.ndarray:
        return normalized_difference(image[0], image[1])

    def predict(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        idx = self.index(image)
        z = (idx - self.threshold) / self.softness
        fg = (1.0 / (1.0 + np.exp(-np.nan_to_num(z, nan=-math.inf)))).astype(np.float32)
        ok = valid & np.isfinite(idx)
        fg[~ok] = 0.0
        bg = np.where(ok, 1.0 - fg, 0.0).astype(np.float32)
        return np.stack([bg, fg])


def splitmerge_card(
    source: str,
    *,
    threshold: float | None = None,
    params: SplitMergeParams | None = None,
) -> ModelCard:
    """The card of ``splitmerge:INDEX`` (``:otsu``, the default, or ``:0.1``).

    A spectral card (architecture ``spectral``, so runs treat it as a built-in method: the
    Otsu threshold over the scene, no CRF by default) whose params say
    ``segmentation: splitmerge`` and hold :class:`SplitMergeParams`. ``threshold`` fills in
    a computed Otsu threshold.

    Raises
    ------
    ConfigError
        On a name that is not ``splitmerge:`` plus a spectral index, or a bad threshold.
    """
    head, _, rest = source.partition(":")
    if head.strip().lower() != PREFIX or not rest:
        raise ConfigError(
            f"{source!r} is not a split-and-merge method; use {PREFIX}:INDEX[:THRESHOLD] "
            f"with INDEX one of {', '.join(METHODS)} (e.g. {PREFIX}:ndwi)"
        )
    base = spectral_card(rest, threshold=threshold)
    p = params or SplitMergeParams()
    return dataclasses.replace(
        base,
        name=f"{PREFIX}-{base.name}",
        params={**base.params, "segmentation": PREFIX, **dataclasses.asdict(p)},
        description=(
            f"{base.description}; split and merge: quadtree cells of {p.min_region} to "
            f"{p.max_region} px anchored to the scene, split until the index variance is "
            f"<= {p.max_variance:g} and the decision agrees, labelled by their mean"
        ),
    )


class SplitMergeSegmenter:
    """A :class:`~geoseg.models.predictor.Segmenter` for split-and-merge on a spectral index.

    ``predict(image, valid, origin=...)`` returns ``(2, H, W)`` float32 probabilities
    (background, class): a logistic of the leaf's mean distance to the threshold with the
    card's ``softness``, so ``argmax`` gives the leaf's label exactly; 0 for both where the
    index is undefined or the pixel invalid.
    """

    device = "cpu"
    precision = "index"

    def __init__(self, card: ModelCard) -> None:
        if card.architecture != "spectral" or card.params.get("segmentation") != PREFIX:
            raise ConfigError(f"card {card.name!r} is not a split-and-merge method")
        self.card = card
        self.threshold, self.softness = _decision(card)
        self.params = SplitMergeParams.from_card(card.params)

    def segment(
        self,
        image: np.ndarray,
        valid: np.ndarray,
        *,
        origin: tuple[int, int] = (0, 0),
        merge: bool = True,
    ) -> SplitMerge:
        """Leaves, regions and labels of a block of the card's two bands."""
        return split_merge(
            normalized_difference(image[0], image[1]),
            valid,
            threshold=self.threshold,
            params=self.params,
            origin=origin,
            merge=merge,
        )

    def predict(
        self, image: np.ndarray, valid: np.ndarray, *, origin: tuple[int, int] = (0, 0)
    ) -> np.ndarray:
        result = self.segment(image, valid, origin=origin, merge=False)
        ok = result.labels != 255
        z = np.nan_to_num(result.excess / np.float32(self.softness), nan=0.0)
        fg = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        # Where the leaf's mean is barely above the threshold the logistic rounds to 0.5;
        # nudge it so argmax (ties to the background) keeps the leaf's label.
        half_up = np.nextafter(np.float32(0.5), np.float32(1.0))
        fg = np.where(result.labels == 1, np.maximum(fg, half_up), np.minimum(fg, 0.5))
        fg = np.where(ok, fg, 0.0).astype(np.float32)
        bg = np.where(ok, 1.0 - fg, 0.0).astype(np.float32)
        return np.stack([bg, fg])
