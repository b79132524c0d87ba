"""A model's pixel grid over a scene whose pixels are finer (or a little coarser) than its own.

A model sees the pixel size it was trained on. :class:`ModelGrid` cuts the scene's extent
into ``height x width`` model pixels, anchored to the scene's corner, so every block of a run
reads the same model pixels wherever it reads them: a model pixel's value never depends on
the block size. The grid divides the scene exactly (``scene_height / height`` scene pixels per
model pixel, within half a model pixel per scene side of the card's pixel size), so no model
pixel hangs over the scene edge.

A block is predicted on the model grid (:meth:`ModelGrid.cover` gives the model window that
covers its read window) and its probabilities are brought back to the scene grid by
:func:`to_scene_grid`: bilinear interpolation at scene pixel centres, weighted by the model
pixels' validity, so model pixels without data do not pull their neighbours' probabilities
down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ConfigError
from geoseg.tiling.grid import PixelWindow

__all__ = ["MAX_COARSER", "SAME_RESOLUTION", "ModelGrid", "model_grid", "to_scene_grid"]

# A model runs on pixels up to this many times coarser than its own (upsampled), and on
# pixels of any finer size (downsampled). Coarser than this, the objects it was trained on
# have dissolved into the pixels (a 1 m roads model cannot see roads in 10 m pixels).
MAX_COARSER = 2.0
# Within this ratio a scene is read at its own pixel size: resampling would blur the scene
# for a difference a network trained with scale augmentation does not notice.
SAME_RESOLUTION = 1.25


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelGrid:
    """``height x width`` model pixels over a ``scene_height x scene_width`` scene."""

    scene_height: int
    scene_width: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if min(self.scene_height, self.scene_width, self.height, self.width) < 1:
            raise ConfigError(f"model grid {self.height}x{self.width} must be at least 1x1")

    @property
    def row_factor(self) -> float:
        """Scene pixels per model pixel, down the rows."""
        return self.scene_height / self.height

    @property
    def col_factor(self) -> float:
        """Scene pixels per model pixel, along the columns."""
        return self.scene_width / self.width

    @property
    def downsamples(self) -> bool:
        return self.row_factor * self.col_factor > 1.0

    def cover(self, window: PixelWindow) -> PixelWindow:
        """The model pixels whose centres interpolate every scene pixel centre of ``window``
        (scene pixels), plus one on each side; may extend beyond the grid (reflected)."""
        r0 = math.floor((window.row_off + 0.5) / self.row_factor - 0.5)
        r1 = math.floor((window.row_end - 0.5) / self.row_factor - 0.5) + 2
        c0 = math.floor((window.col_off + 0.5) / self.col_factor - 0.5)
        c1 = math.floor((window.col_end - 0.5) / self.col_factor - 0.5) + 2
        return PixelWindow(row_off=r0 - 1, col_off=c0 - 1, height=r1 - r0 + 2, width=c1 - c0 + 2)

    def scene_bounds(self, window: PixelWindow) -> tuple[float, float, float, float]:
        """``(row_off, col_off, height, width)`` of model ``window`` in scene pixels."""
        return (
            window.row_off * self.row_factor,
            window.col_off * self.col_factor,
            window.height * self.row_factor,
            window.width * self.col_factor,
        )


def model_grid(
    *, scene_height: int, scene_width: int, scene_pixel_m: float, model_pixel_m: float | None
) -> ModelGrid | None:
    """The grid a model of ``model_pixel_m`` metre pixels reads a scene on, or ``None`` when
    the scene is read at its own pixel size (no resolution on the card, or within
    :data:`SAME_RESOLUTION`).

    Raises
    ------
    ConfigError
        If the scene's pixels are more than :data:`MAX_COARSER` times the model's.
    """
    if model_pixel_m is None or model_pixel_m <= 0 or not scene_pixel_m > 0:
        return None
    ratio = scene_pixel_m / model_pixel_m
    if ratio > MAX_COARSER:
        raise ConfigError(
            f"the scene's pixels are {scene_pixel_m:.3g} m, {ratio:.3g} times the "
            f"{model_pixel_m:.3g} m the model was trained on: what it detects is not visible "
            f"at that size (at most {MAX_COARSER:g} times coarser); use imagery of "
            f"{model_pixel_m * MAX_COARSER:.3g} m or finer, or a model trained for "
            f"{scene_pixel_m:.3g} m"
        )
    if 1 / SAME_RESOLUTION <= ratio <= SAME_RESOLUTION:
        return None
    return ModelGrid(
        scene_height=scene_height,
        scene_width=scene_width,
        height=max(1, round(scene_height * ratio)),
        width=max(1, round(scene_width * ratio)),
    )


def _axis_weights(
    start: int, count: int, *, factor: float, model_start: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For scene pixels ``start .. start+count``: the two model pixels (indices into a model
    array starting at ``model_start``) each interpolates from, and the second one's weight."""
    pos = (np.arange(start, start + count) + 0.5) / factor - 0.5 - model_start
    lo = np.floor(pos).astype(np.int64)
    return lo, lo + 1, (pos - lo).astype(np.float32)


def to_scene_grid(
    probs: np.ndarray,
    valid: np.ndarray,
    *,
    grid: ModelGrid,
    model_window: PixelWindow,
    window: PixelWindow,
) -> np.ndarray:
    """``(C, h, w)`` probabilities on model window ``model_window`` -> ``(C, H, W)`` on scene
    window ``window`` (bilinear at scene pixel centres, weighted by ``valid``).

    Scene pixels all of whose model neighbours lack data get 0; the caller's scene-grid
    validity masks them anyway.
    """
    r_lo, r_hi, r_w = _axis_weights(
        window.row_off, window.height, factor=grid.row_factor, model_start=model_window.row_off
    )
    c_lo, c_hi, c_w = _axis_weights(
        window.col_off, window.width, factor=grid.col_factor, model_start=model_window.col_off
    )
    if r_lo.min() < 0 or c_lo.min() < 0 or r_hi.max() >= probs.shape[1]:
        raise ConfigError(f"model window {model_window} does not cover scene window {window}")
    if c_hi.max() >= probs.shape[2]:
        raise ConfigError(f"model window {model_window} does not cover scene window {window}")
    v = valid.astype(np.float32)
    weighted = probs.astype(np.float32, copy=False) * v
    stacked = np.concatenate([weighted, v[None]], axis=0)
    rw = r_w[None, :, None]
    rows = stacked[:, r_lo, :] * (1 - rw) + stacked[:, r_hi, :] * rw
    cw = c_w[None, None, :]
    out = rows[:, :, c_lo] * (1 - cw) + rows[:, :, c_hi] * cw
    weight = out[-1]
    scene = out[:-1]
    np.divide(scene, weight, out=scene, where=weight > 0)
    scene[:, weight <= 0] = 0.0
    return scene
