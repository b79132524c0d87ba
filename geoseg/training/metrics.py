"""Segmentation metrics from a confusion matrix: IoU, F1, precision, recall per class.

A confusion matrix is accumulated window by window (``cm += confusion_matrix(...)``), so a
whole validation scene is scored without holding it in memory. Rows are the true class,
columns the predicted class. Pixels whose target is the ignore index (nodata, unlabelled)
are not counted.

A ratio whose denominator is zero is undefined and reported as NaN (``None`` in JSON): the
IoU of a class that is neither present nor predicted, the precision of a class never
predicted. Means skip undefined values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.errors import ConfigError

__all__ = [
    "ClassScores",
    "SegmentationMetrics",
    "compute_metrics",
    "confusion_matrix",
]


def confusion_matrix(
    target: np.ndarray,
    pred: np.ndarray,
    *,
    n_classes: int,
    ignore_index: int = 255,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; ``cm[t, p]`` pixels of class ``t`` predicted ``p``.

    Parameters
    ----------
    target, pred
        Integer class arrays of the same shape.
    n_classes
        Number of classes (background included).
    ignore_index
        Target value of pixels that are not counted.
    valid
        Optional boolean mask of the same shape; ``False`` pixels are not counted.

    Raises
    ------
    ConfigError
        If the shapes differ or a counted pixel holds a class outside ``[0, n_classes)``.
    """
    if target.shape != pred.shape:
        raise ConfigError(f"target shape {target.shape} differs from prediction {pred.shape}")
    keep = target != ignore_index
    if valid is not None:
        keep &= valid
    t = target[keep].astype(np.int64, copy=False)
    p = pred[keep].astype(np.int64, copy=False)
    for what, arr in (("target", t), ("prediction", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            bad = arr[(arr < 0) | (arr >= n_classes)][0]
            raise ConfigError(
                f"{what} holds class {bad} but there are only {n_classes} classes "
                f"(0..{n_classes - 1}); map it in the class map or mark it {ignore_index}"
            )
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _from_json(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassScores:
    """Scores of one class; NaN where undefined."""

    name: str
    iou: float
    f1: float
    precision: float
    recall: float
    support: int
    predicted: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "iou": _json_float(self.iou),
            "f1": _json_float(self.f1),
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "support": self.support,
            "predicted": self.predicted,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class SegmentationMetrics:
    """Per-class scores and summaries of one confusion matrix.

    ``mean_iou`` averages the defined IoUs of all classes; ``mean_iou_foreground`` those
    of every class but the background (class 0), the usual model-selection score.
    """

    classes: tuple[ClassScores, ...]
    pixel_accuracy: float
    mean_iou: float
    mean_iou_foreground: float
    pixels: int

    def __getitem__(self, name: str) -> ClassScores:
        for c in self.classes:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.classes)
        raise KeyError(f"no class {name!r}; classes: {names}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-class scores under ``classes``, undefined values as ``None``."""
        return {
            "classes": {c.name: c.to_dict() for c in self.classes},
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "mean_iou": _json_float(self.mean_iou),
            "mean_iou_foreground": _json_float(self.mean_iou_foreground),
            "pixels": self.pixels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentationMetrics:
        """Inverse of :meth:`to_dict`."""
        return cls(
            classes=tuple(
                ClassScores(
                    name=name,
                    iou=_from_json(v["iou"]),
                    f1=_from_json(v["f1"]),
                    precision=_from_json(v["precision"]),
                    recall=_from_json(v["recall"]),
                    support=int(v["support"]),
                    predicted=int(v["predicted"]),
                )
                for name, v in data["classes"].items()
            ),
            pixel_accuracy=_from_json(data["pixel_accuracy"]),
            mean_iou=_from_json(data["mean_iou"]),
            mean_iou_foreground=_from_json(data["mean_iou_foreground"]),
            pixels=int(data["pixels"]),
        )


def _nanmean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def compute_metrics(cm: np.ndarray, class_names: Sequence[str]) -> SegmentationMetrics:
    """Scores from a confusion matrix (rows true, columns predicted).

    Raises
    ------
    ConfigError
        If the matrix is not square with one row per class name.
    """
    k = len(class_names)
    if cm.shape != (k, k):
        raise ConfigError(f"confusion matrix of shape {cm.shape} for {k} classes; need {k}x{k}")
    cm = cm.astype(np.int64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    scores = []
    for i, name in enumerate(class_names):
        t, fn, fp = int(tp[i]), int(support[i] - tp[i]), int(predicted[i] - tp[i])
        scores.append(
            ClassScores(
                name=name,
                iou=_ratio(t, t + fp + fn),
                f1=_ratio(2 * t, 2 * t + fp + fn),
                precision=_ratio(t, t + fp),
                recall=_ratio(t, t + fn),
                support=int(support[i]),
                predicted=int(predicted[i]),
            )
        )
    total = int(cm.sum())
    return SegmentationMetrics(
        classes=tuple(scores),
        pixel_accuracy=_ratio(int(tp.sum()), total),
        mean_iou=_nanmean([s.iou for s in scores]),
        mean_iou_foreground=_nanmean([s.iou for s in scores[1:]]),
        pixels=total,
    )
