"""Smoothing recipes: which refinement each class gets, its defaults, overrides and halo.

A recipe is a method (``none``, ``morph``, ``crf``, ``crf+morph``, ``gridcrf``,
``gridcrf+morph``) plus the parameters of the morphology (:class:`MorphRecipe`, metres), of
the dense CRF (:class:`CRFParams`) and of the grid CRF (:class:`GridCRFParams`).
:func:`recipe_for` builds one from a class's default (which depends on whether a trained
model or a built-in spectral index gives the class), an optional method and ``key=value``
overrides (CLI ``--smooth-param``, workflow files), for every class or, with a class
prefix (``water.min_object_area_m2=500``), for one; :func:`halo_px` says how much block
halo the recipe needs so that block-wise smoothing reproduces the whole scene.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from geoseg.errors import ConfigError
from geoseg.postprocess.crf import CRFParams, crf_halo_px
from geoseg.postprocess.gridcrf import GridCRFParams, gridcrf_halo_px
from geoseg.postprocess.morphology import MorphRecipe, morph_halo_px

__all__ = [
    "DEFAULT_RECIPES",
    "FALLBACK_RECIPE",
    "METHODS",
    "CRFParams",
    "GridCRFParams",
    "MorphRecipe",
    "SmoothingRecipe",
    "halo_px",
    "override_classes",
    "override_keys",
    "parse_overrides",
    "recipe_for",
]

METHODS = ("none", "morph", "crf", "crf+morph", "gridcrf", "gridcrf+morph")
"""Valid smoothing methods; ``crf+morph`` runs the dense CRF, then morphology on its labels;
``gridcrf`` is the 4/8-connected grid CRF (:mod:`geoseg.postprocess.gridcrf`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SmoothingRecipe:
    """How one class is smoothed.

    Parameters
    ----------
    method
        One of :data:`METHODS`.
    morph
        Morphology parameters, used by ``morph`` and ``crf+morph``.
    crf
        Dense-CRF parameters, used by ``crf`` and ``crf+morph``.
    gridcrf
        Grid-CRF parameters, used by ``gridcrf`` and ``gridcrf+morph``.
    """

    method: str
    morph: MorphRecipe = field(default_factory=MorphRecipe)
    crf: CRFParams = field(default_factory=CRFParams)
    gridcrf: GridCRFParams = field(default_factory=GridCRFParams)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"smoothing method {self.method!r} is not known; choose one of {', '.join(METHODS)}"
            )
        if not isinstance(self.morph, MorphRecipe):
            raise ConfigError(f"morph must be a MorphRecipe, got {type(self.morph).__name__}")
        if not isinstance(self.crf, CRFParams):
            raise ConfigError(f"crf must be a CRFParams, got {type(self.crf).__name__}")
        if not isinstance(self.gridcrf, GridCRFParams):
            raise ConfigError(f"gridcrf must be a GridCRFParams, got {type(self.gridcrf).__name__}")

    @property
    def uses_crf(self) -> bool:
        """True for ``crf`` and ``crf+morph``."""
        return self.method in ("crf", "crf+morph")

    @property
    def uses_gridcrf(self) -> bool:
        """True for ``gridcrf`` and ``gridcrf+morph``."""
        return self.method in ("gridcrf", "gridcrf+morph")

    @property
    def uses_morph(self) -> bool:
        """True for ``morph``, ``crf+morph`` and ``gridcrf+morph`` (unless every morphology
        step is off)."""
        return self.method in ("morph", "crf+morph", "gridcrf+morph") and not self.morph.is_noop


