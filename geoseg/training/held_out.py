"""The held-out data of a training config, and scoring it through the real pipeline.

The pipeline (:func:`geoseg.run.evaluate.evaluate`) belongs to a higher layer than
training, so functions here take it as an argument of the :class:`Evaluate` signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from geoseg.config import InferenceOptions
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info
from geoseg.training.chips import SplitPlan, plan_split
from geoseg.training.config import TrainConfig
from geoseg.training.labels import ClassMap, LabelSource
from geoseg.training.metrics import SegmentationMetrics

__all__ = [
    "EVALUATION_BATCH",
    "Evaluate",
    "HeldOut",
    "PipelineResult",
    "held_out_data",
    "pipeline_scores",
    "split_plan",
]

# Tiles per forward pass when scoring (the batch size the shipped cards were scored with).
EVALUATION_BATCH = 4


class _Timed(Protocol):
    @property
    def seconds(self) -> float: ...


class PipelineResult(Protocol):
    """What an evaluation through the pipeline reports (an ``EvaluationResult``)."""

    @property
    def metrics(self) -> SegmentationMetrics: ...

    @property
    def labelled_pixels(self) -> int: ...

    @property
    def run(self) -> _Timed: ...


class Evaluate(Protocol):
    """The signature of :func:`geoseg.run.evaluate.evaluate` that scoring uses."""

    def __call__(
        self,
        model: str,
        image: str,
        labels: LabelSource,
        /,
        *,
        class_map: ClassMap | None,
        region: PixelWindow | None,
        smooth: str | None,
        bands: tuple[int, ...] | None,
        sensor: str | None,
        inference: InferenceOptions | None,
    ) -> PipelineResult: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class HeldOut:
    """One held-out piece of the training data: an input, or a region of one."""

    image: str
    labels: LabelSource
    region: PixelWindow | None = None


def split_plan(config: TrainConfig) -> SplitPlan:
    """The validation split of ``config`` resolved on its inputs (reads their sizes)."""
    sizes = []
    for item in config.inputs:
        info = read_scene_info(item.image)
        sizes.append((info.height, info.width))
    return plan_split(config.validation, sizes, chip=config.chip_size)


def held_out_data(config: TrainConfig) -> tuple[HeldOut, ...]:
    """The held-out inputs (``region=None``: the whole input) or region of ``config``."""
    plan = split_plan(config)
    trained = {a.index for a in plan.train}
    return tuple(
        HeldOut(
            image=config.inputs[i].image,
            labels=config.inputs[i].labels,
            region=window if i in trained else None,
        )
        for i, window in plan.validation
    )


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def pipeline_scores(result: PipelineResult, *, smooth: str | None) -> dict[str, Any]:
    """The card's record of one evaluation: per-class scores, labelled pixels, time."""
    return {
        "smooth": smooth or "default recipes",
        "classes": {
            c.name: {
                "iou": _rounded(c.iou),
                "f1": _rounded(c.f1),
                "precision": _rounded(c.precision),
                "recall": _rounded(c.recall),
                "support": c.support,
            }
            for c in result.metrics.classes
        },
        "labelled_pixels": result.labelled_pixels,
        "seconds": round(result.run.seconds, 1),
    }
