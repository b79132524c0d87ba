"""--uncertainty: how unsure the model was, per pixel, beside the class raster."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio

from geoseg.config import run_config
from geoseg.run.pipeline import run_scene
from geoseg.run.task import normalised_entropy


def test_entropy_is_0_when_sure_and_1_when_all_classes_are_alike() -> None:
    probs = np.zeros((3, 1, 3), dtype=np.float32)
    probs[:, 0, 0] = (1.0, 0.0, 0.0)
    probs[:, 0, 1] = 1 / 3
    probs[:, 0, 2] = (0.5, 0.5, 0.0)
    h = normalised_entropy(probs)[0]
    np.testing.assert_allclose(h, [0.0, 1.0, np.log(2) / np.log(3)], atol=1e-6)


def test_the_uncertainty_raster_is_high_where_the_model_hesitates(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(200, 240, seed=5)
    config = run_config(classes="water,roads", models=[str(tiny_model)], block=128,
                        precision="fp32", smooth="none", probabilities=True,
                        uncertainty=True)  # fmt: skip
    summary = run_scene(scene, tmp_path / "u.gpkg", config)
    assert summary.uncertainty == tmp_path / "u_uncertainty.tif"
    with rasterio.open(summary.uncertainty) as src:
        coded = src.read(1)
        assert src.scales == (1 / 254,) and src.nodata == 255
    with rasterio.open(summary.probabilities) as src:
        probs = src.read().astype(np.float32) / 254
    with rasterio.open(summary.raster) as src:
        classes = src.read(1)
    u = coded / 254
    background = 1 - probs.sum(axis=0)
    top = np.maximum(background, probs.max(axis=0))  # the winning class's probability
    sure, hesitant = top > 0.95, top < 0.75
    assert sure.sum() > 1000 and hesitant.sum() > 50
    # sure pixels (one class near 1) are near 0; hesitant ones (no class above 0.75) high
    assert np.median(u[sure]) < 0.1
    assert u[hesitant].mean() > 3 * u[sure].mean() and u[hesitant].mean() > 0.4
    assert (coded[classes == 255] == 255).all()
    style = ET.parse(tmp_path / "u_uncertainty.qml").getroot()
    assert style.find(".//colorrampshader") is not None  # QGIS opens it styled
