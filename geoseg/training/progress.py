"""What a training run reports: each epoch's record, progress events, and the result.

A checkpoint keeps the :class:`EpochRecord` of every epoch done (``to_dict`` / ``from_dict``),
so a resumed run continues the same history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.models.card import ModelCard
from geoseg.training.metrics import SegmentationMetrics

__all__ = ["EpochRecord", "TrainProgress", "TrainResult"]


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochRecord:
    """What one epoch did."""

    epoch: int
    loss: float
    lr: float
    seconds: float
    validation: SegmentationMetrics | None = None

    @property
    def score(self) -> float | None:
        """Model-selection score: mean IoU of the non-background classes."""
        if self.validation is None:
            return None
        v = self.validation.mean_iou_foreground
        return None if math.isnan(v) else v

    def describe(self) -> str:
        """One line for people: the loss and, when validated, mean and per-class IoU / F1.

        ``loss 0.3120 val mIoU 0.612 (water IoU 0.700 F1 0.824, crops IoU 0.524 F1 0.688)``;
        the classes are those of the score (background left out), undefined values ``n/a``.
        """
        text = f"loss {self.loss:.4f}"
        v = self.validation
        if v is None:
            return text
        per_class = ", ".join(f"{c.name} IoU {_fmt(c.iou)} F1 {_fmt(c.f1)}" for c in v.classes[1:])
        return f"{text} val mIoU {_fmt(v.mean_iou_foreground)} ({per_class})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": round(self.loss, 6),
            "lr": self.lr,
            "seconds": round(self.seconds, 2),
            "validation": None if self.validation is None else self.validation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        val = data.get("validation")
        return cls(
            epoch=int(data["epoch"]),
            loss=float(data["loss"]),
            lr=float(data["lr"]),
            seconds=float(data["seconds"]),
            validation=None if val is None else SegmentationMetrics.from_dict(val),
        )


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainProgress:
    """A progress report.

    ``stage`` is ``scan`` (reading statistics; ``step`` of ``steps`` blocks), ``train``
    (``step`` of ``steps`` batches of ``epoch``, with the batch ``loss`` and ``lr``),
    ``validate`` (``step`` of ``steps`` blocks), ``epoch`` (``record`` holds the finished
    epoch; its checkpoint is written) or ``done``.
    """

    stage: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    record: EpochRecord | None = None
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainResult:
    """The outcome of :func:`~geoseg.training.loop.train`."""

    model_path: Path
    card: ModelCard
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_score: float | None
    stopped_early: bool
    resumed_from: int | None
    wall_time_s: float
    steps: int

    def describe(self) -> str:
        """One line for people: which epoch the model file holds, its score, the time."""
        score = "no validation score" if self.best_score is None else f"score {self.best_score:.3f}"
        best = self.card.training.get("kept") == "best" and self.best_score is not None
        which = "best" if best else "last"
        return f"{which} epoch {self.best_epoch}, {score}, {self.wall_time_s / 60:.1f} min"
