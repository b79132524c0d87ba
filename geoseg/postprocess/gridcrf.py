"""Halo-aware grid CRF: a Potts model over 4- or 8-connected pixel neighbours.

The energy of a labelling ``x`` of the valid pixels is::

    E(x) = sum_i -log P_i(x_i)  +  weight * sum_(i,j) w_ij [x_i != x_j]

with the dense CRF's unaries (the model's probabilities clipped to ``[PROB_FLOOR, 1]``,
:mod:`geoseg.postprocess.crf`) and one term per pair of neighbouring valid pixels:
``w_ij = 1`` for the 4 edge neighbours and ``1 / sqrt(2)`` for the 4 diagonal ones (with
``connectivity=8``), so a straight boundary costs about the same in every direction. Nodata
pixels have no term at all: they neither pull nor are pulled, and they are returned as given.

Inference:

* mean field (``iterations``): ``Q_i(l) ∝ P_i(l) exp(weight * sum_j w_ij Q_j(l))``, the
  pixels updated in a fixed colouring (2 x 2 parity classes of scene coordinates, never two
  neighbours in one class), so each step is an exact coordinate descent of the mean-field
  free energy (no oscillation, unlike updating all pixels at once);
* then ICM (``icm_sweeps``): each pixel takes the label minimising its energy given its
  neighbours' labels, same colouring, starting from the mean field's labels (or the input
  argmax with ``iterations=0``); it never raises the energy.

The colouring follows the scene's pixel grid (``origin_px``), so every pixel sees exactly
the same sequence of updates in a block as in the whole scene: with a halo of
:func:`gridcrf_halo_px` pixels the cropped result is identical, not approximately equal.

No graph-cut solver is installed with geoseg (PyMaxflow would add one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from geoseg.errors import ConfigError
from geoseg.postprocess.crf import PROB_FLOOR

__all__ = [
    "GridCRFParams",
    "grid_energy",
    "gridcrf_halo_px",
    "gridcrf_refine",
    "unaries",
]

_DIAGONAL = 1.0 / math.sqrt(2.0)
# Update order: (row parity, col parity) in scene coordinates. With 4-connectivity the first
# two (and the last two) classes are not neighbours, so the sweep is a red-black sweep.
_PHASES = ((0, 0), (1, 1), (0, 1), (1, 0))


@dataclass(frozen=True, kw_only=True, slots=True)
class GridCRFParams:
    """Grid-CRF settings.

    Parameters
    ----------
    iterations
        Mean-field sweeps (0: none, ICM starts from the input's argmax).
    icm_sweeps
        ICM sweeps after the mean field (0: the labels are the mean field's argmax).
    weight
        Potts weight per edge neighbour, in units of log-probability: a pixel changes
        class when its neighbours' disagreement outweighs its own log-odds.
    connectivity
        4 (edge neighbours) or 8 (also the diagonals, at weight / sqrt(2)).
    """

    iterations: int = 5
    icm_sweeps: int = 0
    weight: float = 1.0
    connectivity: int = 8

    def __post_init__(self) -> None:
        for name in ("iterations", "icm_sweeps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise ConfigError(f"gridcrf.{name}={value!r} must be an integer between 0 and 100")
        if self.connectivity not in (4, 8) or isinstance(self.connectivity, bool):
            raise ConfigError(f"gridcrf.connectivity={self.connectivity!r} must be 4 or 8")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"gridcrf.weight={w!r} must be a number >= 0 (0 disables it)")

    @property
    def phases(self) -> int:
        """Sequential update phases per sweep (each moves information one pixel)."""
        return 2 if self.connectivity == 4 else 4


def gridcrf_halo_px(params: GridCRFParams) -> int:
    """Halo in pixels for a block's cropped result to equal the whole scene's exactly.

    Each sweep updates the colour classes one after the other, and each update reads the
    neighbours (radius 1) as the previous phase left them, so a sweep carries information
    ``phases`` pixels: 2 with 4-connectivity (red-black), 4 with 8.
    """
    if params.weight == 0:
        return 0
    return (params.iterations + params.icm_sweeps) * params.phases


def _neighbours(connectivity: int) -> tuple[tuple[int, int, float], ...]:
    edges = ((-1, 0, 1.0), (1, 0, 1.0), (0, -1, 1.0), (0, 1, 1.0))
    if connectivity == 4:
        return edges
    return (*edges, *((dy, dx, _DIAGONAL) for dy in (-1, 1) for dx in (-1, 1)))


def unaries(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``log P`` clipped to ``[log PROB_FLOOR, 0]`` as the dense CRF uses it, 0 on nodata."""
    out = np.asarray(probs, dtype=np.float32).copy()
    np.maximum(out, PROB_FLOOR, out=out)
    np.minimum(out, 1.0, out=out)
    np.log(out, out=out)
    out[:, ~valid] = 0.0
    return out


def grid_energy(
    labels: np.ndarray, probs: np.ndarray, valid: np.ndarray, *, params: GridCRFParams
) -> float:
    """:math:`E(x)` of ``labels`` over the valid pixels (see the module docs), in float64."""
    _check(probs, valid)
    log_p = unaries(probs, valid).astype(np.float64)
    x = labels.astype(np.int64)
    unary = -np.take_along_axis(log_p, np.where(valid, x, 0)[None], axis=0)[0]
    energy = float(unary[valid].sum())
    height, width = valid.shape
    for dy, dx, w in _neighbours(params.connectivity):
        if (dy, dx) <= (0, 0):
            continue  # each unordered pair once
        a = (slice(0, height - dy), slice(max(0, -dx), width - max(0, dx)))
        b = (slice(dy, height), slice(max(0, dx), width - max(0, -dx)))
        cut = valid[a] & valid[b] & (x[a] != x[b])
        energy += params.weight * w * float(cut.sum())
    return energy


def _check(probs: np.ndarray, valid: np.ndarray) -> None:
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ConfigError(f"probs must be (classes >= 2, H, W), got shape {probs.shape}")
    if valid.shape != probs.shape[1:] or valid.dtype != np.bool_:
        raise ConfigError(
            f"valid must be bool shaped {probs.shape[1:]}, got {valid.dtype} {valid.shape}"
        )


class _Lattice:
    """Pixels of one scene-parity class of a block, and their neighbours' views."""

    def __init__(self, shape: tuple[int, int], origin: tuple[int, int], phase: tuple[int, int]):
        self.row = (phase[0] - origin[0]) % 2  # first array row of this parity
        self.col = (phase[1] - origin[1]) % 2
        self.rows = len(range(self.row, shape[0], 2))
        self.cols = len(range(self.col, shape[1], 2))

    def own(self) -> tuple[slice, slice]:
        return slice(self.row, None, 2), slice(self.col, None, 2)

    def own_padded(self) -> tuple[slice, slice]:
        """This class's pixels in an array padded by one pixel."""
        return (
            slice(1 + self.row, 1 + self.row + 2 * self.rows - 1, 2),
            slice(1 + self.col, 1 + self.col + 2 * self.cols - 1, 2),
        )

    def padded(self, dy: int, dx: int) -> tuple[slice, slice]:
        """This class's neighbours at ``(dy, dx)`` in an array padded by one pixel."""
        r, c = self.row + 1 + dy, self.col + 1 + dx
        return slice(r, r + 2 * self.rows - 1, 2), slice(c, c + 2 * self.cols - 1, 2)


def gridcrf_refine(
    probs: np.ndarray,
    *,
    valid: np.ndarray,
    params: GridCRFParams,
    origin_px: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Refine class probabilities with a grid CRF (halo-aware, nodata-aware).

    Parameters
    ----------
    probs
        ``(C, H, W)`` probabilities over the block's core plus halo, C >= 2.
    valid
        ``(H, W)`` bool, False on nodata and outside the scene.
    params
        Weight, connectivity, mean-field and ICM sweeps.
    origin_px
        ``(row, col)`` of ``probs[:, 0, 0]`` in the scene's pixel grid (the block's read
        window offsets); ``(0, 0)`` for a whole scene.

    Returns
    -------
    labels
        ``(H, W)`` uint8: the refined labels on valid pixels, the input's argmax elsewhere.
    probs
        ``(C, H, W)`` float32: on valid pixels the mean-field marginals, or after ICM each
        pixel's distribution given its neighbours' final labels; elsewhere the input.
        Within :func:`gridcrf_halo_px` of an inner block border they differ from the
        whole scene's: crop them.
    """
    _check(probs, valid)
    n_classes = probs.shape[0]
    if n_classes > 255:
        raise ConfigError(f"{n_classes} classes do not fit uint8 labels (at most 255)")
    out = np.array(probs, dtype=np.float32, copy=True)
    labels = np.argmax(np.nan_to_num(out, nan=0.0), axis=0).astype(np.uint8)
    if params.weight == 0 or not valid.any() or params.iterations + params.icm_sweeps == 0:
        return labels, out
    height, width = valid.shape
    origin = (int(origin_px[0]), int(origin_px[1]))
    lattices = [_Lattice((height, width), origin, p) for p in _PHASES]
    neighbours = _neighbours(params.connectivity)
    log_p = unaries(out, valid)
    # The state is classes 1..C-1 (class 0 is what is left on a valid pixel), padded by one
    # pixel and 0 on nodata, so nodata sends no message. Messages are taken against class
    # 0: with S_l = sum_j w_ij q_j(l) and N = sum_j w_ij [j valid], the logit of class l
    # against class 0 is u_l + weight (S_l - S_0), S_0 = N - sum_c S_c.
    unary = log_p[1:] - log_p[0]
    vpad = np.pad(valid, 1, constant_values=False)
    vpad_f = vpad.astype(np.float32)[None]
    weight = np.float32(params.weight)

    def gather(state: np.ndarray, lat: _Lattice) -> np.ndarray:
        """``sum_j w_ij state_j`` at the lattice's pixels (``state`` padded)."""
        total = np.zeros((state.shape[0], lat.rows, lat.cols), dtype=np.float32)
        for dy, dx, w in neighbours:
            view = state[(slice(None), *lat.padded(dy, dx))]
            if w == 1.0:
                total += view
            else:
                total += view * np.float32(w)
        return total

    reach = [gather(vpad_f, lat) for lat in lattices]  # N at each lattice's pixels

    def logits(state: np.ndarray, lat: _Lattice, n: np.ndarray) -> np.ndarray:
        s = gather(state, lat)
        others = s.sum(axis=0) - n[0]  # sum_c S_c - N = -S_0
        s += others
        s *= weight
        s += unary[(slice(None), *lat.own())]
        return s

    q = np.zeros((n_classes - 1, height + 2, width + 2), dtype=np.float32)
    q[:, 1:-1, 1:-1] = _class_probs(unary) * valid
    for _ in range(params.iterations):
        for lat, n in zip(lattices, reach, strict=True):
            inner = lat.own_padded()
            q[(slice(None), *inner)] = _class_probs(logits(q, lat, n)) * vpad[inner]
    probs_fg = q[:, 1:-1, 1:-1]
    if params.iterations:
        np.copyto(labels, _labels(probs_fg), where=valid)

    if params.icm_sweeps:
        onehot = np.zeros_like(q)
        for k in range(1, n_classes):
            onehot[k - 1, 1:-1, 1:-1] = (labels == k) & valid
        for _ in range(params.icm_sweeps):
            for lat, n in zip(lattices, reach, strict=True):
                own, inner = lat.own(), lat.own_padded()
                z = logits(onehot, lat, n)
                current = labels[own]
                # Score of each class against class 0 (whose score is 0); ties keep the
                # current label, so the energy never rises.
                best = _labels_from_logits(z)
                mine = np.where(
                    current == 0,
                    np.float32(0.0),
                    np.take_along_axis(z, np.maximum(current.astype(np.int64) - 1, 0)[None], 0)[0],
                )
                top = np.where(
                    best == 0,
                    np.float32(0.0),
                    np.take_along_axis(z, np.maximum(best.astype(np.int64) - 1, 0)[None], 0)[0],
                )
                new = np.where((top > mine) & valid[own], best, current).astype(np.uint8)
                labels[own] = new
                for k in range(1, n_classes):
                    onehot[(k - 1, *inner)] = (new == k) & vpad[inner]
        # Confidence: each pixel's class distribution given its neighbours' final labels.
        probs_fg = np.empty((n_classes - 1, height, width), dtype=np.float32)
        for lat, n in zip(lattices, reach, strict=True):
            probs_fg[(slice(None), *lat.own())] = _class_probs(logits(onehot, lat, n))
    for k in range(1, n_classes):
        np.copyto(out[k], probs_fg[k - 1], where=valid)
    # The background is what the other classes leave; float32 sums of them can pass 1 by an
    # ulp where they take it all, which must not leave a negative probability.
    np.copyto(out[0], np.maximum(1.0 - probs_fg.sum(axis=0), 0.0), where=valid)
    return labels, out


def _class_probs(z: np.ndarray) -> np.ndarray:
    """``q_c`` for classes 1..C-1 from logits against class 0 (``q_0 = 1 - sum q_c``)."""
    if z.shape[0] == 1:
        return np.asarray(expit(z), dtype=np.float32)
    top = np.maximum(z.max(axis=0), 0.0)
    e = np.exp(z - top)
    return np.asarray(e / (np.exp(-top) + e.sum(axis=0)), dtype=np.float32)


def _labels_from_logits(z: np.ndarray) -> np.ndarray:
    """Argmax over (0, z_1, ..., z_C-1): ties to the lowest class, as ``np.argmax``."""
    best = np.argmax(z, axis=0) + 1
    return np.where(z.max(axis=0) > 0, best, 0).astype(np.uint8)


def _labels(probs_fg: np.ndarray) -> np.ndarray:
    """Argmax over (1 - sum q_c, q_1, ..., q_C-1)."""
    q0 = 1.0 - probs_fg.sum(axis=0)
    best = np.argmax(probs_fg, axis=0) + 1
    return np.where(probs_fg.max(axis=0) > q0, best, 0).astype(np.uint8)
