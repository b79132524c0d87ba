"""Planning a run: validate everything before any pixel is read, then cut the blocks.

:func:`plan_run` reads only headers (scene, model cards) and fails with one clear line on
a missing file, a non-raster, a class no model provides, too few bands or a bad option.
:func:`prepare_spectral` makes the one streamed pass spectral methods need (Otsu
threshold, band statistics) before blocks are processed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoseg.config import InferenceOptions, RunConfig
from geoseg.errors import BandError, ClassNotAvailableError, ConfigError
from geoseg.models.bands import band_roles, resolve_bands
from geoseg.models.card import ModelCard
from geoseg.models.spectral import (
    is_spectral,
    spectral_card,
)
from geoseg.postprocess import (
    SmoothingRecipe,
    override_classes,
    parse_overrides,
    recipe_for,
    smoothing_halo_px,
)
from geoseg.tiling.grid import Block, TilingSpec, plan_blocks
from geoseg.tiling.io import SceneInfo, read_scene_info, sample_band_medians
from geoseg.vectorize.centerlines import centerline_halo_px
from geoseg.vectorize.geometry import pixel_size_m

__all__ = [
    "NODATA_CLASS",
    "ModelUse",
    "RunPlan",
    "plan_run",
    "scene_roles",
]

log = logging.getLogger(__name__)

NODATA_CLASS = 255
# Classes whose centrelines are written as a ``<class>_centerlines`` line layer.
LINE_CLASSES = frozenset({"roads"})
MAX_ROAD_WIDTH_M = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelUse:
    """One model in a run: where it comes from, which scene bands feed it, what it gives.

    ``outputs`` maps each requested class this model provides to its output channel.
    ``tile`` and ``overlap`` are the model's tile plan for this run: the card's, unless the
    user set them (resolved here once; the predictor is given them).
    """

    source: str
    card: ModelCard
    bands: tuple[int, ...]
    outputs: tuple[tuple[str, int], ...]
    tile: int
    overlap: int
    recipes: Mapping[str, SmoothingRecipe] = field(default_factory=dict)

    @property
    def smooths(self) -> bool:
        return any(r.method != "none" for r in self.recipes.values())


@dataclass(frozen=True, kw_only=True, slots=True)
class RunPlan:
    """A validated run: everything a worker needs, and nothing that cannot be pickled."""

    scene: SceneInfo
    models: tuple[ModelUse, ...]
    classes: tuple[str, ...]
    colors: tuple[str, ...]
    tiling: TilingSpec
    blocks: tuple[Block, ...]
    inference: InferenceOptions
    pixel_size_m: tuple[float, float]
    min_area_m2: float = 0.0
    simplify_px: float = 0.0
    probabilities: bool = False
    centerlines: tuple[str, ...] = ()
    prune_m: float = 20.0


def scene_roles(
    scene: SceneInfo, *, sensor: str | None, explicit: bool = False
) -> list[str | None]:
    """Band roles of a scene from its descriptions, colour interpretation and ``sensor``.

    With ``explicit`` band numbers (``--bands``) the user has said which bands feed the
    model, so a sensor preset that cannot place the scene's unnamed bands is no error.
    """
    try:
        return band_roles(scene.descriptions, colorinterp=scene.colorinterp, sensor=sensor)
    except BandError:
        if not explicit:
            raise
        return band_roles(scene.descriptions, colorinterp=scene.colorinterp)


def _resolve_models(
    config: RunConfig, *, scene: SceneInfo, roles: Sequence[str | None], resolution_m: float
) -> list[tuple[str, ModelCard]]:
    """The models of a run: those given, then the default model of every class they lack.

    A default is passed over when the scene's values are not in its training data's units;
    a given model in that case gets a warning (the user chose it).
    """
    from geoseg.models.card import read_card
    from geoseg.models.defaults import default_sources, units_misfit

    count = scene.count
    medians: dict[tuple[int, ...], np.ndarray | None] = {}

    def misfit(card: ModelCard) -> str | None:
        if card.architecture == "spectral":
            return None
        try:
            bands = resolve_bands(card.bands, count=count, roles=roles, explicit=config.bands)
        except BandError:
            return None  # reported with the fix when the run is planned
        if bands not in medians:
            medians[bands] = sample_band_medians(
                scene.path, bands, height=scene.height, width=scene.width
            )
        return units_misfit(card, medians[bands])

    def load(src: str) -> tuple[str, ModelCard]:
        if is_spectral(src):
            return src, spectral_card(src)
        return str(Path(src).resolve()), read_card(src)

    given = [load(src) for src in config.models]
    for _, card in given:
        if why := misfit(card):
            log.warning("model %r may not suit %s: %s", card.name, scene.path, why)
    covered = {c for _, card in given for c in card.class_names[1:]}
    missing = [c for c in config.classes if c not in covered]
    if missing and config.models and config.bands is not None:
        raise ConfigError(
            f"--bands maps scene bands onto the given model, but class {missing[0]!r} would "
            "need a default model too; give a model for every class or drop --bands"
        )
    try:
        defaults = (
            default_sources(
                missing, roles=roles, count=count, resolution_m=resolution_m, value_misfit=misfit
            )
            if missing
            else ()
        )
    except ClassNotAvailableError as err:
        if not given:
            raise
        offered = sorted(covered)
        raise ClassNotAvailableError(
            f"class {missing[0]!r} is not produced by the selected model(s) (available: "
            f"{', '.join(offered)}) and has no default model; pass a model that has it"
        ) from err
    return given + [load(src) for src in defaults if src not in config.models]


UNRELIABLE_IOU = 0.1
"""A class a model's card says it segments with a held-out IoU below this gets a warning."""


