"""Weighted blending of overlapping tile predictions.

Each tile's probabilities are multiplied by a separable window that ramps up as
``sin^2`` over the first ``overlap`` pixels and down as ``cos^2`` over the last ones, so
on a regular grid two neighbouring ramps sum to exactly one. The accumulator still divides
by the summed weights, which keeps the blend a convex combination where tiles were snapped
to the window edge and where nodata pixels carry no weight.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BlendAccumulator", "blend_weights", "ramp"]


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D window of length ``tile``: cosine ramps over ``overlap`` pixels at both ends.

    Values are strictly positive (pixel centres are used), so a pixel covered by a single
    tile edge still gets a defined blend.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        x = (np.arange(overlap) + 0.5) / overlap
        up = np.sin(0.5 * np.pi * x) ** 2
        w[:overlap] = up
        w[tile - overlap :] = up[::-1]
    return w


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """2-D separable blending window, shape ``(tile, tile)``, float32."""
    r = ramp(tile, overlap)
    return np.outer(r, r).astype(np.float32)


class BlendAccumulator:
    """Accumulates weighted tile probabilities over one window.

    Parameters
    ----------
    n_classes
        Number of probability channels.
    shape
        ``(height, width)`` of the window the tiles lie in.
    tile, overlap
        Tile size and overlap; fix the blending window.
    """

    def __init__(self, n_classes: int, shape: tuple[int, int], *, tile: int, overlap: int):
        self._acc = np.zeros((n_classes, *shape), dtype=np.float32)
        self._wsum = np.zeros(shape, dtype=np.float32)
        self._window = blend_weights(tile, overlap)
        self._tile = tile
        self._spent = False

    def add(self, probs: np.ndarray, *, row: int, col: int, valid: np.ndarray) -> None:
        """Add one tile's probabilities ``(C, tile, tile)`` at ``(row, col)``.

        ``valid`` ``(tile, tile)`` bool: pixels that carry weight (nodata pixels do not).
        """
        if self._spent:
            raise RuntimeError("BlendAccumulator.add() after result()")
        t = self._tile
        w = self._window * valid
        sl = (slice(row, row + t), slice(col, col + t))
        self._acc[(slice(None), *sl)] += probs * w
        self._wsum[sl] += w

    def add_part(self, probs: np.ndarray, *, row: int, col: int, valid: np.ndarray) -> None:
        """Add the part of one tile ``(C, tile, tile)`` at ``(row, col)`` that lies in the
        window (the tile may hang over any edge of it).

        ``valid`` ``(H, W)`` bool over the whole window. Each pixel gets exactly the sums
        :meth:`add` would give it.
        """
        if self._spent:
            raise RuntimeError("BlendAccumulator.add_part() after result()")
        t = self._tile
        h, w = self._wsum.shape
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + t, h), min(col + t, w)
        if r1 <= r0 or c1 <= c0:
            return
        sub = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
        sl = (slice(r0, r1), slice(c0, c1))
        weight = self._window[sub] * valid[sl]
        self._acc[(slice(None), *sl)] += probs[(slice(None), *sub)] * weight
        self._wsum[sl] += weight

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Blended probabilities ``(C, H, W)`` and the covered mask ``(H, W)``.

        Pixels no valid tile pixel covered get probability 0 in every class and
        ``covered=False``. The division happens in place (no second block-sized array):
        the accumulator is spent afterwards.
        """
        if self._spent:
            raise RuntimeError("BlendAccumulator.result() was already taken")
        covered = self._wsum > 0
        # Uncovered pixels received zero weight, so their sums are already 0.
        probs = np.divide(self._acc, self._wsum, out=self._acc, where=covered[np.newaxis])
        self._spent = True
        return probs, covered
