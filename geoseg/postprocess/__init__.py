"""Halo-aware smoothing of per-block segmentation output: dense CRF, grid CRF and morphology.

The pipeline calls :func:`smooth_block` once per block and model, on the block's core
plus halo, then crops the core. With a halo of at least :func:`smoothing_halo_px` the
cropped result agrees with smoothing the whole scene at once (>= 99.9 % of pixels).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from geoseg.errors import ConfigError
from geoseg.postprocess.crf import CRFParams, colour_bands, crf_refine
from geoseg.postprocess.gridcrf import GridCRFParams, gridcrf_refine
from geoseg.postprocess.morphology import MorphRecipe, Sides, morph_refine
from geoseg.postprocess.recipes import (
    DEFAULT_RECIPES,
    FALLBACK_RECIPE,
    METHODS,
    SmoothingRecipe,
    halo_px,
    override_classes,
    parse_overrides,
    recipe_for,
)

__all__ = [
    "DEFAULT_RECIPES",
    "FALLBACK_RECIPE",
    "METHODS",
    "NODATA_LABEL",
    "CRFParams",
    "GridCRFParams",
    "MorphRecipe",
    "SmoothingRecipe",
    "argmax_classes",
    "colour_bands",
    "crf_refine",
    "gridcrf_refine",
    "halo_px",
    "morph_refine",
    "override_classes",
    "parse_overrides",
    "recipe_for",
    "smooth_block",
    "smoothing_halo_px",
]

NODATA_LABEL = 255
"""Label of invalid pixels in :func:`smooth_block`'s output."""

_NO_SMOOTHING = SmoothingRecipe(method="none")


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """``np.argmax(probs, axis=0)`` for ``(C, H, W)`` probabilities without NaN, as uint8.

    One pass per class over contiguous planes instead of ``np.argmax``'s strided reduction
    over the first axis, which was the largest non-model cost of a block without smoothing.
    Ties go to the lowest class index, as with ``np.argmax``.
    """
    n_classes = probs.shape[0]
    if n_classes > 256:
        return np.argmax(probs, axis=0)
    labels = np.zeros(probs.shape[1:], dtype=np.uint8)
    if n_classes == 2:
        np.greater(probs[1], probs[0], out=labels, casting="unsafe")
        return labels
    best = probs[0].copy()
    for k in range(1, n_classes):
        wins = probs[k] > best
        labels[wins] = k
        np.maximum(best, probs[k], out=best)
    return labels


def smoothing_halo_px(
    recipes: Iterable[SmoothingRecipe], *, pixel_size_m: tuple[float, float]
) -> int:
    """The largest :func:`halo_px` over the recipes of all classes smoothed together."""
    return max((halo_px(r, pixel_size_m=pixel_size_m) for r in recipes), default=0)


def _joint_crf_params(
    class_names: Sequence[str], per_class: Sequence[SmoothingRecipe]
) -> CRFParams | GridCRFParams | None:
    """The one CRF (dense or grid) that refines all classes of a model, if any asks."""
    pairs = list(zip(class_names[1:], per_class[1:], strict=True))
    dense = {name: r.crf for name, r in pairs if r.uses_crf}
    grid = {name: r.gridcrf for name, r in pairs if r.uses_gridcrf}
    if dense and grid:
        raise ConfigError(
            f"classes {', '.join(sorted(dense))} ask for the dense CRF and "
            f"{', '.join(sorted(grid))} for the grid CRF, but one CRF refines all classes of a "
            "model jointly; choose one (--smooth crf+morph or gridcrf+morph for all)"
        )
    wanted: dict[str, CRFParams | GridCRFParams] = {**dense, **grid}
    if not wanted:
        return None
    params = set(wanted.values())
    if len(params) > 1:
        prefix = "crf" if dense else "gridcrf"
        raise ConfigError(
            f"classes {', '.join(sorted(wanted))} ask for different CRF parameters, but one "
            f"CRF refines all classes of a model jointly; give them the same {prefix}.* "
            "settings"
        )
    return params.pop()


# One dense CRF at a time per process: its lattice is a block's largest transient, and a
# worker's two Dask threads would otherwise build two at once.
_CRF_LOCK = threading.Lock()


