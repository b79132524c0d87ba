"""Planning a run: validate everything before any pixel is read, then cut the blocks.

:func:`plan_run` reads only headers (scene, model cards) and fails with one clear line on
a missing file, a non-raster, a class no model provides, too few bands or a bad option.
:func:`prepare_spectral` makes the one streamed pass spectral methods need (Otsu
threshold, band statistics) before blocks are processed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoseg.config import InferenceOptions, RunConfig
from geoseg.errors import BandError, ClassNotAvailableError, ConfigError
from geoseg.models.bands import band_roles, preset_scaling, resolve_bands
from geoseg.models.card import ModelCard
from geoseg.models.normalisation import input_scaling
from geoseg.models.spectral import (
    is_spectral,
    spectral_card,
)
from geoseg.models.splitmerge import splitmerge_halo_px
from geoseg.postprocess import (
    SmoothingRecipe,
    override_classes,
    parse_overrides,
    recipe_for,
    smoothing_halo_px,
)
from geoseg.tiling.grid import Block, TilingSpec, plan_blocks
from geoseg.tiling.io import SceneInfo, read_scene_info, sample_band_medians
from geoseg.tiling.resample import ModelGrid, model_grid
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
    ``tile`` and ``overlap`` are the model's tile plan for this run, in its own pixels: the
    card's, unless the user set them (resolved here once; the predictor is given them).
    ``grid`` is the model's pixel grid over the scene when the model reads the scene at its
    card's pixel size rather than the scene's (``None``: the scene's own pixels).
    """

    source: str
    card: ModelCard
    bands: tuple[int, ...]
    outputs: tuple[tuple[str, int], ...]
    tile: int
    overlap: int
    grid: ModelGrid | None = None
    # Per band (scale, offset) turning stored values into the model's units (None: as stored).
    scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """The requested classes this model gives."""
        return tuple(name for name, _ in self.outputs)

    @property
    def stride(self) -> int:
        """Pixels (the model's) between neighbouring tile origins."""
        return self.tile - self.overlap

    @property
    def scene_px(self) -> float:
        """Scene pixels per model pixel (the larger of the two axes)."""
        if self.grid is None:
            return 1.0
        return max(self.grid.row_factor, self.grid.col_factor)

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
    uncertainty: bool = False
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
    from geoseg.models.onnx_card import is_onnx

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
        values = medians[bands]
        scaling = _input_scaling(card, scene, bands, sensor=config.sensor)
        if scaling is not None and values is not None:
            values = values * np.asarray(scaling[0]) + np.asarray(scaling[1])
        return units_misfit(card, values)

    def load(src: str) -> tuple[str, ModelCard]:
        if is_spectral(src):
            return src, spectral_card(src)
        if is_onnx(src):  # fail here, once, when the optional extra is missing
            from geoseg.models.onnx import require_onnx

            require_onnx()
        return str(Path(src).resolve()), read_card(src)

    given = [load(src) for src in config.models]
    for _, card in given:
        # A model the user named that gives no requested class is an error, never silently
        # replaced by a default model.
        gives = card.class_names[1:]
        if not set(gives) & set(config.classes):
            raise ClassNotAvailableError(
                f"model {card.name!r} gives {', '.join(gives)}, not "
                f"{', '.join(config.classes)}; drop it or ask for its classes "
                f"(--classes {','.join(gives[:3])})"
            )
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


def _input_scaling(
    card: ModelCard, scene: SceneInfo, bands: Sequence[int], *, sensor: str | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """How the model's bands' stored values become its units (its card's reflectance scale,
    from the file's scale/offset metadata or else the sensor preset's); ``None``: as stored."""
    if card.reflectance_scale is None:
        return None
    return input_scaling(
        card.reflectance_scale,
        bands,
        file_scales=scene.scales,
        file_offsets=scene.offsets,
        preset=preset_scaling(sensor, scene.descriptions),
    )


def _model_grid(scene: SceneInfo, card: ModelCard, *, pixel_size_m: float) -> ModelGrid | None:
    """The grid ``card``'s model reads ``scene`` on (``None``: the scene's own pixels).

    Without a CRS the scene's pixel size in metres is unknown, so the model reads the
    scene's pixels as they are.
    """
    if scene.crs is None or card.architecture == "spectral":
        return None
    try:
        return model_grid(
            scene_height=scene.height,
            scene_width=scene.width,
            scene_pixel_m=pixel_size_m,
            model_pixel_m=card.resolution_m,
        )
    except ConfigError as err:
        raise ConfigError(f"model {card.name!r}: {err}") from err


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
    roles = scene_roles(scene, sensor=config.sensor, explicit=config.bands is not None)
    # One pixel size for the whole scene (at its centre), so every block smooths alike.
    dx, dy = pixel_size_m(scene.transform, crs=scene.crs, row=scene.height / 2, col=scene.width / 2)
    if config.bands is not None and not config.models:
        raise ConfigError(
            "--bands maps scene bands onto one model's inputs: give that model with --model, "
            "or name the scene's bands with --sensor so the default models can pick theirs"
        )
    models = _resolve_models(config, scene=scene, roles=roles, resolution_m=(dx + dy) / 2)
    # The models the user named (as _resolve_models resolves them): never dropped silently.
    named = {src for src, _ in models[: len(config.models)]}
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
            if source in named:
                log.warning(
                    "model %r gives %s, which an earlier model already gives; it is not used",
                    card.name, ", ".join(c for c in card.class_names[1:] if c in config.classes),
                )  # fmt: skip
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
                grid=_model_grid(scene, card, pixel_size_m=(dx + dy) / 2),
                scaling=_input_scaling(card, scene, bands, sensor=config.sensor),
            )
        )
    if remaining:
        offered = sorted({c for _, card in models for c in card.class_names[1:]})
        raise ClassNotAvailableError(
            f"class {remaining[0]!r} is not produced by the selected model(s); "
            f"available: {', '.join(offered)}"
        )
    colors = {c: u.card.classes[idx].color for u in uses for c, idx in u.outputs}
    # The block's tiling in scene pixels: a model reading coarser pixels needs its tile and
    # overlap scaled up, so its tiles at a block's edge still have their context.
    # (The block tiling's tile only sizes blocks: a multiple of 32 like any tile.)
    tile = max(32 * math.ceil(u.tile * u.scene_px / 32) for u in uses)
    overlap = max(math.ceil(u.overlap * u.scene_px) for u in uses)
    lines = tuple(c for c in config.classes if c in LINE_CLASSES) if config.centerlines else ()
    halo = _halo_px(
        scene,
        config,
        recipes=recipes,
        lines=lines,
        pixel_size=(dx, dy),
        overlap=overlap,
        block=max(config.block, tile),
    )
    # Split-and-merge needs every quadtree root its block core touches.
    halo = max([halo, *(splitmerge_halo_px(u.card) for u in uses)])
    if scene.crs is None:  # told once the plan stands (a refused run says why instead)
        log.warning(
            "%s has no CRS: polygons will be in its pixel grid units and area_m2 in those "
            "units squared (metric parameters take a unit as a metre); assign a CRS "
            "(gdal_edit.py -a_srs) to georeference the output",
            scene.path,
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
        uncertainty=config.uncertainty,
        centerlines=lines,
        prune_m=config.prune_m,
    )


