"""A trained model scored on its held-out data through the real ``geoseg run`` pipeline.

The training loop validates with the tiled, blended inference alone. Users of ``geoseg run``
also get each class's default smoothing recipe, so :func:`score_held_out` runs the whole
pipeline over the held-out data twice, without smoothing (``none``) and with the default
recipes (``default``), records both in the card (``training.evaluation``), and, when the
config lists index methods to ``compare``, how the model fares against them
(``training.comparison``, :mod:`geoseg.training.baselines`). The weights are kept bit for bit.

The pipeline belongs to a higher layer (:mod:`geoseg.run`) than training, so the caller
passes it in: ``score_held_out(path, config, evaluate=geoseg.run.evaluate.evaluate)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from geoseg.config import InferenceOptions
from geoseg.models.card import ModelCard, read_card
from geoseg.tiling.grid import PixelWindow
from geoseg.training.baselines import compare_with_indices, comparison_data
from geoseg.training.config import TrainConfig, data_relative
from geoseg.training.held_out import EVALUATION_BATCH, Evaluate, held_out_data, pipeline_scores
from geoseg.training.labels import ClassMap, LabelSource
from geoseg.training.metrics import compute_metrics
from geoseg.training.output_scores import OutputScores

__all__ = [
    "EvaluateOutputs",
    "check_scoring",
    "rewrite_card",
    "score_held_out",
    "score_outputs_into_card",
    "scored_labels",
]


def rewrite_card(path: str | os.PathLike[str], card: ModelCard) -> None:
    """Replace a model file's card, keeping its weights bit for bit."""
    from safetensors.torch import load_file

    from geoseg.models.registry import save_model

    save_model(path, card, load_file(str(path)))


def check_scoring(config: TrainConfig) -> None:
    """Fail now, not after training, if :func:`score_held_out` cannot score ``config``.

    Reads the inputs' headers only.

    Raises
    ------
    ConfigError
        If the split does not fit the inputs, or ``compare`` is set and the split does not
        hold out exactly one input or region.
    BandError
        If an input lacks the bands of an index of ``config.compare``.
    """
    held_out_data(config)
    if config.compare:
        comparison_data(config)


def score_held_out(
    model: str | os.PathLike[str],
    config: TrainConfig,
    *,
    evaluate: Evaluate,
    inference: InferenceOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelCard:
    """Score the model file ``model`` trained by ``config`` on its held-out data; record it.

    Adds ``evaluation`` (and, with ``config.compare``, ``comparison``) to the card's
    ``training`` section and rewrites the card in place.

    Parameters
    ----------
    model
        The model file written by :func:`~geoseg.training.loop.train`.
    config
        The config that trained it: its inputs, split, class map and bands.
    evaluate
        :func:`geoseg.run.evaluate.evaluate`.
    inference
        Inference options (default: the config's device, batches of
        :data:`~geoseg.training.held_out.EVALUATION_BATCH` tiles).
    progress
        Called with a line saying what is being scored.

    Returns
    -------
    ModelCard
        The updated card; unchanged (and not rewritten) when nothing is held out.
    """
    path = Path(model)
    card = read_card(path)
    held = held_out_data(config)
    if not held:
        return card
    say = progress or (lambda _line: None)
    options = inference or InferenceOptions(device=config.device, batch_size=EVALUATION_BATCH)
    evaluation: dict[str, Any] = {}
    for smooth in ("none", None):
        key = "none" if smooth == "none" else "default"
        say(f"scoring the held-out data through the pipeline, smoothing: {key}")
        evaluation[key] = [
            pipeline_scores(
                evaluate(
                    str(path),
                    piece.image,
                    piece.labels,
                    class_map=config.class_map,
                    region=piece.region,
                    smooth=smooth,
                    bands=config.band_numbers,
                    sensor=config.sensor,
                    inference=options,
                ),
                smooth=smooth,
            )
            for piece in held
        ]
    regions = {piece.region for piece in held}
    region = next(iter(regions)) if len(regions) == 1 else None
    sections: dict[str, Any] = {
        "evaluation": {
            "what": (
                "geoseg.run.evaluate.evaluate on the held-out data: the real geoseg run pipeline "
                "(blocks, tiles, blending) without smoothing ('none') and with each class's "
                "default smoothing recipe ('default')"
            ),
            # Relative to the shared data root, like the card's training data.
            "held_out": [data_relative(p.image) or p.image for p in held],
            "region": None
            if region is None
            else [region.row_off, region.col_off, region.height, region.width],
            **evaluation,
        }
    }
    if config.compare:
        sections["comparison"] = compare_with_indices(
            path, config, evaluate=evaluate, inference=options, progress=say
        )
    card = card.with_training(**sections)
    rewrite_card(path, card)
    return card


class EvaluateOutputs(Protocol):
    """Run a model over an image with the real pipeline and score its outputs
    (:func:`~geoseg.training.output_scores.score_outputs`); the CLI passes one in."""

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
        merge: Mapping[str, str],
        relaxed_px: int | None,
        objects: bool,
    ) -> tuple[OutputScores, float]: ...


