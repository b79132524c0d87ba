"""Synthetic scenes and a quickly trained real model for tests.

The scene is a 4-band (blue, green, red, nir) uint16 image with textured land, water
bodies (dark in nir) and straight roads (bright in the visible bands), plus the class
truth. The model is a real segmentation-models-pytorch U-Net trained on it for a few
seconds: enough to segment it well, so tiling and blending differences would show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.registry import build_network, save_model
from geoseg.tiling.io import write_array

BANDS = ("blue", "green", "red", "nir")
CLASSES = (
    ClassInfo(name="background", color="#000000"),
    ClassInfo(name="water", color="#1f78b4"),
    ClassInfo(name="roads", color="#e31a1c"),
)
UTM_TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


def synthetic_truth(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Class map: 0 land, 1 water blobs, 2 roads (3 px wide straight lines)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((height, width)), sigma=12)
    water = noise > np.quantile(noise, 0.8)
    truth = water.astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(max(1, (height + width) // 150)):
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
        truth[(dist < 1.6) & ~water] = 2
    return truth


def synthetic_image(truth: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """4-band uint16 reflectance-like image for a class map."""
    rng = np.random.default_rng(seed + 1)
    h, w = truth.shape
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=3) * 300
    base = {
        0: (900, 1100, 1000, 3000),  # vegetated land: bright nir
        1: (700, 800, 500, 300),  # water: dark nir
        2: (2200, 2300, 2400, 2600),  # roads: bright everywhere
    }
    img = np.zeros((4, h, w), dtype=np.float64)
    for cls, values in base.items():
        for b, v in enumerate(values):
            img[b][truth == cls] = v
    img += texture + rng.normal(0, 60, size=img.shape)
    return np.clip(img, 0, 10000).astype(np.uint16)


def write_scene(
    path: Path,
    height: int,
    width: int,
    *,
    seed: int = 0,
    crs: str = "EPSG:32617",
    transform: Affine = UTM_TRANSFORM,
    nodata: float | None = None,
) -> np.ndarray:
    """Write a synthetic scene GeoTIFF; returns its truth."""
    truth = synthetic_truth(height, width, seed=seed)
    write_array(
        path, synthetic_image(truth, seed=seed), crs=crs, transform=transform, nodata=nodata
    )
    return truth


def train_tiny_model(path: Path, *, steps: int = 150, seed: int = 0) -> ModelCard:
    """Train a small real U-Net on a synthetic scene for a fixed number of steps; save it.

    A fixed step count (not a time budget) keeps the model, and so every test using it,
    the same on a fast or a loaded machine.
    """
    import torch

    torch.manual_seed(seed)
    truth = synthetic_truth(512, 512, seed=100 + seed)
    image = synthetic_image(truth, seed=100 + seed).astype(np.float32)
    mean = image.reshape(4, -1).mean(axis=1)
    std = image.reshape(4, -1).std(axis=1)
    card = ModelCard(
        name="synthetic-unet",
        architecture="unet",
        encoder="resnet18",
        bands=BANDS,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=CLASSES,
        tile_size=128,
        overlap=32,
        resolution_m=10.0,
        params={"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
        training={"data": "synthetic test scene", "purpose": "tests only"},
    )
    net = build_network(card)
    x_all = torch.from_numpy((image - mean[:, None, None]) / std[:, None, None])
    y_all = torch.from_numpy(truth.astype(np.int64))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    weights = torch.tensor([1.0, 1.0, 4.0])
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(steps):
        rows = rng.integers(0, 512 - 96, size=8)
        cols = rng.integers(0, 512 - 96, size=8)
        xb = torch.stack([x_all[:, r : r + 96, c : c + 96] for r, c in zip(rows, cols)])
        yb = torch.stack([y_all[r : r + 96, c : c + 96] for r, c in zip(rows, cols)])
        k = int(rng.integers(0, 4))
        xb, yb = torch.rot90(xb, k, (2, 3)), torch.rot90(yb, k, (1, 2))
        loss = torch.nn.functional.cross_entropy(net(xb), yb, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    save_model(path, card, net.state_dict())
    return card