NO_CRS_MIN_PIXEL = 0.01
"""Below this pixel size a scene without a CRS is taken to be in degrees (or another unit
that is not a metre): no Earth-observation pixel is under 1 cm, and a degree-based one up
to 1 km is under 0.01."""


def _halo_px(
    scene: SceneInfo,
    config: RunConfig,
    *,
    recipes: Sequence[SmoothingRecipe],
    lines: tuple[str, ...],
    pixel_size: tuple[float, float],
    overlap: int,
    block: int,
) -> int:
    """Pixels read around each block core: tile overlap, smoothing and centreline reach.

    Metric parameters (smoothing radii and areas, ``--min-area``, ``--simplify``,
    centreline ``--prune``) become pixels through the scene's pixel size. Without a CRS
    that size is in the transform's units, taken as metres; when it is too small to be
    metres (degrees) they have no meaning and are refused. In every case the halo is at most
    the block size: a parameter can make the work per block at most 9 times the core's,
    never a multi-gigabyte read.

    Raises
    ------
    ConfigError
        Naming the parameter and the way out.
    """
    dx, dy = pixel_size
    px = min(dx, dy)
    smoothed = [r for r in recipes if r.method != "none"]
    if scene.crs is None and px < NO_CRS_MIN_PIXEL:
        metric = [
            name
            for name, used in (
                ("smoothing", bool(smoothed)),
                ("--min-area", config.min_area_m2 > 0),
                ("--simplify", config.simplify_m > 0),
                ("road centrelines (--prune)", bool(lines)),
            )
            if used
        ]
        if metric:
            way_out = " ".join(
                flag
                for flag, used in (
                    ("--smooth none", bool(smoothed)),
                    ("--no-centerlines", bool(lines)),
                    ("--min-area 0", config.min_area_m2 > 0),
                    ("--simplify 0", config.simplify_m > 0),
                )
                if used
            )
            raise ConfigError(
                f"{Path(scene.path).name} has no CRS and its pixels are {dx:.3g} x {dy:.3g} "
                f"units, too small to be metres (degrees?): {', '.join(metric)} in metres "
                "cannot be turned into pixels; assign the scene's CRS (gdal_edit.py -a_srs "
                f"EPSG:4326 {Path(scene.path).name}) or pass {way_out}"
            )
    fix = "raise --block (at most 8192) or lower it"
    for recipe in smoothed:
        # Checked one by one before any footprint is built: a 100 km radius would otherwise
        # allocate its structuring element before the halo could be compared with anything.
        for f in dataclasses.fields(recipe.morph):
            value = getattr(recipe.morph, f.name)
            if not isinstance(value, int | float) or value <= 0:
                continue
            reach = value / px if f.name.endswith("_m") else math.sqrt(value) / px
            if f.name.endswith(("_m", "_m2")) and reach > block:
                raise ConfigError(
                    f"smoothing parameter {f.name}={value:g} spans {reach:.0f} pixels at "
                    f"{px:.3g} m per pixel, more than the block ({block} px); {fix} "
                    "(--smooth-param), or pass --smooth none"
                )
    halo = max(overlap, smoothing_halo_px(recipes, pixel_size_m=(dx, dy)))
    if lines:
        # The road mask must be final over core + centreline halo before skeletonizing.
        halo += centerline_halo_px(
            prune_m=config.prune_m, pixel_size_m=(dx, dy), max_road_width_m=MAX_ROAD_WIDTH_M
        )
    if halo > block:
        raise ConfigError(
            f"{'smoothing and centrelines need' if lines else 'smoothing needs'} a halo of "
            f"{halo} pixels "
            f"around each block at {px:.3g} m per pixel, more than the block itself "
            f"({block} px); {fix}: --smooth-param, --prune, or --smooth none"
            + (" / --no-centerlines" if lines else "")
        )
    return halo
