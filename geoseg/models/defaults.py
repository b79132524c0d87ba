"""Default models: which model ``geoseg run --classes ...`` uses when none is given.

Each class maps to candidate sources in order of preference: a model file shipped in
:data:`WEIGHTS_DIR` (trained by ``make train-defaults``, i.e. ``geoseg train
workflows/train/<name>.yaml``, or a published network ported by ``tools/``; its card holds
the training data, scores, licence and attribution) or a built-in spectral method
(``"ndwi:0.35"``). For a scene, a class gets the first candidate whose input bands the scene
provides, at a pixel size it was made for, in units it understands (:func:`units_misfit`).

================  ==================================================================================
class             candidates
================  ==================================================================================
roads             ``roads-unet-r18`` (RGB aerial, 1 m)
water             ``dynamicworld-s2l1c`` (Sentinel-2 L1C, 9 bands with red edge and SWIR, 10 m),
                  ``landsat7-water-crops`` (Landsat 7 8-bit DNs, B1-B5, 28.5 m),
                  ``watnet-l578`` (Landsat 5/7/8 surface reflectance 0-1, 6 bands, 30 m),
                  ``ndwi:0.35``
crops, trees,     ``dynamicworld-s2l1c``
grass, built,
bare, shrub_and_
scrub, snow_and_
ice
================  ==================================================================================

The candidates for water do not compete on real scenes: Dynamic World needs the Sentinel-2
red-edge bands, the Landsat 7 model 8-bit DNs, WatNet reflectance (a Landsat scene whose scale
and offset are known, or reflectance already); NDWI (green and NIR) takes every other scene,
e.g. 4-band RGB + NIR imagery. Where a scene's values cannot be sampled, the order decides:
the Landsat 7 model, validated on Landsat 7 DNs here, before WatNet. Dynamic World's ``water``
is its water plus flooded vegetation (flood extent); the other classes are its own.

Water on Landsat 7 8-bit DNs: on the held-out region of the Landsat 7 scene, run as ``geoseg
run`` runs by default (with the water smoothing recipe: ``crf+morph`` for models, ``morph``
for indices), the trained model's water IoU (0.743) beats NDWI > 0.35 (0.728) and MNDWI >
0.25 (0.729), whose thresholds were chosen on the training area, and Otsu's thresholds (0.11,
0.05), which fail on scenes with little water (they split vegetation instead). On the
Sentinel-2 Beaufort scene (8-bit renders of B01-B08, no SWIR: only NDWI runs) NDWI > 0.35 finds
every labelled open-water pixel. The shipped cards hold what was measured for the ported
networks (``training.measured_here``), and the README's Models section compares them.

A trained default is also passed over when the scene's values are not in the units it was
trained on (:func:`units_misfit`: the Landsat 7 model takes 8-bit DNs; a Landsat 8 scene of
16-bit DNs or reflectance in 0-1 gets another candidate instead).

Crops come from Dynamic World only: the Landsat model's crops output does not validate (the
1996 agriculture labels are spectrally indistinguishable from grassland in the 2000 image).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from geoseg.errors import BandError, ClassNotAvailableError, ModelCardError
from geoseg.models.card import ModelCard, read_card
from geoseg.models.spectral import is_spectral, spectral_card
from geoseg.tiling.resample import MAX_COARSER

__all__ = [
    "DEFAULT_MODELS",
    "DYNAMIC_WORLD",
    "RESOLUTION_TOLERANCE",
    "VALUE_SCALE_TOLERANCE",
    "WATNET",
    "WEIGHTS_DIR",
    "default_model_cards",
    "default_sources",
    "units_misfit",
]

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

DYNAMIC_WORLD = "dynamicworld-s2l1c.safetensors"
WATNET = "watnet-l578.safetensors"
_DYNAMIC_WORLD_CLASSES = (
    "crops", "trees", "grass", "built", "bare", "shrub_and_scrub", "snow_and_ice",
)  # fmt: skip

DEFAULT_MODELS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # v2: fine-tuned with scale augmentation (held-out IoU 0.44 against 0.35, at the
        # argmax); the first model stays as a fallback.
        "roads": ("roads-unet-r18-v2.safetensors", "roads-unet-r18.safetensors"),
        "water": (DYNAMIC_WORLD, "landsat7-water-crops.safetensors", WATNET, "ndwi:0.35"),
        **dict.fromkeys(_DYNAMIC_WORLD_CLASSES, (DYNAMIC_WORLD,)),
        # Fields at 1 m RGB (aerial, NAIP) first (v2: trained longer, with scale
        # augmentation; the first stays as a fallback); Dynamic World's cropland on
        # Sentinel-2.
        "crops": (
            "crops-fields-naip-v2.safetensors",
            "crops-fields-naip.safetensors",
            DYNAMIC_WORLD,
        ),
    }
)

RESOLUTION_TOLERANCE = MAX_COARSER
"""A trained default is used on scenes whose pixels are finer than its training data's, at
any ratio, or at most this factor coarser (when the caller passes the scene's pixel size):
the run reads the scene at the model's pixel size (:mod:`geoseg.tiling.resample`)."""


VALUE_SCALE_TOLERANCE = 8.0
"""A trained model fits a scene's units when the median over bands of (scene median / the
card's training mean) lies within this factor: 8-bit vs 16-bit DNs differ by ~30-100x,
DNs vs 0-1 reflectance by ~100-1000x, while dark or bright scenes in the right units stay
within ~3x."""


def units_misfit(card: ModelCard, medians: np.ndarray | None) -> str | None:
    """Why ``card``'s model would not understand a scene with these band ``medians``, or None.

    Compares the scene's per-band medians (its input bands, in the card's order) with the
    per-band means of the model's training data. Built-in spectral methods are scale-free
    and always fit; so does a card without positive means (nothing to compare with).
    """
    if card.architecture == "spectral" or medians is None:
        return None
    mean = np.asarray(card.mean, dtype=np.float64)
    if len(mean) != len(medians) or np.any(mean <= 0):
        return None
    ratio = float(np.median(np.asarray(medians, dtype=np.float64) / mean))
    if 1 / VALUE_SCALE_TOLERANCE <= ratio <= VALUE_SCALE_TOLERANCE:
        return None

    def fmt(v: np.ndarray) -> str:
        return "/".join(f"{x:.3g}" for x in v)

    return (
        f"it was trained on values around {fmt(mean)} and the scene's are around "
        f"{fmt(np.asarray(medians))} (other units or scaling)"
    )


def _card(source: str) -> ModelCard:
    if is_spectral(source):
        return spectral_card(source)
    return read_card(WEIGHTS_DIR / source)


def _resolved(source: str) -> str:
    return source if is_spectral(source) else str(WEIGHTS_DIR / source)


def _provides(card: ModelCard, roles: Sequence[str | None], count: int) -> bool:
    if all(r is None for r in roles):
        return count == len(card.bands)  # unnamed bands in the model's order
    return all(b in roles for b in card.bands)


def _resolution_fits(card: ModelCard, resolution_m: float | None) -> bool:
    if resolution_m is None or card.resolution_m is None or resolution_m <= 0:
        return True
    return resolution_m / card.resolution_m <= RESOLUTION_TOLERANCE


def _describe_scene(roles: Sequence[str | None], count: int) -> str:
    if all(r is None for r in roles):
        return f"{count} unnamed band{'s' if count != 1 else ''}"
    return f"bands {', '.join(r or '?' for r in roles)}"


def default_sources(
    classes: Sequence[str],
    *,
    roles: Sequence[str | None],
    count: int,
    resolution_m: float | None = None,
    value_misfit: Callable[[ModelCard], str | None] | None = None,
) -> tuple[str, ...]:
    """The default model source of each class for a scene, de-duplicated, in class order.

    Parameters
    ----------
    classes
        Requested classes (``("water", "roads")``).
    roles
        The scene's band roles (:func:`geoseg.models.bands.band_roles`), ``None`` where
        unknown. All ``None`` with ``count`` equal to a model's band count counts as
        providing that model's bands in its order.
    count
        The scene's band count.
    resolution_m
        The scene's pixel size in metres; when given, trained models whose training
        pixels are more than :data:`RESOLUTION_TOLERANCE` times finer than the scene's are
        passed over (a 1 m roads model sees nothing useful in 10 m pixels).
    value_misfit
        Says why a candidate would not understand the scene's values (see
        :func:`units_misfit`), or None; candidates it objects to are passed over.

    Returns
    -------
    tuple of str
        Absolute model file paths and built-in method names (``"ndwi"``), each once.

    Raises
    ------
    ClassNotAvailableError
        If a class has no default model (the message lists those that have one).
    BandError
        If no candidate of a class fits the scene: names the class, what each candidate
        needs, what the scene has, and how to fix it.
    ModelCardError
        If every candidate of a class is a shipped file that is missing or unreadable.
    """
    out: list[str] = []
    for name in classes:
        candidates = DEFAULT_MODELS.get(name)
        if candidates is None:
            raise ClassNotAvailableError(
                f"no default model for class {name!r}; classes with a default: "
                f"{', '.join(DEFAULT_MODELS)}; for other classes pass --model FILE"
            )
        needs: list[str] = []
        broken: list[str] = []
        band_misfit = False
        chosen = None
        for source in candidates:
            try:
                card = _card(source)
            except ModelCardError as err:
                # A missing or broken shipped file: use the next candidate, but say so.
                log.warning("default model %s for %s is unusable: %s", source, name, err)
                broken.append(f"{source}: {err}")
                continue
            if not _provides(card, roles, count):
                needs.append(f"{source} needs {', '.join(card.bands)}")
                band_misfit = True
            elif not _resolution_fits(card, resolution_m):
                needs.append(
                    f"{source} is trained for {card.resolution_m:.3g} m pixels, "
                    f"the scene's are {resolution_m:.3g} m"
                )
            elif value_misfit is not None and (why := value_misfit(card)):
                needs.append(f"{source}: {why}")
            else:
                chosen = _resolved(source)
                if needs:
                    log.info("class %s: using %s (passed over: %s)", name, source, "; ".join(needs))
                break
        if chosen is None and not needs:
            raise ModelCardError(
                f"the default model for class {name!r} is unusable ({'; '.join(broken)}); "
                f"reinstall geoseg or retrain it with make train-defaults"
            )
        if chosen is None:
            fix = (
                "name the scene's bands with --bands or --sensor, or pass a model with --model"
                if band_misfit
                else "pass a model made for this imagery with --model"
            )
            raise BandError(
                f"no default model for class {name!r} fits this scene "
                f"({_describe_scene(roles, count)}): {'; '.join(needs)}; {fix}"
            )
        if chosen not in out:
            out.append(chosen)
    return tuple(out)


def default_model_cards() -> dict[str, ModelCard]:
    """Cards of the default sources and of every shipped model file, for listings.

    Keys are file names in :data:`WEIGHTS_DIR` and method names (``"ndwi"``). Shipped files
    that are missing or unreadable are left out (and logged).
    """
    sources = dict.fromkeys(s for candidates in DEFAULT_MODELS.values() for s in candidates)
    sources.update(dict.fromkeys(sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))))
    cards: dict[str, ModelCard] = {}
    for source in sources:
        try:
            cards[source] = _card(source)
        except ModelCardError as err:
            log.warning("default model %s is unusable: %s", source, err)
    return cards
