"""A finished run's outputs scored against labels: pixels, relaxed pixels and objects.

:func:`score_outputs` reads the class raster and the GeoPackage a ``geoseg run`` wrote and
the labels of the image (:class:`~geoseg.training.labels.LabelReader`), window by window:

- the pixel confusion matrix of the scored classes (as ``geoseg evaluate`` computes it),
  after ``merge``: predictions of a class counted as another (a field-boundary class
  counted as cropland);
- with ``relaxed_px``, each class's relaxed precision, recall and F1 (Mnih 2013; see
  :func:`~geoseg.training.objects.relaxed_counts`), each window read with ``relaxed_px``
  pixels of context, so the counts do not depend on the window size;
- with ``objects``, each class's object precision, recall and F1: the class's polygon layer
  against the label polygons of that class, matched one to one at IoU >= 0.5
  (:func:`~geoseg.training.objects.match_objects`), both clipped to the region when one is
  given.

The run itself belongs to a higher layer (:mod:`geoseg.run`): callers run it and pass the
paths of its outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.errors import ConfigError
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info, read_window
from geoseg.training.labels import IGNORE_INDEX, ClassMap, LabelReader, LabelSource
from geoseg.training.metrics import SegmentationMetrics, compute_metrics, confusion_matrix
from geoseg.training.objects import ObjectScores, RelaxedCounts, match_objects, relaxed_counts

__all__ = ["NODATA_CLASS", "OutputScores", "score_outputs"]

NODATA_CLASS = 255  # the class raster's nodata (geoseg.run.plan.NODATA_CLASS)
_WINDOW = 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class OutputScores:
    """Scores of one run's outputs on one labelled image."""

    metrics: SegmentationMetrics
    labelled_pixels: int
    confusion: np.ndarray = field(repr=False, compare=False)
    merged: Mapping[str, str] = field(default_factory=dict)
    relaxed: Mapping[str, RelaxedCounts] = field(default_factory=dict)
    objects: Mapping[str, ObjectScores] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metrics": self.metrics.to_dict(),
            "labelled_pixels": self.labelled_pixels,
        }
        if self.merged:
            out["merged"] = dict(self.merged)
        if self.relaxed:
            out["relaxed"] = {k: v.to_dict() for k, v in self.relaxed.items()}
        if self.objects:
            out["objects"] = {k: v.to_dict() for k, v in self.objects.items()}
        return out


def _windows(region: PixelWindow) -> Iterator[PixelWindow]:
    for r in range(region.row_off, region.row_end, _WINDOW):
        for c in range(region.col_off, region.col_end, _WINDOW):
            yield PixelWindow(
                row_off=r,
                col_off=c,
                height=min(_WINDOW, region.row_end - r),
                width=min(_WINDOW, region.col_end - c),
            )


def _grow(window: PixelWindow, by: int) -> PixelWindow:
    return PixelWindow(
        row_off=window.row_off - by,
        col_off=window.col_off - by,
        height=window.height + 2 * by,
        width=window.width + 2 * by,
    )


