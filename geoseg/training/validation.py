"""Validation during training: the held-out windows scored as ``geoseg run`` predicts them.

After an epoch the network predicts each held-out window with the real tiled, blended
inference (:class:`~geoseg.models.predictor.TorchSegmenter` over blocks and tiles, as in
``geoseg run``, without smoothing), and the prediction is scored against the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from geoseg.models.card import ModelCard
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_window
from geoseg.training.chips import TrainScene
from geoseg.training.labels import IGNORE_INDEX
from geoseg.training.metrics import SegmentationMetrics, compute_metrics, confusion_matrix

if TYPE_CHECKING:
    import torch

__all__ = ["validate"]


def validate(
    network: torch.nn.Module,
    card: ModelCard,
    scenes: Sequence[TrainScene],
    windows: Sequence[tuple[int, PixelWindow]],
    *,
    device: str,
    precision: str,
    batch_size: int,
    on_block: Callable[[int, int], None],
) -> SegmentationMetrics:
    """Score the held-out windows with the tiled, blended inference of ``geoseg run``."""
    from geoseg.config import InferenceOptions
    from geoseg.models.predictor import TorchSegmenter
    from geoseg.tiling.grid import TilingSpec, plan_blocks

    seg = TorchSegmenter(
        card,
        network,
        options=InferenceOptions(device=device, precision=precision, batch_size=batch_size),
    )
    spec = TilingSpec(tile=card.tile_size, overlap=card.overlap, block=max(2048, card.tile_size))
    n = len(card.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    jobs = [
        (index, win, blk)
        for index, win in windows
        for blk in plan_blocks(win.height, win.width, spec=spec)
    ]
    for done, (index, win, blk) in enumerate(jobs, start=1):
        scene = scenes[index]
        read = _shift(blk.read, win)
        image, valid = read_window(scene.path, read, bands=scene.bands)
        probs = seg.predict(image, valid)
        rows, cols = blk.core_in_read
        pred = probs[:, rows, cols].argmax(axis=0)
        labels = scene.labels.read(_shift(blk.core, win))
        labels[~valid[rows, cols]] = IGNORE_INDEX
        cm += confusion_matrix(labels, pred, n_classes=n)
        on_block(done, len(jobs))
    network.train()
    return compute_metrics(cm, card.class_names)


def _shift(window: PixelWindow, origin: PixelWindow) -> PixelWindow:
    return replace(
        window, row_off=window.row_off + origin.row_off, col_off=window.col_off + origin.col_off
    )
