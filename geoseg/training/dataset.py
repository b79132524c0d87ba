"""The training data of a run, prepared before the first step.

:func:`prepare_data` opens every input (resolving its bands and labels), plans the
validation split, and streams once over the pixels: per-band mean/std of the training
pixels (the card's normalisation, unless the config fixes it) and per-cell class counts
(where the rare classes are, for class-balanced chips). :func:`chip_loader` then draws and
reads the chips of every step (:mod:`geoseg.training.chips`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ConfigError
from geoseg.models.bands import band_roles, resolve_bands
from geoseg.tiling.io import SceneInfo, read_scene_info
from geoseg.training.chips import (
    ChipLoader,
    ChipSampler,
    RunningStats,
    SceneScan,
    SplitPlan,
    TrainScene,
    plan_split,
    scan_scene,
)
from geoseg.training.config import TrainConfig
from geoseg.training.labels import LabelReader
from geoseg.training.progress import TrainProgress

__all__ = ["TrainingData", "chip_loader", "open_inputs", "prepare_data", "resolution_m"]


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class TrainingData:
    """The inputs of a run, its split and what the scan found.

    ``pixels[0]`` counts the labelled training pixels of each class, ``pixels[1]`` the
    validation pixels. ``mean``, ``std`` and ``resolution_m`` are the config's when it sets
    them, else measured (the training pixels, the first input's pixel size).
    """

    infos: tuple[SceneInfo, ...]
    scenes: tuple[TrainScene, ...]
    plan: SplitPlan
    scans: tuple[SceneScan, ...]
    pixels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution_m: float | None


def open_inputs(config: TrainConfig) -> tuple[list[SceneInfo], list[TrainScene]]:
    """Each input's scene info, and its path, model bands and label reader."""
    infos, scenes = [], []
    for item in config.inputs:
        info = read_scene_info(item.image)
        roles = band_roles(info.descriptions, sensor=config.sensor)
        bands = resolve_bands(
            config.bands,
            count=info.count,
            roles=roles,
            explicit=config.band_numbers,
            model_name=f"model {config.name!r}",
        )
        labels = LabelReader(item.labels, image=info, class_map=config.class_map)
        infos.append(info)
        scenes.append(TrainScene(path=info.path, bands=bands, labels=labels))
    return infos, scenes


def resolution_m(info: SceneInfo) -> float | None:
    """The pixel size in metres (approximate for geographic CRSs); ``None`` without a CRS."""
    if info.crs is None:
        return None
    if info.crs.is_projected:
        factor = info.crs.linear_units_factor[1]
        return round(float(info.res[0] * factor), 6)
    return round(float(info.res[1] * 111_320.0), 3)  # degrees of latitude, approximately


def _cell_size(chip: int, infos: Sequence[SceneInfo]) -> int:
    """Class-count cells: an eighth of a chip, coarser for huge images (<= ~4M cells)."""
    largest = max(i.width * i.height for i in infos)
    return max(8, chip // 8, math.ceil(math.sqrt(largest / 4e6)))


def prepare_data(config: TrainConfig, emit: Callable[[TrainProgress], None]) -> TrainingData:
    """Open the inputs, plan the split and scan the pixels (``scan`` progress events).

    Raises
    ------
    ConfigError
        If the bands, labels or split do not fit the inputs, the training area or the
        validation split holds no labelled pixel of a non-background class, or no valid
        pixel is left to compute the normalisation from.
    SceneReadError
        If an input cannot be read.
    """
    infos, scenes = open_inputs(config)
    plan = plan_split(
        config.validation, [(i.height, i.width) for i in infos], chip=config.chip_size
    )
    scans, stats, pixels = _scan(config, infos, scenes, plan, emit)
    mean = config.mean if config.mean is not None else stats.mean
    std = config.std if config.std is not None else stats.std
    resolution = config.resolution_m if config.resolution_m is not None else resolution_m(infos[0])
    return TrainingData(
        infos=tuple(infos),
        scenes=tuple(scenes),
        plan=plan,
        scans=tuple(scans),
        pixels=pixels,
        mean=tuple(mean),
        std=tuple(std),
        resolution_m=resolution,
    )


def chip_loader(config: TrainConfig, data: TrainingData) -> ChipLoader:
    """The loader of training batches: random and class-balanced chips, augmented."""
    sampler = ChipSampler(
        data.plan.train, chip=config.chip_size, scans=data.scans, balance=config.balance
    )
    return ChipLoader(
        data.scenes,
        sampler,
        mean=data.mean,
        std=data.std,
        augment_spec=config.augment,
        min_labelled=config.min_labelled,
    )


def _scan(
    config: TrainConfig,
    infos: Sequence[SceneInfo],
    scenes: Sequence[TrainScene],
    plan: SplitPlan,
    emit: Callable[[TrainProgress], None],
) -> tuple[list[SceneScan], RunningStats, np.ndarray]:
    n = config.class_map.n_classes
    cell = _cell_size(config.chip_size, infos)
    block = max(cell, 1024 // cell * cell)  # as scan_scene rounds it: whole cells per block
    windows = [(a.index, infos[a.index].window, a) for a in plan.train]
    val_windows = [(i, w, None) for i, w in plan.validation]
    total = sum(
        math.ceil(w.height / block) * math.ceil(w.width / block)
        for _, w, _ in [*windows, *val_windows]
    )
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        emit(TrainProgress(stage="scan", epoch=0, epochs=config.epochs, step=done, steps=total))

    scans, stats = [], RunningStats(len(config.bands))
    for index, window, area in windows:
        scan = scan_scene(
            scenes[index].path,
            bands=scenes[index].bands,
            labels=scenes[index].labels,
            n_classes=n,
            cell=cell,
            window=window,
            area=area,
            stats=config.mean is None,
            block=block,
            on_block=tick,
        )
        scans.append(scan)
        if scan.stats is not None:
            stats.merge(scan.stats)
    val_pixels = np.zeros(n, dtype=np.int64)
    for index, window, _ in val_windows:
        scan = scan_scene(
            scenes[index].path,
            bands=scenes[index].bands,
            labels=scenes[index].labels,
            n_classes=n,
            cell=cell,
            window=window,
            stats=False,
            block=block,
            on_block=tick,
        )
        val_pixels += scan.class_pixels
    train_pixels = sum((s.class_pixels for s in scans), np.zeros(n, dtype=np.int64))
    names = config.class_map.class_names
    if not train_pixels[1:].any():
        raise ConfigError(
            f"the training area holds no labelled pixel of {', '.join(names[1:])}; "
            f"check the class map and the labels"
        )
    if plan.validation and not val_pixels[1:].any():
        raise ConfigError(
            f"the validation split holds no labelled pixel of {', '.join(names[1:])}; "
            f"hold out another tile or region"
        )
    if config.mean is None and stats.count == 0:
        raise ConfigError("the training images hold no valid pixel to compute mean/std from")
    return scans, stats, np.stack([train_pixels, val_pixels])