def smooth_block(
    probs: np.ndarray,
    *,
    image: np.ndarray,
    valid: np.ndarray,
    class_names: Sequence[str],
    recipes: Mapping[str, SmoothingRecipe],
    pixel_size_m: tuple[float, float],
    image_scale: tuple[np.ndarray, np.ndarray],
    rgb: tuple[int, int, int] | None = None,
    open_sides: Sides = (False, False, False, False),
    origin_px: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth one model's output on one block (core plus halo) into class labels.

    Steps, in order:

    1. If any class's recipe uses the CRF (``crf`` / ``crf+morph``), :func:`crf_refine`
       runs once over all classes (a CRF is joint: all such classes must share their
       ``crf`` parameters); likewise :func:`gridcrf_refine` for ``gridcrf`` /
       ``gridcrf+morph`` (one kind of CRF per model).
    2. Each foreground class ``k`` (1..C-1) takes its mask from the argmax of the refined
       probabilities if its recipe uses the CRF, else from the argmax of ``probs``; if its
       recipe uses morphology, :func:`morph_refine` cleans that mask.
    3. Conflicts are resolved per pixel, deterministically: a pixel claimed by no class is
       background (0), e.g. a speck removed by morphology; a pixel claimed by several
       (after a closing, or CRF vs. raw argmax) takes the claimant with the highest
       returned probability, the lowest class index on a tie. A pixel claimed by its
       argmax class therefore keeps it.

    Parameters
    ----------
    probs
        ``(C, H, W)`` float softmax probabilities, class 0 = background, C >= 2.
    image
        ``(B, H, W)`` the model's input bands (card order, raw dtype), for the CRF colours.
    valid
        ``(H, W)`` bool, False on nodata and outside the scene (reflect-padded halo).
    class_names
        C names, ``class_names[0]`` being the background.
    recipes
        Recipe per foreground class name (e.g. from :func:`recipe_for`). A foreground class
        missing from the mapping is not smoothed (raw argmax); an unknown name is an error.
    pixel_size_m
        ``(dx_m, dy_m)``, one value for the whole scene (so all blocks agree).
    image_scale
        ``(mean, std)`` per band from the model card (only used by the CRF).
    rgb
        Three band indices for the CRF colour term; None = the first three. Use
        ``colour_bands(card.bands)``: NIR/SWIR separate water and vegetation, visible
        colour often does not.
    open_sides
        Top, bottom, left, right: True where the array continues in the scene
        (``Block.open_sides`` of the block being processed).
    origin_px
        ``(row, col)`` of the array's first pixel in the scene (``Block.read`` offsets,
        negative at the top/left edge). Only the CRF needs it.

    Returns
    -------
    labels
        ``(H, W)`` uint8 class index, :data:`NODATA_LABEL` (255) where ``valid`` is False.
    probs
        ``(C, H, W)`` float32 for confidence: the CRF-refined probabilities if a CRF
        ran (they sum to 1 on valid pixels), else the input. Invalid pixels unchanged.

    Raises
    ------
    ConfigError
        On shape mismatches, unknown class names in ``recipes``, more than 255 classes or
        conflicting CRF parameters.
    """
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ConfigError(f"probs must be (classes >= 2, H, W), got shape {probs.shape}")
    n_classes = probs.shape[0]
    if len(class_names) != n_classes:
        raise ConfigError(
            f"{len(class_names)} class names for {n_classes} probability channels; "
            "pass every class of the model, background first"
        )
    if n_classes > NODATA_LABEL:
        raise ConfigError(f"{n_classes} classes do not fit uint8 labels (at most 255)")
    if valid.shape != probs.shape[1:] or valid.dtype != np.bool_:
        raise ConfigError(
            f"valid must be bool shaped {probs.shape[1:]}, got {valid.dtype} {valid.shape}"
        )
    unknown = sorted(set(recipes) - set(class_names[1:]))
    if unknown:
        raise ConfigError(
            f"recipes given for {', '.join(map(repr, unknown))}, which the model does not "
            f"predict; its foreground classes are {', '.join(class_names[1:])}"
        )
    per_class = [recipes.get(name, _NO_SMOOTHING) for name in class_names]
    crf_params = _joint_crf_params(class_names, per_class)

    raw = np.asarray(probs, dtype=np.float32)
    raw_labels = argmax_classes(raw)
    conf = raw
    crf_labels = raw_labels
    if isinstance(crf_params, GridCRFParams):
        crf_labels, conf = gridcrf_refine(raw, valid=valid, params=crf_params, origin_px=origin_px)
    elif crf_params is not None:
        with _CRF_LOCK:
            conf = crf_refine(
                raw,
                image=image,
                valid=valid,
                params=crf_params,
                pixel_size_m=pixel_size_m,
                image_scale=image_scale,
                rgb=rgb,
                origin_px=origin_px,
            )
        crf_labels = argmax_classes(conf)

    claims = np.empty((n_classes - 1, *valid.shape), dtype=bool)
    for k in range(1, n_classes):
        recipe = per_class[k]
        refined = recipe.uses_crf or recipe.uses_gridcrf
        mask = ((crf_labels if refined else raw_labels) == k) & valid
        if recipe.uses_morph:
            mask = morph_refine(
                mask,
                valid=valid,
                recipe=recipe.morph,
                pixel_size_m=pixel_size_m,
                open_sides=open_sides,
            )
        claims[k - 1] = mask

    if n_classes == 2:
        labels = claims[0].astype(np.uint8)
    else:
        # Claimed classes score >= 2, unclaimed <= 1: argmax picks the most probable
        # claimant (lowest index on ties); unclaimed pixels are reset to background.
        score = claims * np.float32(2.0) + np.nan_to_num(conf[1:], nan=0.0)
        labels = (np.argmax(score, axis=0) + 1).astype(np.uint8)
        labels[~claims.any(axis=0)] = 0
    labels[~valid] = NODATA_LABEL
    return labels, conf
