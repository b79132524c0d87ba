"""Block-wise smoothing with halo_px, cropped to the cores, equals whole-scene smoothing."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np
import pytest
from scipy import ndimage as ndi

from geoseg.postprocess import SmoothingRecipe, halo_px, recipe_for, smooth_block

from .conftest import SCALE, Scene, blob_scene

SIZE = 512
CORE = 171  # odd, so block origins fall on both parities of the 2 x 2 CRF cells


@cache
def _noisy_scene() -> Scene:
    """Blobs, salt-and-pepper, thin lines and a nodata patch: every step has work to do."""
    scene = blob_scene(SIZE, seed=7, blob_sigma=4.0, noise=1.8, nodata=np.s_[300:350, 40:220])
    rng = np.random.default_rng(8)
    p1 = scene.probs[1].copy()
    lines = ndi.binary_dilation(rng.random((SIZE, SIZE)) < 0.0005, np.ones((1, 40)))
    p1[lines] = 0.9
    p1[rng.random(p1.shape) < 0.03] = 0.9
    return Scene(
        truth=scene.truth,
        image=scene.image,
        probs=np.stack([1 - p1, p1]).astype(np.float32),
        valid=scene.valid,
    )


def _smooth(
    scene: Scene,
    window: tuple[slice, slice] | None,
    *,
    halo: int,
    recipes: Mapping[str, SmoothingRecipe],
    pixel_size_m: tuple[float, float],
    halo_aware: bool = True,
) -> np.ndarray:
    """Labels of one core window smoothed as the pipeline does (None = whole scene)."""
    names = ("background", *recipes)
    if window is None:
        labels, _ = smooth_block(
            scene.probs,
            image=scene.image,
            valid=scene.valid,
            class_names=names,
            recipes=recipes,
            pixel_size_m=pixel_size_m,
            image_scale=SCALE,
        )
        return labels
    rows, cols = window
    r0, r1, c0, c1 = rows.start - halo, rows.stop + halo, cols.start - halo, cols.stop + halo
    # Read the halo window the way the reader does: reflect beyond the scene, invalid there.
    pads = ((max(0, -r0), max(0, r1 - SIZE)), (max(0, -c0), max(0, c1 - SIZE)))
    inner = np.s_[max(r0, 0) : min(r1, SIZE), max(c0, 0) : min(c1, SIZE)]
    image = np.pad(scene.image[(slice(None), *inner)], ((0, 0), *pads), mode="reflect")
    probs = np.pad(scene.probs[(slice(None), *inner)], ((0, 0), *pads), mode="reflect")
    valid = np.pad(scene.valid[inner], pads, constant_values=False)
    open_sides = (rows.start > 0, rows.stop < SIZE, cols.start > 0, cols.stop < SIZE)
    labels, _ = smooth_block(
        probs,
        image=image,
        valid=valid,
        class_names=names,
        recipes=recipes,
        pixel_size_m=pixel_size_m,
        image_scale=SCALE,
        open_sides=open_sides if halo_aware else (False, False, False, False),
        origin_px=(r0, c0) if halo_aware else (0, 0),
    )
    return labels[halo : halo + rows.stop - rows.start, halo : halo + cols.stop - cols.start]


def _blockwise(halo: int, **kwargs: object) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for r in range(0, SIZE, CORE):
        for c in range(0, SIZE, CORE):
            core = np.s_[r : min(r + CORE, SIZE), c : min(c + CORE, SIZE)]
            out[core] = _smooth(_noisy_scene(), core, halo=halo, **kwargs)  # type: ignore[arg-type]
    return out


CASES = {
    # class, method (None = default), pixel size
    "water default (crf+morph), 10 m": ("water", None, (10.0, 10.0)),
    "water crf only, 4326 at 35N": ("water", "crf", (8.19, 8.21)),
    "roads default (morph), 1 m": ("roads", None, (1.0, 1.0)),
    "crops default (morph), 10 m": ("crops", None, (10.0, 10.0)),
    "crops default (morph), 4326 at 60N": ("crops", None, (5.57, 11.12)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_blockwise_smoothing_matches_whole_scene(case: str) -> None:
    name, method, pixel_size_m = CASES[case]
    recipes = {name: recipe_for(name, method)}
    halo = halo_px(recipes[name], pixel_size_m=pixel_size_m)
    scene = _noisy_scene()
    whole = _smooth(scene, None, halo=0, recipes=recipes, pixel_size_m=pixel_size_m)
    raw = np.where(scene.valid, scene.probs[1] > 0.5, 255)
    changed = np.mean(whole != raw)
    assert changed > 0.01, f"smoothing should change the noisy scene ({changed:.2%})"

    blocks = _blockwise(halo, recipes=recipes, pixel_size_m=pixel_size_m)
    agree = np.mean(blocks == whole)
    assert agree >= 0.999, f"{case}: block-wise agrees on {agree:.4%} with a {halo} px halo"

    # Control: the same blocks without halo awareness (no halo, borders treated as scene
    # edges, no scene offset) do differ, so the agreement above is earned.
    naive = _blockwise(0, recipes=recipes, pixel_size_m=pixel_size_m, halo_aware=False)
    naive_agree = np.mean(naive == whole)
    assert naive_agree < agree, f"{case}: naive blocks agree on {naive_agree:.4%}"
