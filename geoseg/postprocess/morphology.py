"""Halo-aware binary morphology of one class mask: opening, closings, specks and holes.

All sizes are in metres / square metres and are converted with the block's pixel size, so
the same recipe means the same thing on a 10 m UTM grid and on an EPSG:4326 grid whose
pixels are 8.1 m x 8.2 m (structuring elements are then ellipses in pixel space).

Block-wise processing must reproduce whole-scene processing once the halo is cropped, so
nothing here uses per-block statistics, and the four array sides are told apart:

* an *open* side (the scene continues in a neighbouring block) hides part of any object or
  hole that touches it, so such objects are kept and such holes are not filled;
* a *closed* side is the scene edge; beyond it, as on nodata pixels, the data are unknown.

Nodata (``valid == False``) is "unknown": it never becomes foreground, it neither erodes
the mask during an opening nor attracts it during a closing, and a background region that
touches it is not a hole (filling it would claim the unknown area).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from geoseg.errors import ConfigError

__all__ = [
    "MorphRecipe",
    "Sides",
    "area_px",
    "ellipse_footprint",
    "morph_halo_px",
    "morph_refine",
    "radius_px",
    "validate_pixel_size",
]

Sides = tuple[bool, bool, bool, bool]
"""Top, bottom, left, right: True where the array continues in the scene (inner border)."""

_ALL_CLOSED: Sides = (False, False, False, False)
# Objects and holes are both 4-connected, as the polygons are traced
# (geoseg.vectorize.polygons): two pixels touching only at a corner are two polygons, so a
# speck touching a big object at a corner is its own (small) polygon and must go. A hole is
# 4-connected too, not 8 (the digital-topology dual): a background pixel touching the
# outside only at a corner is an interior ring of the traced polygon (touching its shell at
# that corner), i.e. a hole the user sees, so it must be filled like any other.
_FOUR = ndi.generate_binary_structure(2, 1)
_RECIPE_FIELDS = (
    "open_radius_m",
    "close_radius_m",
    "line_close_radius_m",
    "min_object_area_m2",
    "max_hole_area_m2",
)
# Row/column steps of the lattice lines used by the line closing: every pixel of a digital
# line in one of these directions lies on the lattice line, so even a one-pixel-wide road
# at 26.6 degrees is bridged. The 26.6 / 63.4 degree lines are sparse (a point every
# sqrt(5) px), which is harmless: a closing only needs to hit the structure on both sides.
_LINE_STEPS = ((0, 1), (1, 2), (1, 1), (2, 1), (1, 0), (2, -1), (1, -1), (1, -2))


@dataclass(frozen=True, kw_only=True, slots=True)
class MorphRecipe:
    """Morphological clean-up of one class mask; all sizes in metres, never pixels.

    Applied in this order: opening, closing, closing along lines, removal of small objects,
    filling of small holes. A zero disables a step.

    Parameters
    ----------
    open_radius_m
        Radius of the disk used for an opening (erosion then dilation): removes specks and
        spurs narrower than ``2 * open_radius_m``. Erases thin structures of that width too.
    close_radius_m
        Radius of the disk used for a closing (dilation then erosion): bridges gaps up to
        ``2 * close_radius_m`` wide. A disk does not fit into a structure narrower than
        itself, so across a thin road it only leaves a one-pixel neck: use the next one.
    line_close_radius_m
        Closing along linear structures: the union of closings with line segments of
        half-length ``line_close_radius_m`` in 8 directions (0, 26.6, 45, 63.4 degrees ...
        on square pixels). Bridges gaps up to ``2 * line_close_radius_m`` long along a
        road or river at its full width, without widening it.
    min_object_area_m2
        Connected objects (4-connected, as polygons are traced: pixels touching only at a
        corner are separate objects) with a visible area below this are removed.
    max_hole_area_m2
        Holes (4-connected background enclosed by the object, not touching nodata or the
        array border; a background pixel meeting the outside only at a corner is a hole
        of the traced polygon) with an area below this are filled.
    """

    open_radius_m: float = 0.0
    close_radius_m: float = 0.0
    line_close_radius_m: float = 0.0
    min_object_area_m2: float = 0.0
    max_hole_area_m2: float = 0.0

    def __post_init__(self) -> None:
        for name in _RECIPE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name}={value!r} is not a number; give metres, e.g. 10.0")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a finite number >= 0 (0 disables it)")

    @property
    def is_noop(self) -> bool:
        """True when every step is disabled."""
        return not any(getattr(self, name) for name in _RECIPE_FIELDS)


def validate_pixel_size(pixel_size_m: tuple[float, float]) -> tuple[float, float]:
    """Return ``(dx_m, dy_m)`` as floats or raise ``ConfigError`` if not two positive numbers."""
    try:
        dx, dy = (float(v) for v in pixel_size_m)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"pixel_size_m={pixel_size_m!r} must be (dx_m, dy_m), two positive numbers in metres"
        ) from err
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise ConfigError(
            f"pixel_size_m={pixel_size_m!r} must be two positive, finite sizes in metres; "
            "for a geographic CRS convert degrees to metres at the scene's latitude first"
        )
    return dx, dy


def radius_px(radius_m: float, *, pixel_size_m: tuple[float, float]) -> tuple[float, float]:
    """Radius in metres as ``(rows, cols)`` semi-axes in pixels."""
    dx, dy = validate_pixel_size(pixel_size_m)
    return radius_m / dy, radius_m / dx


def area_px(area_m2: float, *, pixel_size_m: tuple[float, float]) -> float:
    """Area in square metres as a (fractional) number of pixels."""
    dx, dy = validate_pixel_size(pixel_size_m)
    return area_m2 / (dx * dy)


def ellipse_footprint(radius_m: float, *, pixel_size_m: tuple[float, float]) -> np.ndarray:
    """Structuring element of all pixel offsets within ``radius_m`` metres of the centre.

    With square pixels this is the usual digital disk; with anisotropic pixels it is an
    ellipse in pixel space (a true disk on the ground). A radius below one pixel on both
    axes gives the single-pixel element (the operation is then a no-op).
    """
    dx, dy = validate_pixel_size(pixel_size_m)
    # The tiny tolerance keeps offsets lying exactly on the circle (e.g. 20 m at 10 m) inside.
    ry, rx = math.floor(radius_m / dy + 1e-9), math.floor(radius_m / dx + 1e-9)
    iy, ix = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return np.asarray((iy * dy) ** 2 + (ix * dx) ** 2 <= radius_m**2 * (1 + 1e-9))


def _area_halo(area: float) -> int:
    # An object (or hole) of fewer than A pixels reaching from the core to beyond a halo of
    # h pixels spans > h pixels, so h = A makes the area test exact. That is cheap for the
    # usual thresholds (tens of pixels) but absurd for big ones (0.25 ha at 1 m = 2500 px),
    # so cap at 2 * sqrt(A): only objects averaging less than sqrt(A) / 2 pixels wide
    # (slivers, not the compact specks and parcels the filter is for) can still differ.
    if area <= 0:
        return 0
    return math.ceil(min(area, 2.0 * math.sqrt(area)))


def morph_halo_px(recipe: MorphRecipe, *, pixel_size_m: tuple[float, float]) -> int:
    """Pixels of halo needed on each side so block-wise == whole-scene (see module doc).

    An opening, closing or line closing with radius ``r`` looks ``2 r`` away (erode then
    dilate, or the reverse); the area filters look as far as their objects reach (see
    ``_area_halo``). The steps run in sequence, so the reaches add up.
    """
    dx, dy = validate_pixel_size(pixel_size_m)
    reach = 0
    for radius in (recipe.open_radius_m, recipe.close_radius_m):
        fp = ellipse_footprint(radius, pixel_size_m=(dx, dy))
        reach += 2 * (max(fp.shape) // 2)
    reach += max(
        (
            2 * n * max(abs(a), abs(b))
            for (a, b), n in _line_lengths(recipe.line_close_radius_m, dx, dy)
        ),
        default=0,
    )
    reach += _area_halo(area_px(recipe.min_object_area_m2, pixel_size_m=(dx, dy)))
    reach += _area_halo(area_px(recipe.max_hole_area_m2, pixel_size_m=(dx, dy)))
    return reach


def _check_masks(mask: np.ndarray, valid: np.ndarray) -> None:
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ConfigError(f"mask must be a 2-D bool array, got {mask.dtype} {mask.shape}")
    if valid.shape != mask.shape or valid.dtype != np.bool_:
        raise ConfigError(
            f"valid must be a bool array shaped like mask {mask.shape}, "
            f"got {valid.dtype} {valid.shape}"
        )


def _check_sides(open_sides: Sides) -> Sides:
    if len(open_sides) != 4 or not all(isinstance(s, bool | np.bool_) for s in open_sides):
        raise ConfigError(
            f"open_sides={open_sides!r} must be four bools (top, bottom, left, right)"
        )
    return (bool(open_sides[0]), bool(open_sides[1]), bool(open_sides[2]), bool(open_sides[3]))


def _opening(mask: np.ndarray, valid: np.ndarray, fp: np.ndarray) -> np.ndarray:
    # Unknown pixels (nodata, beyond the array) count as foreground: they cannot erode what
    # they might continue, and as seeds of the dilation they can only restore foreground
    # that was there (the result is intersected with the valid mask). The pad makes the
    # outside of the array behave exactly like nodata inside it.
    py, px = fp.shape[0] // 2, fp.shape[1] // 2
    padded = np.pad(mask | ~valid, ((py, py), (px, px)), constant_values=True)
    eroded = ndi.binary_erosion(padded, structure=fp, border_value=1)
    opened = ndi.binary_dilation(eroded, structure=fp)
    return np.asarray(opened[py : py + mask.shape[0], px : px + mask.shape[1]] & valid)


def _closing(mask: np.ndarray, valid: np.ndarray, fp: np.ndarray) -> np.ndarray:
    # Unknown pixels count as background, like any pixel the dilation has not reached: a
    # closing then never grows the mask towards nodata or the array border, yet stays
    # extensive next to them (the pad lets the dilation spill over the border, so the
    # erosion does not eat foreground there).
    py, px = fp.shape[0] // 2, fp.shape[1] // 2
    padded = np.pad(mask & valid, ((py, py), (px, px)), constant_values=False)
    dilated = ndi.binary_dilation(padded, structure=fp)
    closed = ndi.binary_erosion(dilated, structure=fp, border_value=1)
    return np.asarray(closed[py : py + mask.shape[0], px : px + mask.shape[1]] & valid)


def _line_lengths(radius_m: float, dx: float, dy: float) -> list[tuple[tuple[int, int], int]]:
    """``(step, n)``: the line segments ``{k * step : |k| <= n}`` within ``radius_m``."""
    out = []
    for a, b in _LINE_STEPS:
        n = math.floor(radius_m / math.hypot(a * dy, b * dx) + 1e-9)
        if n > 0:
            out.append(((a, b), n))
    return out


def _shift_combine(y: np.ndarray, dr: int, dc: int, *, dilate: bool) -> None:
    """In place: ``y[p] |= y[p - (dr, dc)]`` (dilate) or ``y[p] &= y[p + (dr, dc)]``."""
    if not dilate:
        dr, dc = -dr, -dc
    h, w = y.shape
    dst = (slice(max(dr, 0), h + min(dr, 0)), slice(max(dc, 0), w + min(dc, 0)))
    src = (slice(max(-dr, 0), h - max(dr, 0)), slice(max(-dc, 0), w - max(dc, 0)))
    if dilate:
        y[dst] |= y[src]  # numpy buffers overlapping operands, so this is exact
    else:
        y[dst] &= y[src]


def _line_closing(
    mask: np.ndarray, valid: np.ndarray, radius_m: float, dx: float, dy: float
) -> np.ndarray:
    # A closing with the centred segment {-n..n} * step equals the closing with {0..2n} * step
    # (translations cancel), and {0..m} is a Minkowski sum of two-point sets {0, k} with
    # k = 1, 2, 4, ... plus a remainder: log2(m) shift-ORs and shift-ANDs per direction
    # instead of m. Unknown pixels are background, as in the disk closing.
    lines = _line_lengths(radius_m, dx, dy)
    if not lines:
        return np.asarray(mask & valid)
    pr = max(2 * n * abs(a) for (a, _), n in lines)
    pc = max(2 * n * abs(b) for (_, b), n in lines)
    base = np.pad(mask & valid, ((pr, pr), (pc, pc)), constant_values=False)
    out = base.copy()
    for (a, b), n in lines:
        parts, total, k = [], 0, 1
        while total + k <= 2 * n:
            parts.append(k)
            total += k
            k *= 2
        if total < 2 * n:
            parts.append(2 * n - total)
        closed = base.copy()
        for k in parts:
            _shift_combine(closed, k * a, k * b, dilate=True)
        for k in parts:
            _shift_combine(closed, k * a, k * b, dilate=False)
        out |= closed
    return np.asarray(out[pr : pr + mask.shape[0], pc : pc + mask.shape[1]] & valid)


def _border_labels(labels: np.ndarray, sides: Sides) -> np.ndarray:
    """Labels on the selected array sides (top, bottom, left, right), with repeats."""
    edges = [
        edge
        for edge, selected in zip(
            (labels[0], labels[-1], labels[:, 0], labels[:, -1]), sides, strict=True
        )
        if selected
    ]
    if not edges:
        return np.zeros(0, dtype=labels.dtype)
    return np.concatenate(edges)


def _remove_small_objects(mask: np.ndarray, *, min_px: float, open_sides: Sides) -> np.ndarray:
    labels, count = ndi.label(mask, structure=_FOUR)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_px
    # An object cut by an inner block border continues in the neighbour: its size is
    # unknown here, so it stays (the halo makes the core agree with the whole scene).
    keep[_border_labels(labels, open_sides)] = True
    keep[0] = False
    return np.asarray(keep[labels])


def _fill_small_holes(mask: np.ndarray, valid: np.ndarray, *, max_px: float) -> np.ndarray:
    # Nodata is labelled together with the background, so a background region touching
    # nodata is one component with it and is excluded below. Any array side excludes too:
    # beyond an inner border the region may continue, beyond the scene edge it is unknown.
    labels, count = ndi.label(~mask, structure=_FOUR)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    fill = sizes < max_px
    fill[labels[~valid]] = False  # fancy assignment: no sort of a big nodata area
    fill[_border_labels(labels, (True, True, True, True))] = False
    fill[0] = False
    return np.asarray(mask | fill[labels])


def morph_refine(
    mask: np.ndarray,
    *,
    valid: np.ndarray,
    recipe: MorphRecipe,
    pixel_size_m: tuple[float, float],
    open_sides: Sides = _ALL_CLOSED,
) -> np.ndarray:
    """Clean one class mask with opening, closings and area filters given in metres.

    Parameters
    ----------
    mask
        ``(H, W)`` bool, the class over the block's core plus halo.
    valid
        ``(H, W)`` bool, False on nodata and outside the scene (the reflect-padded halo).
    recipe
        The steps and their sizes in metres.
    pixel_size_m
        ``(dx_m, dy_m)``: pixel width and height on the ground in metres. For a geographic
        CRS the caller converts degrees to metres (one value for the whole scene, so all
        blocks agree).
    open_sides
        Top, bottom, left, right: True where the array continues in the scene, i.e. the
        side is an inner block border (``Block.open_sides``). All False for a whole scene.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` bool, False wherever ``valid`` is False. Within ``morph_halo_px`` of an
        open side the result may differ from whole-scene processing: crop it away.

    Raises
    ------
    ConfigError
        If the arrays, the pixel size or ``open_sides`` are malformed.
    """
    _check_masks(mask, valid)
    sides = _check_sides(open_sides)
    dx, dy = validate_pixel_size(pixel_size_m)
    out: np.ndarray = mask & valid
    if recipe.open_radius_m > 0:
        fp = ellipse_footprint(recipe.open_radius_m, pixel_size_m=(dx, dy))
        if fp.size > 1:
            out = _opening(out, valid, fp)
    if recipe.close_radius_m > 0:
        fp = ellipse_footprint(recipe.close_radius_m, pixel_size_m=(dx, dy))
        if fp.size > 1:
            out = _closing(out, valid, fp)
    if recipe.line_close_radius_m > 0:
        out = _line_closing(out, valid, recipe.line_close_radius_m, dx, dy)
    pixel_area = dx * dy
    if recipe.min_object_area_m2 > 0:
        out = _remove_small_objects(
            out, min_px=recipe.min_object_area_m2 / pixel_area, open_sides=sides
        )
    if recipe.max_hole_area_m2 > 0:
        out = _fill_small_holes(out, valid, max_px=recipe.max_hole_area_m2 / pixel_area)
    return out