def scored_labels(
    labels: LabelSource, class_map: ClassMap, merge: Mapping[str, str]
) -> tuple[LabelSource, ClassMap]:
    """Labels and class map as scored when ``merge`` folds classes into others.

    A class merged into another leaves the class map; a boundary class derived from polygon
    outlines (``boundary_class``) that is merged is not derived: its pixels keep the class of
    their polygon, which is what its predictions are scored as.
    """
    if labels.boundary_class is not None and labels.boundary_class in merge:
        labels = replace(labels, boundary_px=0, boundary_class=None)
    if not merge:
        return labels, class_map
    values = {
        k: (merge.get(v, v) if isinstance(v, str) else v) for k, v in class_map.values.items()
    }
    cmap = ClassMap(
        classes=tuple(c for c in class_map.classes if c.name not in merge),
        values=values,
        unmapped=class_map.unmapped,
    )
    return labels, cmap


def _summary(scores: Sequence[OutputScores]) -> dict[str, Any]:
    """Pooled scores of several images: confusion matrices, relaxed and object counts added."""
    first = scores[0]
    names = [c.name for c in first.metrics.classes]
    cm = sum((s.confusion for s in scores[1:]), first.confusion.copy())
    metrics = compute_metrics(cm, names)
    out: dict[str, Any] = {
        "classes": {
            c.name: {
                "iou": _round(c.iou),
                "f1": _round(c.f1),
                "precision": _round(c.precision),
                "recall": _round(c.recall),
                "support": c.support,
            }
            for c in metrics.classes
        },
        "labelled_pixels": sum(s.labelled_pixels for s in scores),
    }
    if first.relaxed:
        out["relaxed"] = {
            k: sum((s.relaxed[k] for s in scores[1:]), first.relaxed[k]).to_dict()
            for k in first.relaxed
        }
    if first.objects:
        out["objects"] = {
            k: sum((s.objects[k] for s in scores[1:]), first.objects[k]).to_dict()
            for k in first.objects
        }
    return out


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def score_outputs_into_card(
    model: str | os.PathLike[str],
    config: TrainConfig,
    *,
    evaluate_outputs: EvaluateOutputs,
    smooth: Sequence[str | None] = ("none", None),
    progress: Callable[[str], None] | None = None,
) -> ModelCard:
    """Score the test data (else the held-out data) with ``config.scores`` into the card.

    Adds ``training.scores``: for the test data (``config.test``: it chose nothing) or,
    without test data, the held-out data (it chose the epoch), each smoothing of
    ``smooth`` (``"none"``, ``None`` for the default recipes), the scores of every image and
    pooled over them (confusion matrices, relaxed and object counts added), with
    ``config.scores``' merge, relaxed slack and object matching. Rewrites the card in place;
    the weights are kept.
    """
    path = Path(model)
    say = progress or (lambda _line: None)
    spec = dict(config.scores)
    merge = dict(spec.get("merge") or {})
    # The test data when there is some (the held-out data chose the epoch; its pixel scores
    # are in ``training.evaluation``), else the held-out data.
    pieces: dict[str, list[tuple[str, LabelSource, PixelWindow | None]]] = (
        {"test": [(t.image, t.labels, None) for t in config.test]}
        if config.test
        else {"held_out": [(h.image, h.labels, h.region) for h in held_out_data(config)]}
    )
    section: dict[str, Any] = {
        "what": (
            "the real geoseg run pipeline over each image, its class raster and polygons "
            "scored against the labels (geoseg.training.output_scores.score_outputs)"
        ),
        "merge": merge,
        "relaxed_px": spec.get("relaxed_px"),
        "objects": bool(spec.get("objects", False)),
        "config": spec,
    }
    for kind, items in pieces.items():
        if not items:
            continue
        record: dict[str, Any] = {"images": [data_relative(i) or i for i, _, _ in items]}
        for sm in smooth:
            key = "none" if sm == "none" else "default"
            results, seconds = [], 0.0
            for image, labels, region in items:
                say(f"scoring {kind} {Path(image).name}, smoothing: {key}")
                lab, cmap = scored_labels(labels, config.class_map, merge)
                scores, took = evaluate_outputs(
                    str(path),
                    image,
                    lab,
                    class_map=cmap,
                    region=region,
                    smooth=sm,
                    bands=config.band_numbers,
                    sensor=config.sensor,
                    merge=merge,
                    relaxed_px=spec.get("relaxed_px"),
                    objects=bool(spec.get("objects", False)),
                )
                results.append(scores)
                seconds += took
            record[key] = {
                "pooled": _summary(results),
                "per_image": [_summary([r]) for r in results],
                "seconds": round(seconds, 1),
            }
        section[kind] = record
    card = read_card(path).with_training(scores=section)
    rewrite_card(path, card)
    return card
