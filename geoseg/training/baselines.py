"""A trained model against weight-free spectral indices, on the same held-out data.

A trained model is worth using for a class only where it beats what needs no weights.
:func:`compare_with_indices` scores, on the held-out data of a training config and through
the real pipeline, the model and each index method of ``config.compare`` twice:

- with Otsu's threshold (``ndwi:otsu``), computed over the whole scene as ``geoseg run``
  computes it for any user;
- with the fixed threshold of :data:`INDEX_THRESHOLDS` that has the highest IoU on the
  labelled pixels of the training area, outside the held-out zone and its gap
  (:func:`threshold_on_training_area`): the held-out data chooses nothing, as for a model
  that keeps its last epoch (``keep: last``).

Each contender runs as ``geoseg run`` does by default (each class's default smoothing
recipe; this decides ``best``, since it is what a user gets) and without smoothing
(``best_without_smoothing``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import InferenceOptions
from geoseg.errors import ConfigError
from geoseg.models.bands import band_roles, resolve_bands
from geoseg.models.card import ClassInfo
from geoseg.models.spectral import METHODS, normalized_difference
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info, read_window
from geoseg.training.config import TrainConfig
from geoseg.training.held_out import (
    Evaluate,
    HeldOut,
    held_out_data,
    pipeline_scores,
    split_plan,
)
from geoseg.training.labels import IGNORE_INDEX, ClassMap, LabelReader

__all__ = [
    "INDEX_THRESHOLDS",
    "best_threshold",
    "class_only_map",
    "compare_with_indices",
    "comparison_data",
    "index_bands",
    "threshold_on_training_area",
]

# Fixed thresholds tried for an index on the training area.
INDEX_THRESHOLDS = tuple(round(t, 2) for t in np.arange(-0.2, 0.61, 0.05))

_BLOCK = 1024


def best_threshold(inter: np.ndarray, union: np.ndarray) -> tuple[float, float]:
    """The threshold of :data:`INDEX_THRESHOLDS` with the highest IoU, and that IoU.

    ``inter[k]`` and ``union[k]`` count the pixels of the class found by ``index >
    INDEX_THRESHOLDS[k]`` and the truth; ties go to the lowest threshold.
    """
    best = (INDEX_THRESHOLDS[0], -1.0)
    for t, i, u in zip(INDEX_THRESHOLDS, inter, union, strict=True):
        iou = int(i) / int(u) if u else 0.0
        if iou > best[1]:
            best = (float(t), iou)
    return best


def index_bands(config: TrainConfig, method: str, image: str) -> tuple[int, int]:
    """The 1-based bands of ``image`` that index ``method`` reads.

    The bands the model trains on are where training finds them (``band_numbers``, band
    descriptions, the ``sensor`` preset, or band order); others come from the band
    descriptions or the ``sensor`` preset.
    """
    info = read_scene_info(image)
    roles = band_roles(info.descriptions, sensor=config.sensor)
    trained = resolve_bands(
        config.bands,
        count=info.count,
        roles=roles,
        explicit=config.band_numbers,
        model_name=f"model {config.name!r}",
    )
    for role, number in zip(config.bands, trained, strict=True):
        roles[number - 1] = role
    bands = resolve_bands(
        METHODS[method].bands, count=info.count, roles=roles, model_name=f"method {method!r}"
    )
    return bands[0], bands[1]


def threshold_on_training_area(config: TrainConfig, method: str) -> tuple[float, float]:
    """The best fixed threshold of ``method`` on the training area, and its IoU there.

    Every labelled pixel of the training inputs counts, but those of the held-out zones
    (the held-out inputs, and a held-out region grown by its gap).
    """
    (cls,) = {METHODS[m].class_name for m in config.compare}
    target = config.class_map.class_names.index(cls)
    thresholds = np.asarray(INDEX_THRESHOLDS, dtype=np.float64)
    inter = np.zeros(len(thresholds), dtype=np.int64)
    union = np.zeros(len(thresholds), dtype=np.int64)
    for area in split_plan(config).train:
        item = config.inputs[area.index]
        info = read_scene_info(item.image)
        bands = index_bands(config, method, item.image)
        reader = LabelReader(item.labels, image=info, class_map=config.class_map)
        zone = area.zone
        for r in range(0, info.height, _BLOCK):
            for c in range(0, info.width, _BLOCK):
                win = PixelWindow(
                    row_off=r,
                    col_off=c,
                    height=min(_BLOCK, info.height - r),
                    width=min(_BLOCK, info.width - c),
                )
                img, valid = read_window(info.path, win, bands=bands)
                truth = reader.read(win)
                keep = valid & (truth != IGNORE_INDEX)
                held = zone.intersection(win) if zone is not None else None
                if held is not None:
                    keep[held.relative_to(win)] = False
                index = normalized_difference(img[0], img[1])
                keep &= np.isfinite(index)
                values, found = index[keep], truth[keep] == target
                pred = values[None, :] > thresholds[:, None]
                inter += (pred & found).sum(axis=1)
                union += (pred | found).sum(axis=1)
    return best_threshold(inter, union)


def class_only_map(class_map: ClassMap, cls: str) -> ClassMap:
    """``class_map`` reduced to background and ``cls`` (other classes become background)."""
    names = class_map.class_names
    index = names.index(cls)

    def target(value: str | int) -> str:
        if value == "ignore" or value == IGNORE_INDEX:
            return "ignore"
        return cls if value in (cls, index) else "background"

    values = dict(class_map.values) or {i: n for i, n in enumerate(names)}
    return ClassMap(
        classes=(ClassInfo(name="background"), ClassInfo(name=cls)),
        values={source: target(value) for source, value in values.items()},
        unmapped=class_map.unmapped,
    )


def comparison_data(config: TrainConfig) -> HeldOut:
    """The held-out data of a comparison, once the index bands are known to be there.

    Raises
    ------
    ConfigError
        If the split does not hold out exactly one input or region.
    BandError
        If an input lacks the bands of an index of ``config.compare``.
    """
    held = held_out_data(config)
    if len(held) != 1:
        raise ConfigError(
            f"compare needs one held-out input or region, the split holds out {len(held)}; "
            f"hold out one tile or a region"
        )
    for method in config.compare:
        for item in {i.image for i in config.inputs}:
            index_bands(config, method, item)
    return held[0]


def compare_with_indices(
    model: str | os.PathLike[str],
    config: TrainConfig,
    *,
    evaluate: Evaluate,
    inference: InferenceOptions,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The card's ``comparison``: the model and ``config.compare``'s indices on held-out data.

    Raises
    ------
    ConfigError, BandError
        As :func:`comparison_data`.
    """
    say = progress or (lambda _line: None)
    piece = comparison_data(config)
    (cls,) = {METHODS[m].class_name for m in config.compare}
    path = Path(model)
    contenders: dict[str, dict[str, Any]] = {path.name: {}}
    bands: dict[str, tuple[int, ...] | None] = {path.name: config.band_numbers}
    for method in config.compare:
        say(f"choosing the {method} threshold on the training area")
        threshold, train_iou = threshold_on_training_area(config, method)
        method_bands = index_bands(config, method, piece.image)
        contenders[f"{method}:otsu"] = {}
        contenders[f"{method}:{threshold:g}"] = {
            "threshold_chosen_on": "training area (outside the held-out zone)",
            "training_area_iou": round(train_iou, 4),
        }
        bands[f"{method}:otsu"] = bands[f"{method}:{threshold:g}"] = method_bands
    class_map = class_only_map(config.class_map, cls)
    rows: dict[str, Any] = {}
    for source, extra in contenders.items():
        say(f"scoring {source} on the held-out data")
        run = str(path) if source == path.name else source
        scores = {
            key: pipeline_scores(
                evaluate(
                    run,
                    piece.image,
                    piece.labels,
                    class_map=class_map,
                    region=piece.region,
                    smooth=smooth,
                    bands=bands[source],
                    sensor=config.sensor,
                    inference=inference,
                ),
                smooth=smooth,
            )["classes"][cls]
            for key, smooth in (("default", None), ("none", "none"))
        }
        rows[source] = {"source": source, **extra, cls: scores}

    def best(key: str) -> str:
        return max(rows, key=lambda k: rows[k][cls][key]["iou"] or 0.0)

    where = "region" if piece.region is not None else "input"
    region = piece.region
    return {
        "what": (
            f"{cls} IoU on the held-out {where} through the real geoseg run pipeline, with "
            f"the default smoothing recipes ('default', decides 'best') and without ('none')"
        ),
        "region": None
        if region is None
        else [region.row_off, region.col_off, region.height, region.width],
        f"{cls}_pixels": rows[path.name][cls]["none"]["support"],
        "results": rows,
        "best": best("default"),
        "best_without_smoothing": best("none"),
    }
