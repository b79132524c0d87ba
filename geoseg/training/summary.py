"""What a model card records about the training run that made it."""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geoseg.training.config import SHARED_DATA_ENV, TrainConfig, data_relative, shared_data_dir
from geoseg.training.dataset import TrainingData
from geoseg.training.progress import EpochRecord

__all__ = ["training_summary"]


def training_summary(
    config: TrainConfig,
    data: TrainingData,
    *,
    history: Sequence[EpochRecord],
    best_epoch: int,
    stopped: bool,
    wall: float,
    device: str,
    precision: str,
) -> dict[str, Any]:
    """The card's ``training`` section of a finished run.

    It holds the data and its split, the labelled pixels of each class, the epochs with
    their losses and validation scores, the time, and what reproduces the run (seed,
    command, config, torch threads, versions).

    Training data under the shared data root (:func:`~geoseg.training.config.shared_data_dir`)
    is recorded relative to it, so the card names the same files wherever the data is mounted.
    """
    import segmentation_models_pytorch as smp
    import torch

    import geoseg

    root = shared_data_dir()
    under_root = False

    def portable(path: str) -> str:
        nonlocal under_root
        rel = data_relative(path, root)
        under_root |= rel is not None
        return path if rel is None else rel

    def portable_input(item: Mapping[str, Any]) -> dict[str, Any]:
        labels = item["labels"]
        return {
            "image": portable(item["image"]),
            "labels": {**labels, "path": portable(labels["path"])},
        }

    held = {i: w for i, w in data.plan.validation}
    areas = {a.index: a for a in data.plan.train}
    pixels = data.pixels
    recorded = config.to_dict()
    recorded["inputs"] = [portable_input(i) for i in recorded["inputs"]]
    inputs = []
    for i, (item, info) in enumerate(zip(recorded["inputs"], data.infos, strict=True)):
        entry: dict[str, Any] = {**item, "size": [info.height, info.width]}
        if i in held and i not in areas:
            entry["use"] = "validation (whole tile held out)"
        elif i in held:
            w = held[i]
            entry["use"] = "training, with a validation region held out"
            entry["held_out"] = [w.row_off, w.col_off, w.height, w.width]
            entry["gap"] = areas[i].gap
        else:
            entry["use"] = "training"
        inputs.append(entry)
    names = config.class_map.class_names
    best = next((r for r in history if r.epoch == best_epoch), None)
    # Training data under the shared data root is recorded relative to it.
    data_root = (
        f"${SHARED_DATA_ENV} (default ../shared/data beside the repository); relative "
        f"training data paths are relative to it"
        if under_root
        else None
    )
    return {
        "data": inputs,
        **({"data_root": data_root} if data_root else {}),
        "class_pixels": {
            "training": {n: int(c) for n, c in zip(names, pixels[0], strict=True)},
            "validation": {n: int(c) for n, c in zip(names, pixels[1], strict=True)},
        },
        "epochs": history[-1].epoch if history else 0,
        "steps": (history[-1].epoch if history else 0) * config.steps_per_epoch,
        "steps_per_epoch": config.steps_per_epoch,
        "batch_size": config.batch_size,
        "chip_size": config.chip_size,
        "wall_time_s": round(wall, 1),
        "loss": config.loss,
        "final_loss": round(history[-1].loss, 6) if history else None,
        "best_epoch": best_epoch,
        "kept": config.keep,
        "stopped_early": stopped,
        "validation": None
        if best is None or best.validation is None
        else best.validation.to_dict(),
        "history": [
            {
                "epoch": r.epoch,
                "loss": round(r.loss, 6),
                "lr": r.lr,
                "score": None if r.score is None else round(r.score, 6),
                "seconds": round(r.seconds, 2),
                # Per-class validation scores of every validated epoch, background included.
                "classes": None
                if r.validation is None
                else {
                    c.name: {"iou": _rounded(c.iou), "f1": _rounded(c.f1)}
                    for c in r.validation.classes
                },
            }
            for r in history
        ],
        "device": device,
        "precision": precision,
        "weights_dtype": config.store_dtype,
        "reproducibility": {
            "seed": config.seed,
            "command": config.command,
            "config": recorded,
            **({"data_root": data_root} if data_root else {}),
            # The CPU threads torch used (``threads: 0`` is torch's default, which varies by
            # machine); float sums, hence the weights, depend on it.
            "torch_threads": torch.get_num_threads(),
            "versions": {
                "geoseg": geoseg.__version__,
                "torch": torch.__version__,
                "segmentation_models_pytorch": smp.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        },
    }


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)