def validated_iou(card: ModelCard, name: str) -> float | None:
    """The held-out IoU of class ``name`` recorded in ``card``'s training summary, if any."""
    classes = (card.training.get("validation") or {}).get("classes") or {}
    iou = (classes.get(name) or {}).get("iou")
    return float(iou) if isinstance(iou, int | float) else None


def plan_run(scene_path: str | os.PathLike[str], config: RunConfig) -> RunPlan:
    """Validate a run and plan its blocks, reading only headers.

    Raises
    ------
    SceneReadError, ModelCardError, BandError, ClassNotAvailableError, ConfigError
        With one line saying what is wrong and how to fix it.
    """
    scene = read_scene_info(scene_path)
    if scene.crs is None:
        log.warning(
            "%s has no CRS: polygons will be in its pixel grid units and area_m2 in those "
            "units squared; assign a CRS (gdal_edit.py -a_srs) to georeference the output",
            scene.path,
        )
    roles = scene_roles(scene, sensor=config.sensor, explicit=config.bands is not None)
    # One pixel size for the whole scene (at its centre), so every block smooths alike.
    dx, dy = pixel_size_m(scene.transform, crs=scene.crs, row=scene.height / 2, col=scene.width / 2)
    if config.bands is not None and not config.models:
        raise ConfigError(
            "--bands maps scene bands onto one model's inputs: give that model with --model, "
            "or name the scene's bands with --sensor so the default models can pick theirs"
        )
    models = _resolve_models(config, scene=scene, roles=roles, resolution_m=(dx + dy) / 2)
    overrides = parse_overrides(config.smooth_params)
    strays = sorted(override_classes(overrides) - {c.lower() for c in config.classes})
    if strays:
        raise ConfigError(
            f"smoothing parameters name class {strays[0]!r}, which this run does not extract "
            f"(classes: {', '.join(config.classes)}); check the spelling or drop the prefix "
            "to set a parameter for every class"
        )
    recipes: list[SmoothingRecipe] = []
    remaining = list(config.classes)
    uses: list[ModelUse] = []
    for source, card in models:
        outputs = tuple((c, card.class_index(c)) for c in remaining if c in card.class_names[1:])
        if not outputs:
            continue
        remaining = [c for c in remaining if c not in dict(outputs)]
        for c, _ in outputs:
            if (iou := validated_iou(card, c)) is not None and iou < UNRELIABLE_IOU:
                log.warning(
                    "model %r scored %s IoU %.2f on its held-out data (its card): expect its "
                    "%s polygons to be mostly wrong; pass a model that validates for %s",
                    card.name, c, iou, c, c,
                )  # fmt: skip
        bands = resolve_bands(
            card.bands,
            count=scene.count,
            roles=roles,
            explicit=config.bands,
            model_name=f"model {card.name!r}",
        )
        # Built-in spectral methods have their own default recipes (no CRF).
        spectral = card.architecture == "spectral"
        own = {c: recipe_for(c, config.smooth, overrides, spectral=spectral) for c, _ in outputs}
        recipes.extend(own.values())
        uses.append(
            ModelUse(
                source=source,
                card=card,
                bands=bands,
                outputs=outputs,
                recipes=own,
                tile=config.inference.tile or card.tile_size,
                overlap=card.overlap
                if config.inference.overlap is None
                else config.inference.overlap,
            )
        )
    if remaining:
        offered = sorted({c for _, card in models for c in card.class_names[1:]})
        raise ClassNotAvailableError(
            f"class {remaining[0]!r} is not produced by the selected model(s); "
            f"available: {', '.join(offered)}"
        )
    colors = {c: u.card.classes[idx].color for u in uses for c, idx in u.outputs}
    tile = max(u.tile for u in uses)
    overlap = max(u.overlap for u in uses)
    halo = max(overlap, smoothing_halo_px(recipes, pixel_size_m=(dx, dy)))
    lines = tuple(c for c in config.classes if c in LINE_CLASSES) if config.centerlines else ()
    if lines:
        # The road mask must be final over core + centreline halo before skeletonizing.
        halo += centerline_halo_px(
            prune_m=config.prune_m, pixel_size_m=(dx, dy), max_road_width_m=MAX_ROAD_WIDTH_M
        )
    spec = TilingSpec(tile=tile, overlap=overlap, block=max(config.block, tile), halo=halo)
    blocks = tuple(plan_blocks(scene.height, scene.width, spec=spec))
    return RunPlan(
        scene=scene,
        models=tuple(uses),
        classes=config.classes,
        colors=tuple(colors[c] for c in config.classes),
        tiling=spec,
        blocks=blocks,
        inference=config.inference,
        pixel_size_m=(dx, dy),
        min_area_m2=config.min_area_m2,
        simplify_px=config.simplify_m / ((dx + dy) / 2) if config.simplify_m else 0.0,
        probabilities=config.probabilities,
        centerlines=lines,
        prune_m=config.prune_m,
    )
