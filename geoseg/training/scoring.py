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

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoseg.config import InferenceOptions
from geoseg.models.card import ModelCard, read_card
from geoseg.training.baselines import compare_with_indices, comparison_data
from geoseg.training.config import TrainConfig, data_relative
from geoseg.training.held_out import EVALUATION_BATCH, Evaluate, held_out_data, pipeline_scores

__all__ = ["check_scoring", "rewrite_card", "score_held_out"]


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
