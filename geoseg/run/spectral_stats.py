"""Whole-scene band statistics that spectral methods need before any block runs.

:func:`prepare_spectral` makes one streamed pass over the scene's blocks (on the cluster when
there is one) and fixes each spectral method's data-driven parameters (Otsu thresholds) in the
plan, so every block applies the same rule.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from geoseg.models.normalisation import apply_scaling
from geoseg.models.spectral import (
    index_histogram,
    normalized_difference,
    otsu_threshold,
    spectral_card,
)
from geoseg.run.plan import RunPlan
from geoseg.tiling.grid import Block
from geoseg.tiling.io import read_window

log = logging.getLogger(__name__)

__all__ = ["BandStats", "block_band_stats", "prepare_spectral"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BandStats:
    """Streamed statistics of a spectral method's bands: index histogram and moments."""

    hist: np.ndarray
    sums: np.ndarray
    sumsq: np.ndarray
    count: int

    def __add__(self, other: BandStats) -> BandStats:
        return BandStats(
            hist=self.hist + other.hist,
            sums=self.sums + other.sums,
            sumsq=self.sumsq + other.sumsq,
            count=self.count + other.count,
        )

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.sums / max(self.count, 1))

    @property
    def std(self) -> tuple[float, ...]:
        m = self.sums / max(self.count, 1)
        var = self.sumsq / max(self.count, 1) - m**2
        return tuple(float(max(np.sqrt(max(v, 0.0)), 1e-6)) for v in var)


def block_band_stats(
    path: str,
    block: Block,
    bands: tuple[int, int],
    scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> BandStats:
    """Index histogram and band moments over one block core (a Dask task), of the values the
    method sees (``scaling``: per band scale and offset, as the run applies them)."""
    image, valid = read_window(path, block.core, bands=bands)
    if scaling is not None:
        image = apply_scaling(image, scaling)
    px = image[:, valid].astype(np.float64)
    return BandStats(
        hist=index_histogram(normalized_difference(image[0], image[1]), valid),
        sums=px.sum(axis=1),
        sumsq=(px**2).sum(axis=1),
        count=int(valid.sum()),
    )


def _sum_stats(parts: Sequence[BandStats]) -> BandStats:
    return functools.reduce(operator.add, parts)


def prepare_spectral(plan: RunPlan, *, client: Any = None) -> RunPlan:
    """Scene-wide statistics of spectral methods, in one streamed pass over block cores.

    Fills in the Otsu threshold (``ndwi`` / ``ndwi:otsu``) and the band mean/std the CRF
    colour term scales with. Each block contributes fixed-size sums, so memory does not
    grow with the scene, and every block then uses the same values: no seams.
    """
    if not any(u.card.architecture == "spectral" for u in plan.models):
        return plan
    uses = []
    for use in plan.models:
        if use.card.architecture != "spectral":
            uses.append(use)
            continue
        bands = (use.bands[0], use.bands[1])
        if client is None:
            stats = _sum_stats(
                [block_band_stats(plan.scene.path, b, bands, use.scaling) for b in plan.blocks]
            )
        else:
            futures = client.map(
                block_band_stats,
                [plan.scene.path] * len(plan.blocks),
                plan.blocks,
                [bands] * len(plan.blocks),
                [use.scaling] * len(plan.blocks),
                pure=False,
            )
            stats = client.submit(_sum_stats, futures).result()
        threshold = use.card.params.get("threshold")
        if threshold is None:
            threshold = otsu_threshold(stats.hist)
            log.info("%s: Otsu threshold %.4f over the scene", use.card.name, threshold)
        card = spectral_card(use.source, threshold=float(threshold))
        card = replace(card, mean=stats.mean, std=stats.std)
        uses.append(replace(use, card=card))
    return replace(plan, models=tuple(uses))
