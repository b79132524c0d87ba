"""A decision threshold for one class, chosen on held-out data and folded into the network.

A network trained on rare, thin classes (roads: 1-7 % of pixels) is often too cautious at
the argmax (``p >= 0.5``): the probability of a road pixel it is unsure of stays under one
half. :func:`threshold_counts` accumulates, window by window, how many labelled pixels of
the class and of other classes reach each probability level (the run's probability raster
is quantised to ``1/254``), and :func:`choose_threshold` picks the level with the best IoU.

:func:`fold_threshold` then moves the class's bias in the network's last layer by
``-logit(t)``: for a two-class softmax, ``argmax`` of the new logits is exactly
``p_class >= t`` of the old ones, so ``geoseg run`` applies the threshold with no option and
no card field (the probabilities users see are those of the shifted network).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LEVELS",
    "ThresholdChoice",
    "choose_threshold",
    "fold_threshold",
    "head_bias_key",
    "threshold_counts",
]

LEVELS = 255  # probability raster values 0..254 (value / 254)


def threshold_counts(
    prob_u8: np.ndarray, truth: np.ndarray, *, scored: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the probability levels of labelled class pixels and of the others.

    Parameters
    ----------
    prob_u8
        The class's probability as the run writes it (0..254, ``value / 254``).
    truth
        Pixels labelled with the class.
    scored
        Pixels that are labelled at all (and valid in the run).

    Returns
    -------
    positive, negative
        ``(LEVELS,)`` int64 counts; add them over windows and images.
    """
    keep = scored & (prob_u8 < LEVELS)
    v = prob_u8[keep].astype(np.int64)
    t = truth[keep]
    return (
        np.bincount(v[t], minlength=LEVELS)[:LEVELS],
        np.bincount(v[~t], minlength=LEVELS)[:LEVELS],
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ThresholdChoice:
    """The chosen threshold and the scores at it and at the argmax (``p >= 0.5``)."""

    threshold: float
    iou: float
    precision: float
    recall: float
    argmax_iou: float
    argmax_precision: float
    argmax_recall: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(getattr(self, k), 4) for k in self.__dataclass_fields__}


def _scores(pos: np.ndarray, neg: np.ndarray, level: int) -> tuple[float, float, float]:
    tp = float(pos[level:].sum())
    fp = float(neg[level:].sum())
    fn = float(pos[:level].sum())
    iou = tp / (tp + fp + fn) if tp + fp + fn else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    return iou, precision, recall


def choose_threshold(
    positive: np.ndarray, negative: np.ndarray, *, lowest: float = 0.05, highest: float = 0.95
) -> ThresholdChoice:
    """The probability level in ``[lowest, highest]`` with the best IoU of the class.

    Ties go to the level nearest one half. Predicting the class means ``p >= t``.

    Raises
    ------
    ConfigError
        If no pixel is labelled with the class.
    """
    if not positive.sum():
        raise ConfigError("no held-out pixel is labelled with the class; cannot choose a threshold")
    levels = range(max(1, math.ceil(lowest * 254)), math.floor(highest * 254) + 1)
    half = 127  # the argmax of two classes: p >= 0.5 (the raster holds round(p * 254))
    best = max(
        levels,
        key=lambda k: (np.nan_to_num(_scores(positive, negative, k)[0], nan=-1.0), -abs(k - half)),
    )
    iou, precision, recall = _scores(positive, negative, best)
    a_iou, a_precision, a_recall = _scores(positive, negative, half)
    return ThresholdChoice(
        threshold=best / 254,
        iou=iou,
        precision=precision,
        recall=recall,
        argmax_iou=a_iou,
        argmax_precision=a_precision,
        argmax_recall=a_recall,
    )


def head_bias_key(state: Mapping[str, Any], n_outputs: int) -> str:
    """The key of the last layer's bias (one value per output channel).

    Raises
    ------
    ConfigError
        If the network has no such bias (``segmentation_head.0.bias`` in smp models).
    """
    key = "segmentation_head.0.bias"
    if key in state and tuple(state[key].shape) == (n_outputs,):
        return key
    raise ConfigError(
        f"no last-layer bias {key!r} of {n_outputs} values in the weights; a threshold can "
        f"only be folded into an smp segmentation head"
    )