# Per-class defaults. Water and crops are mapped from 10-30 m imagery (Sentinel-2 10/20 m,
# Landsat 30 m), roads from ~1 m aerial imagery; sizes are in metres, so at other
# resolutions they keep their ground meaning (a step under one pixel becomes a no-op).
DEFAULT_RECIPES: Mapping[str, SmoothingRecipe] = MappingProxyType(
    {
        # Water: big, spectrally distinct bodies whose shoreline contrast (NIR/SWIR) is what
        # the bilateral term snaps to, hence the CRF. No opening: rivers and canals one or two
        # pixels wide must survive. Specks below 0.1 ha (10 S2 px, ~1 Landsat px) are mostly
        # shadows and dark roofs; holes below 0.2 ha (20 S2 px) are boats, sun glint, bridges
        # and wave noise, while real islands are larger.
        "water": SmoothingRecipe(
            method="crf+morph",
            morph=MorphRecipe(min_object_area_m2=1000.0, max_hole_area_m2=2000.0),
        ),
        # Roads (1 m): thin, so no opening and no CRF (its smoothness term rounds off
        # structures a few pixels wide, and it would double the cost). The closing runs
        # along the road: line segments in 8 directions bridge gaps up to 10 m (tree
        # crowns, shadows, cars) at the road's full width without widening it. A disk
        # closing would leave a one-pixel neck across such a gap, since it cannot fit inside
        # a 3-7 m road. Side effect: parallel carriageways less than 10 m apart merge into
        # one corridor. Only specks below 30 m² (a few car lengths of stray pixels) are
        # dropped and holes below 20 m² (vehicles, markings) filled; roundabout islands
        # are larger.
        "roads": SmoothingRecipe(
            method="morph",
            morph=MorphRecipe(
                line_close_radius_m=5.0, min_object_area_m2=30.0, max_hole_area_m2=20.0
            ),
        ),
        # Crops: one polygon per field. A 5 m opening cuts the necks a few pixels wide that
        # join neighbouring fields across a gap in the predicted boundary at 1 m, and removes
        # slivers along field edges, without eating into narrow strips (a 15 m opening takes
        # every strip under 30 m wide); at 10 m and coarser it is a no-op. Fields under
        # 0.1 ha (the usual LPIS minimum, 10 px at 10 m) are dropped. No hole filling: with a
        # field-boundary model a hole is often a farmstead or tree patch ringed by predicted
        # boundary, and filling it makes a spurious "field" inside the ring. Measured on the
        # 5 validation images of workflows/train/crops.yaml (crops-fields-naip, 162 fields;
        # workflows/train/crops_recipe.py): field F1 (IoU >= 0.5) / cropland IoU 0.676 / 0.900
        # with this recipe, 0.662 / 0.862 with the previous one (open 15 m, min 0.25 ha, holes
        # < 0.1 ha filled), 0.639 / 0.904 without opening, 0.191 / 0.902 unsmoothed (speckle).
        # Morphology only: field edges are rarely sharp enough in 10 m imagery for the CRF.
        "crops": SmoothingRecipe(
            method="morph",
            morph=MorphRecipe(open_radius_m=5.0, min_object_area_m2=1000.0),
        ),
    }
)

FALLBACK_RECIPE = SmoothingRecipe(method="none")
"""Classes without a default are left as the model gives them unless the user asks."""

# Built-in spectral methods (``ndwi``, ``mndwi``, ``ndvi``) get no CRF by default: their
# "probability" is a fixed logistic of the index, and the colour term sees the very bands
# the index is made of, so the CRF has little to add. Measured (water IoU through the real
# pipeline; NDWI > 0.35): Landsat 7 held-out region none 0.723, morph 0.728, crf+morph 0.733;
# Sentinel-2 Beaufort labelled polygons 0.097, 0.097, 0.091 (0.729, 0.729, 0.680 against
# the dry land classes only). A trained model's water gains from it (0.683 -> 0.743).
_SPECTRAL_METHOD = {"crf+morph": "morph", "crf": "none"}

