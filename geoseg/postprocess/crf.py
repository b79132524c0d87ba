"""Halo-aware dense CRF refinement of class probabilities (Krähenbühl & Koltun, 2011).

A fully connected CRF with Potts compatibility and two kernels, solved by mean field:

* a Gaussian (smoothness) kernel over position, std ``gaussian_sxy_m``;
* a bilateral (appearance) kernel over position and colour, std ``bilateral_sxy_m`` and
  ``bilateral_srgb``.

Each mean-field step is ``Q = softmax(log P + w_g K_g(Q) + w_b K_b(Q))`` with normalised
kernels: the update pydensecrf's ``DenseCRF`` performs, assembled here so that the
block-wise result matches the whole scene and runs fast enough:

* The Gaussian term is an exact separable Gaussian (``scipy.ndimage``), normalised over the
  valid pixels: anisotropic pixels get per-axis sigmas, nodata contributes nothing, and it
  is translation invariant (no seams). It replaces pydensecrf's 2-D lattice, which cost
  more than the whole bilateral term on a 2304 x 2304 block.
* The bilateral term uses pydensecrf's permutohedral lattice (one ``stepInference`` with a
  zero unary returns ``softmax(w_b K_b(Q))``, whose log is the message). Only valid pixels
  enter the lattice, so nodata has no pairwise influence at all. Positions are *scene*
  pixel coordinates in metres / sigma (``origin_px``): the lattice quantises feature space
  at absolute positions, so a block and the whole scene then share one lattice.
* With ``bilateral_downsample = 2`` the bilateral message is computed on 2 x 2 cells
  (aligned to the scene grid; mean colour and mean Q of their valid pixels) and spread
  back to the pixels by a colour-guided (joint bilateral) upsampling; the unary and the
  Gaussian term stay at full resolution. The lattice then holds a quarter of the points,
  which roughly halves the total time (see ``CRFParams``).

Colours are the model's input bands scaled with the model card's mean and std to the
reference uint8 range, ``clip(128 + 40 z, 0, 255)``: global, so no per-block statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from scipy import ndimage as ndi
from scipy.special import expit

from geoseg.errors import ConfigError
from geoseg.postprocess.morphology import validate_pixel_size

__all__ = ["CRFParams", "colour_bands", "colour_features", "crf_halo_px", "crf_refine"]

DEFAULT_GAUSSIAN_SXY_PX = 3.0
"""Gaussian-kernel std when ``gaussian_sxy_m`` is None (Krähenbühl & Koltun's 3 px)."""
DEFAULT_BILATERAL_SXY_PX = 20.0
"""Bilateral-kernel std when ``bilateral_sxy_m`` is None (see ``CRFParams``)."""
PROB_FLOOR = 1e-5
"""Probabilities are clipped to ``[PROB_FLOOR, 1]`` before the log (no infinite energies)."""
MAX_HALO_PX = 128
"""Upper bound of :func:`crf_halo_px`: the halo is paid for by the model as well."""

_TRUNCATE = 3.0  # Gaussian kernel truncated at 3 sigma; matches the halo rule


@dataclass(frozen=True, kw_only=True, slots=True)
class CRFParams:
    """Dense-CRF settings; spatial stds in metres (None = a default in pixels).

    Defaults follow Krähenbühl & Koltun (2011) and pydensecrf's README (Gaussian 3 px,
    compat 3; bilateral colour std 13, compat 10) except the bilateral spatial std: their
    80 px would need a 240 px halo, which the model pays for too (a 2048 block with a
    240 px halo reads 1.5x its core). 20 px (a 60 px halo) still spans a 200 m
    neighbourhood at 10 m and 20 m at 1 m, enough to pull labels to the image edges.

    Parameters
    ----------
    iterations
        Mean-field steps (0 returns the input). Five is the usual choice; the labels rarely
        change after that.
    gaussian_sxy_m
        Spatial std of the smoothness kernel in metres; None = 3 pixels per axis.
    gaussian_compat
        Weight of the smoothness kernel (0 disables it).
    bilateral_sxy_m
        Spatial std of the appearance kernel in metres; None = 20 pixels per axis.
    bilateral_srgb
        Colour std of the appearance kernel in scaled units (one band std = 40 units, so
        13 means "about a third of a std apart").
    bilateral_compat
        Weight of the appearance kernel (0 disables it).
    bilateral_downsample
        1 = bilateral message per pixel; 2 = per 2 x 2 cell, spread back to the pixels by
        colour (about twice as fast overall: ~1.5 instead of ~0.7 Mpx/s on a 2304 x 2304
        block with two classes; IoU to truth 0.996 vs 0.994 on the synthetic test scene).
    """

    iterations: int = 5
    gaussian_sxy_m: float | None = None
    gaussian_compat: float = 3.0
    bilateral_sxy_m: float | None = None
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    bilateral_downsample: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise ConfigError(f"crf.iterations={self.iterations!r} must be an integer, e.g. 5")
        if not 0 <= self.iterations <= 100:
            raise ConfigError(f"crf.iterations={self.iterations} must be between 0 and 100")
        ds = self.bilateral_downsample
        if isinstance(ds, bool) or not isinstance(ds, int) or ds not in (1, 2):
            raise ConfigError(
                f"crf.bilateral_downsample={ds!r} must be 1 (full resolution) or 2 (2 x 2 cells)"
            )
        for name in ("gaussian_sxy_m", "bilateral_sxy_m"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise ConfigError(
                    f"crf.{name}={value!r} must be a positive length in metres, or None "
                    "for the default in pixels"
                )
        if not _positive(self.bilateral_srgb):
            raise ConfigError(f"crf.bilateral_srgb={self.bilateral_srgb!r} must be positive")
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not _positive(value, allow_zero=True):
                raise ConfigError(f"crf.{name}={value!r} must be >= 0 (0 disables the kernel)")

    def sigmas_px(
        self, *, pixel_size_m: tuple[float, float]
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """``((gy, gx), (by, bx))``: Gaussian and bilateral spatial stds in pixels."""
        dx, dy = validate_pixel_size(pixel_size_m)

        def axes(sxy_m: float | None, default_px: float) -> tuple[float, float]:
            return (default_px, default_px) if sxy_m is None else (sxy_m / dy, sxy_m / dx)

        return (
            axes(self.gaussian_sxy_m, DEFAULT_GAUSSIAN_SXY_PX),
            axes(self.bilateral_sxy_m, DEFAULT_BILATERAL_SXY_PX),
        )


def _positive(value: object, *, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (value >= 0 if allow_zero else value > 0)


def crf_halo_px(params: CRFParams, *, pixel_size_m: tuple[float, float]) -> int:
    """Halo in pixels for block-wise CRF to match the whole scene (>= 99.9 % of labels).

    Every kernel is fully connected but Gaussian in space: beyond 3 sigma a pixel's weight
    is below 1.1 % of the centre's, and mean field feeds labels, not raw evidence, across
    the block border, so 3 sigma of the widest kernel (plus one bilateral cell, whose
    partial cells at the array border differ from the scene's) bounds the seam. Iterations
    do spread influence further, but it decays geometrically; the block-vs-scene test
    checks the 99.9 % agreement. Capped at ``MAX_HALO_PX``.
    """
    if params.iterations == 0:
        return 0
    (gy, gx), (by, bx) = params.sigmas_px(pixel_size_m=pixel_size_m)
    widest = 0.0
    if params.gaussian_compat > 0:
        widest = max(widest, gy, gx)
    if params.bilateral_compat > 0:
        widest = max(widest, by, bx)
    reach = math.ceil(_TRUNCATE * widest) + params.bilateral_downsample
    return min(reach, MAX_HALO_PX)


# Band combinations for the colour term, best first (canonical roles of geoseg.models.bands).
# Water, vegetation and soil separate in NIR/SWIR, not in visible colour: on the Landsat 7
# NC scene a water CRF on (nir, swir1, green) raised IoU to the land-cover water class from
# 0.30 to 0.46, while on (blue, green, red) it fell to 0.20 (dark water ~ dark forest).
_COLOUR_PREFERENCE = (
    ("nir", "swir1", "green"),
    ("nir", "swir1", "red"),
    ("nir", "red", "green"),
    ("red", "green", "blue"),
)
# Cards with fewer bands (the spectral methods' two: ndwi green+nir, mndwi green+swir1,
# ndvi nir+red) get an infrared-weighted false colour (ir, ir, other): both bands count, the
# infrared one twice. With green alone, NDWI's CRF on the Landsat 7 held-out region fell from
# 0.72 to 0.52 water IoU (dark forest and shadows look like water in green); with
# (nir, nir, green) it gives 0.74.
_INFRARED = ("nir", "nir08", "swir1", "swir2", "rededge3", "rededge2", "rededge1")
_SECOND = ("green", "red", "blue", "coastal", "swir1", "swir2", "nir08", "nir")


def colour_bands(band_roles: Sequence[str]) -> tuple[int, int, int] | None:
    """Indices of the bands for the CRF colour term, from a model card's band roles.

    Prefers NIR / SWIR / visible (false colour) when the model has them, then true colour;
    with fewer bands, an infrared band twice and one other band once. None (= the first
    three bands) when there is no infrared band or nothing to pair it with.

    Examples
    --------
    >>> colour_bands(("blue", "green", "red", "nir", "swir1", "swir2"))
    (3, 4, 1)
    >>> colour_bands(("red", "green", "blue"))
    (0, 1, 2)
    >>> colour_bands(("green", "nir"))
    (1, 1, 0)
    """
    roles = [r.lower() for r in band_roles]
    for combo in _COLOUR_PREFERENCE:
        if all(r in roles for r in combo):
            i, j, k = (roles.index(r) for r in combo)
            return (i, j, k)
    ir = next((roles.index(r) for r in _INFRARED if r in roles), None)
    if ir is None:
        return None
    other = next((roles.index(r) for r in _SECOND if r in roles and roles.index(r) != ir), None)
    return None if other is None else (ir, ir, other)


def colour_features(
    image: np.ndarray,
    *,
    image_scale: tuple[np.ndarray, np.ndarray],
    rgb: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Bands for the bilateral kernel, scaled to the reference uint8 range (as float32).

    Parameters
    ----------
    image
        ``(B, H, W)`` raw model input bands, any numeric dtype.
    image_scale
        ``(mean, std)``, each ``(B,)``, the model card's normalisation.
    rgb
        Three band indices; None = the first three, or band 0 alone when ``B < 3``.

    Returns
    -------
    numpy.ndarray
        ``(k, H, W)`` float32 in ``[0, 255]``, k = 3 or 1. A single band stands for the
        band repeated three times: the caller divides it by ``srgb / sqrt(3)``, which gives
        the same colour distances for a third of the cost.
    """
    if image.ndim != 3 or image.shape[0] < 1:
        raise ConfigError(f"image must be (bands, H, W) with at least one band, got {image.shape}")
    n_bands = image.shape[0]
    mean = np.asarray(image_scale[0], dtype=np.float64).reshape(-1)
    std = np.asarray(image_scale[1], dtype=np.float64).reshape(-1)
    if mean.size != n_bands or std.size != n_bands:
        raise ConfigError(
            f"image_scale has {mean.size} means and {std.size} stds for {n_bands} bands; "
            "pass the model card's per-band mean and std"
        )
    if not np.all(np.isfinite(std) & (std > 0)) or not np.all(np.isfinite(mean)):
        raise ConfigError(f"image_scale std must be positive and finite, got {std.tolist()}")
    if rgb is None:
        bands: Sequence[int] = (0, 1, 2) if n_bands >= 3 else (0,)
    else:
        if len(rgb) != 3 or any(not 0 <= int(b) < n_bands for b in rgb):
            raise ConfigError(
                f"rgb={rgb!r} must be three band indices in 0..{n_bands - 1} "
                "(positions in the model's band list)"
            )
        bands = tuple(int(b) for b in rgb)
    out = np.empty((len(bands), *image.shape[1:]), dtype=np.float32)
    for i, b in enumerate(bands):
        # 128 + 40 (x - mean) / std as one multiply-add, clipped in place.
        gain = np.float32(40.0 / std[b])
        np.multiply(image[b], gain, out=out[i], casting="unsafe")
        out[i] += np.float32(128.0 - 40.0 * mean[b] / std[b])
        np.maximum(out[i], 0.0, out=out[i])
        np.minimum(out[i], 255.0, out=out[i])
    if np.issubdtype(image.dtype, np.floating):
        out[np.isnan(out)] = 128.0  # NaNs sit on invalid pixels; keep the features finite
    return out


def _check_inputs(probs: np.ndarray, image: np.ndarray, valid: np.ndarray) -> None:
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ConfigError(f"probs must be (classes >= 2, H, W), got shape {probs.shape}")
    if valid.shape != probs.shape[1:] or valid.dtype != np.bool_:
        raise ConfigError(
            f"valid must be bool shaped {probs.shape[1:]}, got {valid.dtype} {valid.shape}"
        )
    if image.ndim != 3 or image.shape[1:] != probs.shape[1:]:
        raise ConfigError(
            f"image must be (bands, {probs.shape[1]}, {probs.shape[2]}), got {image.shape}"
        )


class _Grid:
    """Pads a block so that ``f x f`` cells (f = 1 or 2) line up with the scene's pixel grid."""

    def __init__(self, shape: tuple[int, int], origin_px: tuple[int, int], f: int) -> None:
        self.f = f
        self.shape = shape
        self.top = origin_px[0] % f  # Python's modulo: also right for negative offsets
        self.left = origin_px[1] % f
        self.rows = -(-(shape[0] + self.top) // f)
        self.cols = -(-(shape[1] + self.left) // f)
        self.bottom = self.rows * f - shape[0] - self.top
        self.right = self.cols * f - shape[1] - self.left
        # Scene pixel coordinates of each cell's centre.
        self.row0 = origin_px[0] - self.top + (f - 1) / 2.0
        self.col0 = origin_px[1] - self.left + (f - 1) / 2.0

    def pad(self, a: np.ndarray, value: float | bool = 0) -> np.ndarray:
        widths = [(0, 0)] * (a.ndim - 2) + [(self.top, self.bottom), (self.left, self.right)]
        if not any(w for pair in widths for w in pair):
            return a
        return np.pad(a, widths, constant_values=value)

    def crop(self, a: np.ndarray) -> np.ndarray:
        h, w = self.shape
        return a[..., self.top : self.top + h, self.left : self.left + w]

    def pool(self, a: np.ndarray) -> np.ndarray:
        """Sum over each cell: ``(..., rows*f, cols*f)`` -> ``(..., rows, cols)``."""
        if self.f == 1:
            return a
        # Strided adds: several times faster than a reshape-sum over length-2 axes.
        out: np.ndarray = a[..., 0::2, 0::2] + a[..., 1::2, 0::2]
        out += a[..., 0::2, 1::2]
        out += a[..., 1::2, 1::2]
        return out


class _GuidedSpread:
    """Spread 2 x 2 cell messages to pixels, guided by each pixel's own colour.

    A cell straddling an edge has a mixed colour and a mixed message; copying it to its four
    pixels blurs every edge by a pixel. Instead each pixel takes a weighted mean of the
    messages of its four nearest cells (the bilinear footprint, which always lies on the
    pixel's side of the cell), weighted by bilinear distance times the bilateral kernel's
    colour similarity exp(-|c_pixel - c_cell|^2 / 2 srgb^2): the same-coloured cells on the
    pixel's own side dominate (a joint bilateral upsampling). Weights are fixed per block,
    so each iteration costs 16 multiply-adds per pixel and class.
    """

    _BILINEAR = (0.5625, 0.1875, 0.1875, 0.0625)  # own, vertical, horizontal, diagonal

    def __init__(
        self,
        grid: _Grid,
        colours: np.ndarray,
        cell_colours: np.ndarray,
        cells: np.ndarray,
        srgb: float,
    ) -> None:
        self.grid = grid
        inv = np.float32(-0.5 / srgb**2)
        padded = np.pad(cell_colours, ((0, 0), (1, 1), (1, 1)), mode="edge")
        present = np.pad(cells, 1, constant_values=False)
        all_present = bool(cells.all())
        rows, cols = grid.rows, grid.cols
        self.weights: dict[tuple[int, int], list[tuple[tuple[int, int], np.ndarray]]] = {}
        for a in (0, 1):
            for b in (0, 1):
                sy, sx = (-1 if a == 0 else 1), (-1 if b == 0 else 1)
                pix = colours[:, a::2, b::2]
                offsets = ((0, 0), (sy, 0), (0, sx), (sy, sx))
                dist2 = []  # squared colour distance to each cell, inf where no cell
                for dy, dx in offsets:
                    win = (slice(1 + dy, 1 + dy + rows), slice(1 + dx, 1 + dx + cols))
                    d = np.zeros((rows, cols), dtype=np.float32)
                    for band in range(colours.shape[0]):
                        diff = pix[band] - padded[band][win]
                        diff *= diff
                        d += diff
                    if not all_present:
                        d[~present[win]] = np.inf
                    dist2.append(d)
                # Subtracting each pixel's nearest colour distance leaves the normalised
                # weights unchanged but keeps them from all underflowing for an outlier.
                nearest = np.minimum(np.minimum(dist2[0], dist2[1]), np.minimum(dist2[2], dist2[3]))
                if not all_present:
                    nearest[~np.isfinite(nearest)] = 0.0
                raw = []
                for d, w0 in zip(dist2, self._BILINEAR, strict=True):
                    d -= nearest
                    d *= inv
                    np.exp(d, out=d)
                    d *= np.float32(w0)
                    raw.append(d)
                total = raw[0] + raw[1]
                total += raw[2]
                total += raw[3]
                np.maximum(total, np.float32(1e-30), out=total)
                for w in raw:
                    w /= total
                self.weights[(a, b)] = list(zip(offsets, raw, strict=True))

    def __call__(self, cell_msg: np.ndarray, out: np.ndarray) -> None:
        """Add the spread messages ``(C, rows, cols)`` to ``out`` ``(C, 2 rows, 2 cols)``."""
        rows, cols = self.grid.rows, self.grid.cols
        padded = np.pad(cell_msg, ((0, 0), (1, 1), (1, 1)), mode="edge")
        for (a, b), entries in self.weights.items():
            target = out[:, a::2, b::2]
            for (dy, dx), w in entries:
                target += padded[:, 1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] * w


def _bilateral_lattice(
    cell_colours: np.ndarray,
    cells: np.ndarray,
    *,
    grid: _Grid,
    sigma_m: tuple[float, float],
    pixel_size_m: tuple[float, float],
    srgb: float,
    compat: float,
    n_classes: int,
) -> dcrf.DenseCRF:
    """A zero-unary pydensecrf model over the valid cells with the bilateral kernel."""
    dx, dy = pixel_size_m
    sy, sx = sigma_m
    rr, cc = np.nonzero(cells)
    feats = np.empty((2 + cell_colours.shape[0], rr.size), dtype=np.float32)
    # Scene coordinates in ground metres over sigma: anisotropy is handled exactly and the
    # lattice is shared with the whole scene (computed in float64: offsets can be large).
    feats[0] = (grid.row0 + rr * grid.f) * (dy / sy)
    feats[1] = (grid.col0 + cc * grid.f) * (dx / sx)
    feats[2:] = cell_colours[:, rr, cc] / np.float32(srgb)
    model = dcrf.DenseCRF(rr.size, n_classes)
    model.setUnaryEnergy(np.zeros((n_classes, rr.size), dtype=np.float32))
    model.addPairwiseEnergy(feats, compat=float(compat))
    return model


def crf_refine(
    probs: np.ndarray,
    *,
    image: np.ndarray,
    valid: np.ndarray,
    params: CRFParams,
    pixel_size_m: tuple[float, float],
    image_scale: tuple[np.ndarray, np.ndarray],
    rgb: tuple[int, int, int] | None = None,
    origin_px: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Refine class probabilities with a dense CRF (halo-aware, nodata-aware).

    Parameters
    ----------
    probs
        ``(C, H, W)`` softmax probabilities over the block's core plus halo, C >= 2.
    image
        ``(B, H, W)`` the model's input bands in card order, raw dtype, B >= 1.
    valid
        ``(H, W)`` bool, False on nodata and outside the scene.
    params
        Kernel widths, weights, iterations.
    pixel_size_m
        ``(dx_m, dy_m)`` ground size of a pixel; one value for the whole scene.
    image_scale
        ``(mean, std)`` per band from the model card; colours are
        ``clip(128 + 40 (x - mean) / std, 0, 255)``.
    rgb
        Three band indices for the colour term; None = the first three (band 0 if B < 3).
    origin_px
        ``(row, col)`` of ``probs[:, 0, 0]`` in the scene's pixel grid (the block's read
        window offsets, negative at the top/left scene edge). Needed for block-wise output
        to match the whole scene; ``(0, 0)`` for a whole scene.

    Returns
    -------
    numpy.ndarray
        ``(C, H, W)`` float32; on valid pixels the refined marginals (sum to 1), on
        invalid pixels the input probabilities unchanged. Within :func:`crf_halo_px` of
        an inner block border the values may differ from the whole scene: crop them.

    Raises
    ------
    ConfigError
        On malformed arrays, pixel size, ``image_scale`` or ``rgb``.
    """
    _check_inputs(probs, image, valid)
    dx, dy = validate_pixel_size(pixel_size_m)
    colours = colour_features(image, image_scale=image_scale, rgb=rgb)
    out = np.array(probs, dtype=np.float32, copy=True)
    use_gauss = params.gaussian_compat > 0
    use_bilateral = params.bilateral_compat > 0
    if params.iterations == 0 or not valid.any() or not (use_gauss or use_bilateral):
        return out
    (gy, gx), (by, bx) = params.sigmas_px(pixel_size_m=(dx, dy))
    n_classes = probs.shape[0]
    grid = _Grid(valid.shape, (int(origin_px[0]), int(origin_px[1])), params.bilateral_downsample)

    # The state is the logits of classes 1..C-1 against class 0, z_c = log(q_c / q_0): one
    # channel for the usual two classes, half the work of a per-class softmax. Everything
    # lives on the padded grid, whose padding is invalid.
    vmask = grid.pad(valid, False)
    vf = vmask.astype(np.float32)
    clipped = grid.pad(out, 1.0).copy()
    np.maximum(clipped, PROB_FLOOR, out=clipped)  # in place: np.clip is several times slower
    np.minimum(clipped, 1.0, out=clipped)
    log_p = np.log(clipped, out=clipped)
    unary = log_p[1:] - log_p[0]
    del log_p, clipped
    unary[:, ~vmask] = 0.0  # uniform unary on nodata (and NaN-safe); it never feeds back
    q = _class_probs(unary)

    if use_gauss:
        inv_norm = ndi.gaussian_filter(vf, (gy, gx), mode="constant", truncate=_TRUNCATE)
        np.maximum(inv_norm, 1e-12, out=inv_norm)
        np.divide(1.0, inv_norm, out=inv_norm)
        inv_norm *= vf
        w_vf = np.float32(params.gaussian_compat) * vf
    if use_bilateral:
        counts = grid.pool(vf)
        cells = counts > 0
        pixel_colours = grid.pad(colours)
        pixel_colours *= vf  # our own array; nodata colours matter nowhere
        cell_colours = grid.pool(pixel_colours) / np.maximum(counts, 1.0)
        # One band stands for three equal ones (see colour_features): same distances.
        srgb = params.bilateral_srgb / (math.sqrt(3.0) if colours.shape[0] == 1 else 1.0)
        model = _bilateral_lattice(
            cell_colours,
            cells,
            grid=grid,
            sigma_m=(by * dy, bx * dx),
            pixel_size_m=(dx, dy),
            srgb=srgb,
            compat=params.bilateral_compat,
            n_classes=n_classes,
        )
        spread = (
            _GuidedSpread(grid, pixel_colours, cell_colours, cells, srgb) if grid.f == 2 else None
        )
        del pixel_colours, cell_colours
        q_lattice, tmp1, tmp2 = model.startInference()
        q_view = np.asarray(q_lattice)  # Eigen's buffer: written in, read out each step
        cell_msg = np.zeros((n_classes - 1, grid.rows, grid.cols), dtype=np.float32)
        inv_counts = (1.0 / counts[cells]).astype(np.float32)
        del counts

    w_gauss = np.float32(params.gaussian_compat)
    for _ in range(params.iterations):
        q *= vf  # nodata carries no mass into either kernel
        z = unary.copy()
        if use_gauss:
            # Potts: w (K(q_c) - K(q_0)) with K(q_0) = 1 - sum_c K(q_c) on valid pixels.
            k = _gaussian_mean(q, inv_norm, (gy, gx))
            if k.shape[0] == 1:
                k *= 2 * w_gauss  # w (2 K - 1)
            else:
                k += k.sum(axis=0)
                k *= w_gauss
            k -= w_vf
            z += k
            del k
        if use_bilateral:
            pooled = grid.pool(q)[:, cells] * inv_counts
            q_view[1:] = pooled
            q_view[0] = 1.0 - pooled.sum(axis=0)
            model.stepInference(q_lattice, tmp1, tmp2)
            # stepInference with a zero unary leaves softmax(w_b K_b(Q)) in Q, so the log
            # ratio against class 0 is the bilateral message w_b (K_b(q_c) - K_b(q_0)).
            logs = np.log(np.maximum(q_view, 1e-30))
            cell_msg[:, cells] = logs[1:] - logs[0]
            if spread is None:
                z += cell_msg
            else:
                spread(cell_msg, z)
        q = _class_probs(z)

    refined = grid.crop(q)
    np.copyto(out[1:], refined, where=valid)  # far faster than boolean-mask indexing
    np.copyto(out[0], 1.0 - refined.sum(axis=0), where=valid)
    return out


def _class_probs(z: np.ndarray) -> np.ndarray:
    """``q_c`` for classes 1..C-1 from logits against class 0 (``q_0 = 1 - sum q_c``)."""
    if z.shape[0] == 1:
        return np.asarray(expit(z), dtype=np.float32)
    top = np.maximum(z.max(axis=0), 0.0)
    e = np.exp(z - top)
    return np.asarray(e / (np.exp(-top) + e.sum(axis=0)), dtype=np.float32)


def _gaussian_mean(q: np.ndarray, inv_norm: np.ndarray, sigma: tuple[float, float]) -> np.ndarray:
    """Normalised Gaussian average over valid pixels of classes 1..C-1 (q is 0 on nodata)."""
    out = np.empty_like(q)
    for c in range(q.shape[0]):
        ndi.gaussian_filter(q[c], sigma, output=out[c], mode="constant", truncate=_TRUNCATE)
        out[c] *= inv_norm
    return out
