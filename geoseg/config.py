"""Run configuration: what the user asked ``geoseg run`` to do, validated once.

:func:`run_config` is the one place a :class:`RunConfig` is built from the values a user
gives, on the command line (``geoseg run``) or in a workflow file (``geoseg batch``);
:data:`RUN_OPTIONS` names each value's command-line option and workflow key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from geoseg.errors import ConfigError

__all__ = [
    "DEVICES",
    "MAX_BLOCK",
    "PRECISIONS",
    "RUN_OPTIONS",
    "TTA_MODES",
    "InferenceOptions",
    "RunConfig",
    "parse_band_list",
    "parse_class_list",
    "run_config",
]

_CLASS = re.compile(r"^[A-Za-z0-9_\-]+$")


def parse_class_list(text: str) -> tuple[str, ...]:
    """``"water, roads"`` -> ``("water", "roads")``; rejects empty and repeated names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ConfigError("no classes given; e.g. --classes water,roads")
    bad = [n for n in names if not _CLASS.match(n)]
    if bad:
        raise ConfigError(f"class name {bad[0]!r} may only hold letters, digits, '_' and '-'")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"class {dupes[0]!r} is listed twice")
    return names


def parse_band_list(text: str) -> tuple[int, ...]:
    """``"4,3,2"`` -> ``(4, 3, 2)`` (1-based band numbers)."""
    try:
        bands = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(
            f"--bands {text!r} must be comma-separated band numbers, e.g. 4,3,2"
        ) from None
    if not bands or any(b < 1 for b in bands):
        raise ConfigError(f"--bands {text!r}: band numbers start at 1")
    return bands


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Test-time augmentation: none, the four flips (identity, horizontal, vertical, both), or the
# eight symmetries of the square (D4: four rotations, each also mirrored). "auto": the model
# card's recommendation (its training record's "tta"), else none.
TTA_MODES = ("auto", "none", "flips", "d4")


DEVICES = ("auto", "cpu", "cuda")

MAX_BLOCK = 8192
"""Largest block core and model tile (pixels). A block reads its core plus a halo of at most
the block size on each side (:func:`geoseg.run.plan.plan_run`), so no option can make one
block's memory grow past what a core of this size needs."""