_MORPH_KEYS = tuple(f.name for f in dataclasses.fields(MorphRecipe))
_CRF_KEYS = tuple(f"crf.{f.name}" for f in dataclasses.fields(CRFParams))
_GRIDCRF_KEYS = tuple(f"gridcrf.{f.name}" for f in dataclasses.fields(GridCRFParams))
_INT_KEYS = frozenset(
    {
        "crf.iterations",
        "crf.bilateral_downsample",
        "gridcrf.iterations",
        "gridcrf.icm_sweeps",
        "gridcrf.connectivity",
    }
)


def override_keys() -> tuple[str, ...]:
    """Every key :func:`parse_overrides` and :func:`recipe_for` accept (each may also carry
    a class prefix, ``water.min_object_area_m2``)."""
    return _MORPH_KEYS + tuple(f"morph.{k}" for k in _MORPH_KEYS) + _CRF_KEYS + _GRIDCRF_KEYS


def _param_key(key: str) -> str | None:
    """A recipe parameter in canonical form (``morph.`` dropped), None if not one."""
    key = key.removeprefix("morph.")
    return key if key in _MORPH_KEYS or key in _CRF_KEYS or key in _GRIDCRF_KEYS else None


def _canonical_key(key: str) -> str:
    """``water.morph.open_radius_m`` -> ``water.open_radius_m``; unscoped keys stay so."""
    key = key.strip()
    param = _param_key(key)
    if param is not None:
        return param
    cls, sep, rest = key.partition(".")
    param = _param_key(rest.strip()) if sep and cls.strip() else None
    if param is None:
        raise ConfigError(
            f"unknown smoothing parameter {key!r}; valid keys: {', '.join(override_keys())}, "
            "each optionally for one class (water.min_object_area_m2)"
        )
    return f"{cls.strip().lower()}.{param}"


def _split_key(key: str) -> tuple[str | None, str]:
    """``(class or None, parameter)`` of a canonical key."""
    if _param_key(key) is not None:
        return None, key
    cls, _, param = key.partition(".")
    return cls, param


def override_classes(overrides: Mapping[str, float]) -> set[str]:
    """The classes that class-prefixed overrides name (lower case)."""
    return {cls for key in overrides if (cls := _split_key(_canonical_key(key))[0]) is not None}


def parse_overrides(items: Sequence[str]) -> dict[str, float]:
    """Parse ``key=value`` strings into smoothing overrides.

    Each item holds one or more comma-separated ``key=value`` pairs; later pairs win.
    Morphology keys may carry a ``morph.`` prefix; CRF keys need ``crf.`` (dense) or
    ``gridcrf.`` (grid). A class name in
    front (``water.min_object_area_m2``, ``water.crf.iterations``) limits a pair to that
    class; without one it applies to every class, and a class's own value wins.

    Examples
    --------
    >>> parse_overrides(["min_object_area_m2=500", "crf.iterations=3"])
    {'min_object_area_m2': 500.0, 'crf.iterations': 3.0}
    >>> parse_overrides(["Water.morph.max_hole_area_m2=0"])
    {'water.max_hole_area_m2': 0.0}

    Raises
    ------
    ConfigError
        On a missing ``=``, an unknown key (the message lists the valid ones) or a value
        that is not a finite number.
    """
    if isinstance(items, str):
        items = [items]
    out: dict[str, float] = {}
    for item in items:
        for pair in str(item).split(","):
            if not pair.strip():
                continue
            key, sep, text = pair.partition("=")
            if not sep or not key.strip() or not text.strip():
                raise ConfigError(
                    f"smoothing parameter {pair.strip()!r} is not key=value, "
                    "e.g. min_object_area_m2=500"
                )
            name = _canonical_key(key)
            try:
                value = float(text)
            except ValueError as err:
                raise ConfigError(
                    f"smoothing parameter {name}={text.strip()!r} is not a number"
                ) from err
            if not math.isfinite(value):
                raise ConfigError(f"smoothing parameter {name}={text.strip()} must be finite")
            out[name] = value
    return out


