"""Synthetic training scenes for the model-training tests: bright squares on a dark ground."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from geoseg.models.card import ClassInfo
from geoseg.tiling.io import write_array
from geoseg.training.labels import ClassMap

UTM = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
CLASSES = (ClassInfo(name="background", color="#000000"), ClassInfo(name="square", color="#ff0000"))


@dataclass(frozen=True)
class Scene:
    image: Path
    labels: Path
    truth: np.ndarray


def make_scene(
    tmp_path: Path,
    name: str,
    *,
    size: int = 128,
    seed: int = 0,
    squares: int = 3,
    nodata_rows: int = 0,
) -> Scene:
    """A 3-band uint8 scene with bright squares (class 1) and its label raster.

    The first ``nodata_rows`` rows are nodata (0) in the image and 255 in the labels.
    """
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=np.uint8)
    for _ in range(squares):
        side = int(rng.integers(size // 8, size // 4))
        r, c = rng.integers(0, size - side, size=2)
        truth[r : r + side, c : c + side] = 1
    image = rng.normal(60, 12, size=(3, size, size))
    image[:, truth == 1] += 110
    image = np.clip(image, 1, 255).astype(np.uint8)
    labels = truth.copy()
    image[:, :nodata_rows] = 0
    labels[:nodata_rows] = 255
    img_path, lab_path = tmp_path / f"{name}_image.tif", tmp_path / f"{name}_label.tif"
    write_array(img_path, image, crs=UTM, transform=TRANSFORM, nodata=0)
    write_array(lab_path, labels, crs=UTM, transform=TRANSFORM, nodata=255)
    return Scene(image=img_path, labels=lab_path, truth=truth)


@pytest.fixture
def square_scene(tmp_path: Path) -> Callable[..., Scene]:
    """``square_scene(name, **kw) -> Scene`` written into ``tmp_path`` (see :func:`make_scene`)."""

    def make(name: str, **kwargs: Any) -> Scene:
        return make_scene(tmp_path, name, **kwargs)

    return make


@pytest.fixture
def class_map() -> ClassMap:
    return ClassMap(classes=CLASSES)