@dataclass(frozen=True, kw_only=True, slots=True)
class InferenceOptions:
    """How to run a model.

    Parameters
    ----------
    device
        ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    precision
        ``auto`` (bf16 on capable CPUs, fp16 on CUDA), ``fp32``, ``bf16`` or ``fp16``.
    batch_size
        Tiles per forward pass; 0 picks a size for the device.
    threads
        torch intra-op threads on CPU; 0 leaves torch's default.
    concurrent_batches
        CPU: forward passes run at once, sharing ``threads`` (each pass gets
        ``threads // concurrent_batches``). A GPU always runs one at a time.
    tile, overlap
        Override the card's tile plan; ``None`` uses the card.
    tta
        Test-time augmentation (:data:`TTA_MODES`): each tile is also predicted flipped (and
        rotated), and the probabilities, transformed back, are averaged.
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 0
    threads: int = 0
    concurrent_batches: int = 1
    tile: int | None = None
    overlap: int | None = None
    tta: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            raise ConfigError(
                f"device {self.device!r} is not one of {', '.join(DEVICES)} or 'cuda:N'"
            )
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta {self.tta!r} is not one of {', '.join(TTA_MODES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.batch_size < 0 or self.threads < 0:
            raise ConfigError("batch size and threads must be >= 0 (0 = automatic)")
        if self.concurrent_batches < 1:
            raise ConfigError(f"concurrent batches {self.concurrent_batches} must be >= 1")
        if self.tile is not None and (self.tile < 32 or self.tile % 32):
            # The words of TilingSpec's check; 0 must not mean "the card's" (None does).
            raise ConfigError(
                f"tile size {self.tile} is not a positive multiple of 32; "
                f"try {max(32, round(self.tile / 32) * 32)}"
            )
        if self.tile is not None and self.tile > MAX_BLOCK:
            raise ConfigError(f"tile size {self.tile} is too large; use at most {MAX_BLOCK}")
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(
                f"--overlap {self.overlap} must be >= 0; leave it out to use the model card's"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """Everything ``geoseg run`` needs besides the scene and output paths.

    Parameters
    ----------
    classes
        Classes to extract, in priority order (the first wins where models disagree).
    models
        Model files (or built-in method names). Empty: the default model of each class.
    bands
        Explicit 1-based scene band numbers for the model (single-model runs).
    sensor
        Sensor preset naming the scene's bands (``sentinel2``, ``landsat8`` ...).
    block
        Target block core size in pixels (the unit of Dask work and of memory).
    inference
        Device, precision, batch size, tile overrides.
    smooth
        Smoothing method for every class, or ``None`` for each class's default recipe.
    smooth_params
        ``key=value`` overrides of the smoothing recipes.
    min_area_m2
        Drop polygons smaller than this many square metres.
    simplify_m
        Topology-preserving simplification tolerance in metres (0 keeps pixel edges).
    raster
        Also write the class raster (Cloud Optimized GeoTIFF) next to the GeoPackage.
    probabilities
        Also write per-class probabilities (uint8 COG, ``value / 254``).
    uncertainty
        Also write how unsure the model was per pixel: the entropy of its blended class
        probabilities over the log of its class count, 0 (sure) to 1 (all classes alike),
        stored like the probabilities (uint8 COG, ``value / 254``).
    cog
        Write rasters as Cloud Optimized GeoTIFFs (else plain tiled GeoTIFFs).
    dst_crs
        Reproject the vector layers to this CRS (``EPSG:xxxx``); rasters stay on the scene grid.
    centerlines
        Also write a ``roads_centerlines`` line layer when roads are extracted.
    prune_m
        Centreline spurs (dead-end branches) shorter than this are removed.
    overwrite
        Replace existing outputs.
    """

    classes: tuple[str, ...]
    models: tuple[str, ...] = ()
    bands: tuple[int, ...] | None = None
    sensor: str | None = None
    block: int = 2048
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    smooth: str | None = None
    smooth_params: tuple[str, ...] = ()
    min_area_m2: float = 0.0
    simplify_m: float = 0.0
    raster: bool = True
    probabilities: bool = False
    uncertainty: bool = False
    cog: bool = True
    dst_crs: str | None = None
    centerlines: bool = True
    prune_m: float = 20.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("no classes given; e.g. --classes water,roads")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes {self.classes} contain duplicates")
        if len(self.classes) > 254:
            raise ConfigError(f"{len(self.classes)} classes do not fit a uint8 raster (max 254)")
        if self.block < 64:
            raise ConfigError(
                f"block size {self.block} is too small; use at least 64 (blocks of 1024 or "
                "more keep the halo's repeated work small)"
            )
        if self.block > MAX_BLOCK:
            raise ConfigError(
                f"block size {self.block} is too large; use at most {MAX_BLOCK} (a block is "
                "the unit of memory: 2048, the default, suits most machines)"
            )
        for option, value in (
            ("--min-area", self.min_area_m2),
            ("--simplify", self.simplify_m),
            ("--prune", self.prune_m),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{option} {value} must be a finite number >= 0")
        if self.dst_crs is not None:
            from rasterio.crs import CRS

            try:
                CRS.from_user_input(self.dst_crs)
            except Exception as err:  # CRSError, and ValueError for EPSG:<not a number>
                reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                raise ConfigError(
                    f"--dst-crs {self.dst_crs[:200]!r} is not a CRS (e.g. EPSG:3857): {reason}"
                ) from err
        if self.bands is not None and len(self.models) > 1:
            raise ConfigError("--bands applies to a single model; give one --model with it")


# run_config() keyword -> (`geoseg run` option, workflow file key). One table, so a new run
# option gets its workflow key in the same change (tests check both ways).
RUN_OPTIONS: dict[str, tuple[str, str]] = {
    "classes": ("--classes", "classes"),
    "models": ("--model", "models"),
    "bands": ("--bands", "bands"),
    "sensor": ("--sensor", "sensor"),
    "block": ("--block", "tiling.block"),
    "tile": ("--tile", "tiling.tile"),
    "overlap": ("--overlap", "tiling.overlap"),
    "device": ("--device", "inference.device"),
    "precision": ("--precision", "inference.precision"),
    "batch_size": ("--batch-size", "inference.batch_size"),
    "tta": ("--tta", "inference.tta"),
    "smooth": ("--smooth", "smoothing.method"),
    "smooth_params": ("--smooth-param", "smoothing.params"),
    "min_area_m2": ("--min-area", "min_area_m2"),
    "simplify_m": ("--simplify", "simplify_m"),
    "raster": ("--raster", "output.raster"),
    "probabilities": ("--probabilities", "output.probabilities"),
    "uncertainty": ("--uncertainty", "output.uncertainty"),
    "cog": ("--cog", "output.cog"),
    "dst_crs": ("--dst-crs", "output.crs"),
    "centerlines": ("--centerlines", "output.centerlines"),
    "prune_m": ("--prune", "output.prune_m"),
    "overwrite": ("--overwrite", "output.overwrite"),
}


def run_config(
    *,
    classes: str | Sequence[str],
    models: Sequence[str] = (),
    bands: str | Sequence[int] | None = None,
    sensor: str | None = None,
    block: int = 2048,
    tile: int | None = None,
    overlap: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 0,
    tta: str = "auto",
    smooth: str | None = None,
    smooth_params: Sequence[str] = (),
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    raster: bool = True,
    probabilities: bool = False,
    uncertainty: bool = False,
    cog: bool = True,
    dst_crs: str | None = None,
    centerlines: bool = True,
    prune_m: float = 20.0,
    overwrite: bool = False,
) -> RunConfig:
    """A validated :class:`RunConfig` from user-facing values (see :data:`RUN_OPTIONS`).

    ``classes`` and ``bands`` may be given as the command line spells them (``"water,roads"``,
    ``"4,3,2"``) or as sequences; ``smooth="none"`` is kept as the method ``none``.

    Raises
    ------
    ConfigError
        Naming the bad value and what would be valid.
    """
    names = parse_class_list(classes if isinstance(classes, str) else ",".join(classes))
    if isinstance(bands, str):
        band_numbers: tuple[int, ...] | None = parse_band_list(bands)
    else:
        band_numbers = None if bands is None else tuple(int(b) for b in bands)
    return RunConfig(
        classes=names,
        models=tuple(models),
        bands=band_numbers,
        sensor=sensor,
        block=block,
        inference=InferenceOptions(
            device=device,
            precision=precision,
            batch_size=batch_size,
            tile=tile,
            overlap=overlap,
            tta=tta,
        ),
        smooth=smooth,
        smooth_params=tuple(smooth_params),
        min_area_m2=min_area_m2,
        simplify_m=simplify_m,
        raster=raster,
        probabilities=probabilities,
        uncertainty=uncertainty,
        cog=cog,
        dst_crs=dst_crs,
        centerlines=centerlines,
        prune_m=prune_m,
        overwrite=overwrite,
    )
