"""Synthetic scenes with known truth for the post-processing tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage as ndi

SCALE = (np.full(3, 100.0), np.full(3, 40.0))
"""Model-card style per-band (mean, std) matching the synthetic images below."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Scene:
    truth: np.ndarray  # (H, W) bool, the foreground class
    image: np.ndarray  # (3, H, W) float32 raw bands
    probs: np.ndarray  # (2, H, W) float32, noisy model output
    valid: np.ndarray  # (H, W) bool


def blob_scene(
    size: int = 256,
    *,
    seed: int = 0,
    blob_sigma: float = 5.0,
    noise: float = 1.5,
    nodata: tuple[slice, slice] | None = None,
) -> Scene:
    """Random smooth blobs as truth, a colour image that shows them, noisy probabilities.

    The probabilities are a logistic of +-1.2 plus Gaussian noise (std ``noise``): the
    salt-and-pepper errors a weak model makes, independent between pixels.
    """
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=(size, size)), blob_sigma)
    truth = field / field.std() > 0.2
    image = np.stack(
        [
            np.where(truth, 70.0, 140.0) + rng.normal(0, 15, truth.shape),
            np.where(truth, 90.0, 120.0) + rng.normal(0, 15, truth.shape),
            rng.normal(100.0, 15, truth.shape),
        ]
    ).astype(np.float32)
    logit = np.where(truth, 1.2, -1.2) + rng.normal(0, noise, truth.shape)
    p1 = 1.0 / (1.0 + np.exp(-logit))
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    valid = np.ones(truth.shape, dtype=bool)
    if nodata is not None:
        valid[nodata] = False
    return Scene(truth=truth, image=image, probs=probs, valid=valid)


def iou(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    inter = np.count_nonzero(pred & truth & valid)
    union = np.count_nonzero((pred | truth) & valid)
    return inter / union


@pytest.fixture(scope="session")
def scene() -> Scene:
    return blob_scene(256, seed=0)