def score_outputs(
    raster: str | os.PathLike[str],
    polygons: str | os.PathLike[str] | None,
    *,
    image: str | os.PathLike[str],
    labels: LabelSource,
    run_classes: Sequence[str],
    class_map: ClassMap | None = None,
    region: PixelWindow | None = None,
    merge: Mapping[str, str] | None = None,
    relaxed_px: int | None = None,
    objects: bool = False,
    min_iou: float = 0.5,
) -> OutputScores:
    """Score a run's class ``raster`` (and its GeoPackage ``polygons``) against ``labels``.

    Parameters
    ----------
    raster
        The run's class raster: ``i + 1`` for ``run_classes[i]``, 0 background, 255 nodata.
    polygons
        The run's GeoPackage, one polygon layer per class (needed with ``objects``).
    image
        The image the run read (its grid).
    labels, class_map
        Labels and how their values map to class names (default: values are the indices
        of ``("background", *run_classes)``). Unlabelled pixels are not scored.
    run_classes
        The run's classes in raster order.
    region
        Score only this window of the image.
    merge
        Run class -> class it is scored as (``{"field_boundary": "crops"}``); the merged
        class leaves the scored classes.
    relaxed_px
        Also count relaxed scores with this slack in pixels.
    objects
        Also match each scored class's polygons against its label polygons.

    Raises
    ------
    ConfigError
        If a label or merge class is not a run class, the region lies outside the image,
        no pixel is labelled, or ``objects`` is asked without polygons or polygon labels.
    """
    run_names = ("background", *run_classes)
    merge = dict(merge or {})
    for src, dst in merge.items():
        if src not in run_classes or dst not in run_names or src == dst:
            raise ConfigError(
                f"merge {src}={dst}: both must be distinct classes of the run "
                f"({', '.join(run_classes)}, or background)"
            )
    names = tuple(n for n in run_names if n not in merge)
    # Run raster value -> scored class index.
    to_scored = np.zeros(256, dtype=np.uint8)
    for value, name in enumerate(run_names):
        to_scored[value] = names.index(merge.get(name, name))
    to_scored[NODATA_CLASS] = IGNORE_INDEX
    # Default: label values are indices, or names, of the run's classes (merged ones as
    # scored).
    values: dict[Any, str] = {}
    if merge:
        values = {i: merge.get(n, n) for i, n in enumerate(run_names)}
        values.update({n: merge.get(n, n) for n in run_names})
    cmap = class_map or ClassMap(classes=_class_infos(names), values=values)
    unknown = [c for c in cmap.class_names[1:] if c not in names]
    if unknown:
        raise ConfigError(
            f"label classes {unknown} are not scored; scored classes: {', '.join(names[1:])}"
        )
    label_to_scored = np.array(
        [names.index(n) if n in names else 0 for n in cmap.class_names], dtype=np.uint8
    )
    info = read_scene_info(image)
    region = region or info.window
    if region.intersection(info.window) != region:
        raise ConfigError(f"evaluation region {region} lies outside the image")
    reader = LabelReader(labels, image=info, class_map=cmap)
    halo = relaxed_px or 0
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    relaxed = {n: RelaxedCounts(slack=halo) for n in names[1:]} if relaxed_px else {}
    labelled = 0
    for win in _windows(region):
        read = _grow(win, halo)
        inner = read.intersection(region) or win  # never None: win lies inside region
        truth = np.full((read.height, read.width), IGNORE_INDEX, dtype=np.uint8)
        pred = np.full((read.height, read.width), IGNORE_INDEX, dtype=np.uint8)
        k = inner.relative_to(read)
        t = reader.read(inner)
        p, valid = read_window(str(raster), inner, bands=(1,))
        truth[k] = np.where(
            t != IGNORE_INDEX,
            label_to_scored[np.minimum(t, len(label_to_scored) - 1)],
            IGNORE_INDEX,
        )
        pred[k] = np.where(valid, to_scored[p[0]], IGNORE_INDEX)
        scored = (truth != IGNORE_INDEX) & (pred != IGNORE_INDEX)
        core = win.relative_to(read)
        sc = scored[core]
        cm += confusion_matrix(
            np.where(sc, truth[core], 0),
            np.where(sc, pred[core], 0),
            n_classes=len(names),
            valid=sc,
        )
        labelled += int(sc.sum())
        for i, name in enumerate(names[1:], start=1):
            if name in relaxed:
                relaxed[name] = relaxed[name] + relaxed_counts(
                    truth == i, pred == i, scored=scored, slack=halo, core=core
                )
    if labelled == 0:
        raise ConfigError(f"no labelled pixels inside the evaluation region {region}")
    found: dict[str, ObjectScores] = {}
    if objects:
        found = _objects(polygons, reader, cmap, names, info=info, region=region, min_iou=min_iou)
    return OutputScores(
        metrics=compute_metrics(cm, names),
        labelled_pixels=labelled,
        confusion=cm,
        merged=merge,
        relaxed=relaxed,
        objects=found,
    )


def _class_infos(names: Sequence[str]) -> tuple[Any, ...]:
    from geoseg.models.card import ClassInfo

    return tuple(ClassInfo(name=n) for n in names)


def _objects(
    polygons: str | os.PathLike[str] | None,
    reader: LabelReader,
    cmap: ClassMap,
    names: Sequence[str],
    *,
    info: Any,
    region: PixelWindow,
    min_iou: float,
) -> dict[str, ObjectScores]:
    import pyogrio
    import shapely

    if polygons is None:
        raise ConfigError("object scores need the run's GeoPackage of polygons")
    t = info.transform
    x0, y0 = t * (region.col_off, region.row_off)
    x1, y1 = t * (region.col_end, region.row_end)
    frame = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    whole = region == info.window
    layers = {str(row[0]) for row in pyogrio.list_layers(str(polygons))}
    out: dict[str, ObjectScores] = {}
    for name in cmap.class_names[1:]:
        if name not in names:
            continue
        truth = reader.polygons(cmap.class_names.index(name))
        pred: list[Any] = []
        if name in layers:
            pred = list(pyogrio.read_dataframe(str(polygons), layer=name).geometry)
        if not whole:  # objects cut by the region's edge are scored by their part inside
            truth = [g for g in shapely.intersection(truth, frame) if not g.is_empty]
            pred = [g for g in shapely.intersection(pred, frame) if not g.is_empty]
        out[name] = match_objects(pred, truth, min_iou=min_iou)
    return out
