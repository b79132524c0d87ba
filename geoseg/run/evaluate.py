"""``geoseg evaluate``: accuracy of what users get, measured through the real pipeline.

The model runs over the image exactly as ``geoseg run`` would (blocks, tiles, blending,
smoothing), into a temporary folder; its class raster is then compared with the labels
window by window, optionally inside a held-out region only. Labels come from a class
raster on the image grid or a vector file (see :mod:`geoseg.training.labels`); only labelled
pixels are scored, so sparse polygons (``outside="ignore"``, the default for vector labels
built by :func:`evaluation_labels`) score the pixels inside them and nothing else.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import InferenceOptions, RunConfig
from geoseg.errors import ConfigError
from geoseg.models.card import ClassInfo
from geoseg.run.pipeline import NODATA_CLASS, RunSummary, plan_run, run_scene
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info, read_window
from geoseg.training.labels import ClassMap, LabelReader, LabelSource
from geoseg.training.metrics import SegmentationMetrics, compute_metrics, confusion_matrix

__all__ = ["EvaluationResult", "evaluate", "evaluation_labels"]

_WINDOW = 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluationResult:
    """Metrics of one model on one labelled image."""

    metrics: SegmentationMetrics
    classes: tuple[str, ...]
    region: PixelWindow
    labelled_pixels: int
    run: RunSummary
    labels: LabelSource | None = None

    @property
    def region_pixels(self) -> int:
        return self.region.height * self.region.width

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "labels": None if self.labels is None else self.labels.to_dict(),
            "region": {
                "row_off": self.region.row_off,
                "col_off": self.region.col_off,
                "height": self.region.height,
                "width": self.region.width,
            },
            "labelled_pixels": self.labelled_pixels,
            "region_pixels": self.region_pixels,
            "metrics": self.metrics.to_dict(),
            "run_seconds": round(self.run.seconds, 2),
        }


def _windows(region: PixelWindow) -> Iterator[PixelWindow]:
    for r in range(region.row_off, region.row_end, _WINDOW):
        for c in range(region.col_off, region.col_end, _WINDOW):
            yield PixelWindow(
                row_off=r,
                col_off=c,
                height=min(_WINDOW, region.row_end - r),
                width=min(_WINDOW, region.col_end - c),
            )


def evaluation_labels(
    path: str | os.PathLike[str],
    *,
    attribute: str | None = None,
    layer: str | None = None,
    outside: str | None = None,
    all_touched: bool = False,
) -> LabelSource:
    """The :class:`LabelSource` of an evaluation, with the defaults evaluation needs.

    Vector labels default to ``outside="ignore"``: pixels outside every polygon are not
    scored, since evaluation polygons are usually a sample, not a wall-to-wall map (pass
    ``"background"`` for a wall-to-wall map). Polygons whose class value maps to no class
    (see ``unmapped`` of :class:`~geoseg.training.labels.ClassMap`) still score as background.

    Raises
    ------
    ConfigError
        If vector-only options are given for a label raster.
    """
    source = LabelSource(path=os.fspath(path), attribute=attribute)
    if not source.is_vector:
        given = [
            name
            for name, value in (
                ("attribute", attribute),
                ("layer", layer),
                ("outside", outside),
                ("all_touched", all_touched or None),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply to vector labels; {source.path!r} is a raster "
                f"whose values are the classes (map them with a value map, e.g. 6=water)"
            )
        return source
    return LabelSource(
        path=source.path,
        attribute=attribute,
        layer=layer,
        outside=outside or "ignore",
        all_touched=all_touched,
    )


def evaluate(
    model: str,
    image: str | os.PathLike[str],
    labels: LabelSource,
    *,
    class_map: ClassMap | None = None,
    classes: Sequence[str] | None = None,
    region: PixelWindow | None = None,
    smooth: str | None = None,
    bands: tuple[int, ...] | None = None,
    sensor: str | None = None,
    inference: InferenceOptions | None = None,
    block: int = 2048,
    client: Any = None,
) -> EvaluationResult:
    """Run ``model`` over ``image`` with the real pipeline and score it against ``labels``.

    Parameters
    ----------
    model
        A model file or built-in method (``ndwi``).
    image
        The labelled image.
    labels
        Label raster (same grid) or vector file with a class attribute. Pixels they leave
        unlabelled are not scored: label nodata, values mapped to ``"ignore"`` and, with
        ``outside="ignore"``, pixels outside every polygon.
    class_map
        Label value -> class name; default: label values are the model's class indices.
    classes
        Classes to score (default: every class of the model); others count as background.
    region
        Score only this window (a held-out region); default the whole image.
    smooth, bands, sensor, inference, block, client
        As for ``geoseg run``.
    """
    if not classes:
        from geoseg.models.card import read_card
        from geoseg.models.spectral import is_spectral, spectral_card

        card = spectral_card(model) if is_spectral(model) else read_card(model)
        classes = card.class_names[1:]
    config = RunConfig(
        classes=tuple(classes),
        models=(model,),
        bands=bands,
        sensor=sensor,
        block=block,
        inference=inference or InferenceOptions(),
        smooth=smooth,
    )
    plan = plan_run(image, config)
    names = ("background", *plan.classes)
    cmap = class_map or ClassMap(classes=tuple(ClassInfo(name=n) for n in names))
    unknown = [c for c in cmap.class_names[1:] if c not in names]
    if unknown:
        raise ConfigError(
            f"label classes {unknown} are not produced by the run; run classes: "
            f"{', '.join(plan.classes)}"
        )
    # Label class index -> run class index (background and unrequested classes -> 0).
    to_run = np.array([names.index(n) if n in names else 0 for n in cmap.class_names], np.uint8)
    info = read_scene_info(image)
    region = region or info.window
    if region.intersection(info.window) != region:
        raise ConfigError(f"evaluation region {region} lies outside the image")
    reader = LabelReader(labels, image=info, class_map=cmap)
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp:
        run = run_scene(image, Path(tmp) / "eval.gpkg", config, client=client, plan=plan)
        raster = str(run.raster)  # RunConfig.raster defaults to True
        labelled = 0
        for win in _windows(region):
            truth = reader.read(win)
            pred, _ = read_window(raster, win, bands=(1,))
            pred = pred[0]
            # 255 = ignore (nodata, unlabelled, or unmapped with unmapped="ignore")
            ok = (truth != 255) & (pred != NODATA_CLASS)
            target = np.where(ok, to_run[np.minimum(truth, len(to_run) - 1)], 0)
            cm += confusion_matrix(target, pred, n_classes=len(names), valid=ok)
            labelled += int(ok.sum())
    if labelled == 0:
        raise ConfigError(f"no labelled pixels inside the evaluation region {region}")
    return EvaluationResult(
        metrics=compute_metrics(cm, names),
        classes=tuple(plan.classes),
        region=region,
        labelled_pixels=labelled,
        run=run,
        labels=labels,
    )
