"""Segmentation metrics from a confusion matrix: IoU, F1, precision, recall per class.

A confusion matrix is accumulated window by window (``cm += confusion_matrix(...)``), so a
whole validation scene is scored without holding it in memory. Rows are the true class,
columns the predicted class. Pixels whose target is the ignore index (nodata, unlabelled)
are not counted.

A ratio whose denominator is zero is undefined and reported as NaN (``None`` in JSON): the
IoU of a class that is neither present nor predicted, the precision of a class never
predicted. Means skip undefined values.

:func:`boundary_f1` scores where a class's edges lie rather than how many pixels agree:
the agreement of the predicted and labelled boundaries within a few pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from geoseg.errors import ConfigError

__all__ = [
    "ClassScores",
    "SegmentationMetrics",
    "boundary_f1",
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


def _boundary(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels of ``mask`` with a valid 4-neighbour outside it (nodata and the array
    edge are unknown, not outside: neither makes a boundary)."""
    outside = np.pad(valid & ~mask, 1, constant_values=False)
    touches = outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
    return mask & valid & touches


def boundary_f1(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    tolerance_px: float = 2,
    valid: np.ndarray | None = None,
) -> float:
    """F1 of a class's boundary pixels matched within ``tolerance_px`` pixels.

    A boundary pixel is a pixel of the class with a 4-neighbour outside it, both valid.
    A predicted boundary pixel counts as correct when a labelled one lies within
    ``tolerance_px`` (Euclidean distance), and a labelled one as found when a predicted one
    does; precision and recall are those shares and the score their harmonic mean. IoU is
    dominated by the interiors of large objects; this score falls when their edges are
    rounded off, shifted or broken into specks.

    Parameters
    ----------
    pred, truth
        Boolean masks of one class (non-zero counts as the class), of the same 2-D shape.
    tolerance_px
        Largest distance in pixels at which boundary pixels match (>= 0).
    valid
        Optional boolean mask: pixels outside it (nodata, unlabelled) are neither boundary
        pixels nor make one, so the edge of a nodata area or of a cut-out region is no
        boundary.

    Returns
    -------
    float
        In ``[0, 1]``; NaN when neither mask has a boundary pixel, 0 when only one has.

    Raises
    ------
    ConfigError
        If the shapes differ, are not 2-D, or the tolerance is negative or not finite.

    Examples
    --------
    >>> truth = np.zeros((10, 10), bool); truth[2:6, 2:6] = True
    >>> shifted = np.roll(truth, 1, axis=1)  # one pixel to the right
    >>> boundary_f1(shifted, truth)
    1.0
    >>> boundary_f1(shifted, truth, tolerance_px=0)
    0.5
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ConfigError(
            f"boundary F1 needs two 2-D masks of one shape, got {pred.shape} and {truth.shape}"
        )
    if valid is None:
        valid = np.ones(pred.shape, dtype=bool)
    elif valid.shape != pred.shape:
        raise ConfigError(f"valid mask shape {valid.shape} differs from the masks' {pred.shape}")
    if isinstance(tolerance_px, bool) or not math.isfinite(tolerance_px) or tolerance_px < 0:
        raise ConfigError(
            f"tolerance_px={tolerance_px!r} must be a distance in pixels >= 0, e.g. 2"
        )
    valid = np.asarray(valid, dtype=bool)
    bp, bt = _boundary(pred, valid), _boundary(truth, valid)
    n_pred, n_truth = int(bp.sum()), int(bt.sum())
    if n_pred == 0 and n_truth == 0:
        return math.nan
    if n_pred == 0 or n_truth == 0:
        return 0.0
    precision = int((bp & (ndi.distance_transform_edt(~bt) <= tolerance_px)).sum()) / n_pred
    recall = int((bt & (ndi.distance_transform_edt(~bp) <= tolerance_px)).sum()) / n_truth
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