def recipe_for(
    class_name: str,
    method: str | None = None,
    overrides: Mapping[str, float] | None = None,
    *,
    spectral: bool = False,
) -> SmoothingRecipe:
    """The smoothing recipe of a class: its default, a method choice, then overrides.

    Parameters
    ----------
    class_name
        Class name from the model card; matched case-insensitively against
        :data:`DEFAULT_RECIPES`, unknown names start from :data:`FALLBACK_RECIPE`.
    method
        One of :data:`METHODS`, or None for the class's default method.
    overrides
        ``{key: value}`` as from :func:`parse_overrides`, e.g. ``{"open_radius_m": 2.0,
        "water.crf.iterations": 10}``. Unprefixed keys apply to every class, prefixed ones
        to their class only and win over unprefixed ones. They change parameters only:
        choosing the method is ``method``'s job, so setting ``open_radius_m`` with
        ``method="crf"`` has no effect.
    spectral
        The class comes from a built-in spectral method (``ndwi``): its default method
        then drops the CRF (``crf+morph`` -> ``morph``, ``crf`` -> ``none``).

    Raises
    ------
    ConfigError
        On an unknown method or key (both list the valid ones) or an invalid value.
    """
    name = class_name.strip().lower()
    base = DEFAULT_RECIPES.get(name, FALLBACK_RECIPE)
    if spectral:
        base = dataclasses.replace(base, method=_SPECTRAL_METHOD.get(base.method, base.method))
    if method is not None and method not in METHODS:
        raise ConfigError(
            f"smoothing method {method!r} is not known; choose one of {', '.join(METHODS)}"
        )
    every: list[tuple[str, str, float]] = []  # (key as the user wrote it, parameter, value)
    own: list[tuple[str, str, float]] = []
    for raw_key, value in (overrides or {}).items():
        cls, key = _split_key(_canonical_key(raw_key))
        if cls is None:
            every.append((key, key, value))
        elif cls == name:
            own.append((f"{cls}.{key}", key, value))
    morph_changes: dict[str, float] = {}
    crf_changes: dict[str, Any] = {}  # float or int, per field
    gridcrf_changes: dict[str, Any] = {}
    for shown, key, value in every + own:  # the class's own values last: they win
        group, _, name = key.partition(".")
        changes = {"crf": crf_changes, "gridcrf": gridcrf_changes}.get(group)
        if changes is None:
            morph_changes[key] = float(value)
        elif key in _INT_KEYS:
            if not float(value).is_integer():
                raise ConfigError(f"smoothing parameter {shown}={value} must be a whole number")
            changes[name] = int(value)
        else:
            changes[name] = float(value)
    return SmoothingRecipe(
        method=base.method if method is None else method,
        morph=dataclasses.replace(base.morph, **morph_changes),
        crf=dataclasses.replace(base.crf, **crf_changes),
        gridcrf=dataclasses.replace(base.gridcrf, **gridcrf_changes),
    )


def halo_px(recipe: SmoothingRecipe, *, pixel_size_m: tuple[float, float]) -> int:
    """Pixels of halo this recipe needs on each side of a block.

    Block-wise smoothing then cropped agrees with whole-scene smoothing on >= 99.9 % of
    pixels (exactly for morphology, up to the area-filter cap explained in
    :func:`~geoseg.postprocess.morphology.morph_halo_px`). The CRF runs first and the
    morphology works on its labels, so ``crf+morph`` needs the sum of both. The pipeline
    takes the maximum of this (over all smoothed classes) and the tile overlap. The grid
    CRF's halo makes the block-wise result exact (:func:`gridcrf_halo_px`).
    """
    halo = 0
    if recipe.uses_crf:
        halo += crf_halo_px(recipe.crf, pixel_size_m=pixel_size_m)
    if recipe.uses_gridcrf:
        halo += gridcrf_halo_px(recipe.gridcrf)
    if recipe.uses_morph:
        halo += morph_halo_px(recipe.morph, pixel_size_m=pixel_size_m)
    return halo