def fold_threshold(
    state: Mapping[str, torch.Tensor], *, channel: int, n_outputs: int, threshold: float
) -> dict[str, torch.Tensor]:
    """Weights whose argmax over two classes is ``p[channel] >= threshold`` of ``state``'s.

    Raises
    ------
    ConfigError
        If the network does not have two softmax outputs or the threshold is not in (0, 1).
    """
    if n_outputs != 2:
        raise ConfigError(
            f"a threshold folds exactly into a two-class softmax; this network has "
            f"{n_outputs} outputs"
        )
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold {threshold} must be in (0, 1)")
    key = head_bias_key(state, n_outputs)
    out = dict(state)
    bias = state[key].detach().clone()
    shift = -math.log(threshold / (1 - threshold))
    bias[channel] = (bias[channel].float() + shift).to(bias.dtype)
    out[key] = bias
    return out


def held_out_counts(
    probabilities: str,
    *,
    band: int,
    image: str,
    labels: Any,
    class_map: Any,
    class_name: str,
    region: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`threshold_counts` of a run's probability raster over ``region`` of ``image``.

    ``band`` (1-based) of ``probabilities`` holds the class's probability (0..254, 255
    nodata); ``labels`` (a :class:`~geoseg.training.labels.LabelSource`) and ``class_map``
    say which pixels are the class; unlabelled pixels are not counted.
    """
    from geoseg.tiling.grid import PixelWindow
    from geoseg.tiling.io import read_scene_info, read_window
    from geoseg.training.labels import IGNORE_INDEX, LabelReader

    info = read_scene_info(image)
    reader = LabelReader(labels, image=info, class_map=class_map)
    index = class_map.class_names.index(class_name)
    area = region or info.window
    pos = np.zeros(LEVELS, dtype=np.int64)
    neg = np.zeros(LEVELS, dtype=np.int64)
    step = 1024
    for r in range(area.row_off, area.row_end, step):
        for c in range(area.col_off, area.col_end, step):
            win = PixelWindow(
                row_off=r,
                col_off=c,
                height=min(step, area.row_end - r),
                width=min(step, area.col_end - c),
            )
            truth = reader.read(win)
            prob, valid = read_window(probabilities, win, bands=(band,))
            p, n = threshold_counts(prob[0], truth == index, scored=valid & (truth != IGNORE_INDEX))
            pos += p
            neg += n
    return pos, neg


def apply_threshold(path: str, *, class_name: str, choice: ThresholdChoice, held_out: Any) -> Any:
    """Fold ``choice`` into the model file ``path`` and record it in its card.

    Returns the new card.

    Raises
    ------
    ConfigError
        If the card already records a folded threshold (folding twice would compound).
    """
    from safetensors.torch import load_file

    from geoseg.models.card import read_card
    from geoseg.models.registry import save_model

    card = read_card(path)
    if card.training and "threshold" in card.training:
        raise ConfigError(
            f"{path!r} already has a folded threshold "
            f"({card.training['threshold'].get('threshold')}); retrain or start from a copy "
            f"made before it"
        )
    state = load_file(path)
    folded = fold_threshold(
        state,
        channel=card.class_index(class_name),
        n_outputs=card.network_outputs,
        threshold=choice.threshold,
    )
    card = card.with_training(
        threshold={
            "class": class_name,
            **choice.to_dict(),
            "chosen_on": held_out,
            "how": (
                "the probability level with the best IoU of the class on the held-out data "
                "(geoseg run, no smoothing), folded into the last layer's bias as "
                "-logit(threshold), so the argmax predicts the class where p >= threshold; "
                "argmax_* are the scores at p >= 0.5 before folding"
            ),
        }
    )
    save_model(path, card, folded)
    return card
