"""Stored values become a model's units: the file's scale and offset, else a sensor preset's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.config import run_config
from geoseg.models.defaults import WEIGHTS_DIR
from geoseg.run.pipeline import plan_run, run_scene

WATNET = WEIGHTS_DIR / "watnet-l578.safetensors"
SCALE, OFFSET = 2.75e-5, -0.2  # Landsat Collection 2 surface reflectance
NAMES = ("blue", "green", "red", "nir", "swir1", "swir2")


def _reflectance(seed: int = 0) -> np.ndarray:
    """Six bands of surface reflectance 0-1: a lake in a vegetated field."""
    rng = np.random.default_rng(seed)
    lake = np.zeros((96, 96), dtype=bool)
    lake[24:72, 16:64] = True
    land = np.array([0.04, 0.07, 0.05, 0.30, 0.18, 0.09])[:, None, None]
    water = np.array([0.06, 0.06, 0.04, 0.02, 0.01, 0.005])[:, None, None]
    bands = np.where(lake, water, land) + rng.normal(0, 0.004, (6, 96, 96))
    return bands.astype(np.float32)


def _write(path: Path, data: np.ndarray, *, scaled: bool, describe: bool = True) -> None:
    profile = {
        "driver": "GTiff", "height": 96, "width": 96, "count": 6,
        "dtype": "uint16" if scaled else "float32", "crs": "EPSG:32617",
        "transform": Affine(30.0, 0, 500000.0, 0, -30.0, 4000000.0),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        if scaled:
            dst.write(np.round((data - OFFSET) / SCALE).astype(np.uint16))
            dst.scales, dst.offsets = (SCALE,) * 6, (OFFSET,) * 6
        else:
            dst.write(data)
        if describe:
            dst.descriptions = NAMES


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, Path]:
    if not WATNET.exists():
        pytest.skip("the shipped WatNet model is absent")
    data = _reflectance()
    plain, dn = tmp_path / "reflectance.tif", tmp_path / "dn.tif"
    _write(plain, data, scaled=False)
    _write(dn, data, scaled=True)
    return plain, dn


def test_the_files_scale_and_offset_give_the_model_reflectance(scenes, tmp_path: Path) -> None:
    plain, dn = scenes
    config = run_config(classes="water", models=[str(WATNET)], smooth="none", precision="fp32")
    (use,) = plan_run(dn, config).models
    assert use.scaling == ((SCALE,) * 6, (OFFSET,) * 6)
    assert plan_run(plain, config).models[0].scaling is None  # already reflectance
    a = run_scene(plain, tmp_path / "a.gpkg", config)
    b = run_scene(dn, tmp_path / "b.gpkg", config)
    with rasterio.open(a.raster) as ra, rasterio.open(b.raster) as rb:
        water_a, water_b = ra.read(1) == 1, rb.read(1) == 1
    assert water_a.mean() > 0.1  # WatNet finds the lake in reflectance
    assert (water_a == water_b).mean() > 0.999  # and the same lake in scaled digital numbers


def test_a_sensor_preset_scales_a_file_without_metadata(tmp_path: Path) -> None:
    if not WATNET.exists():
        pytest.skip("the shipped WatNet model is absent")
    path = tmp_path / "c2l2.tif"
    data = _reflectance()
    with rasterio.open(
        path, "w", driver="GTiff", height=96, width=96, count=7, dtype="uint16",
        crs="EPSG:32617", transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4000000.0),
    ) as dst:  # fmt: skip
        dn = np.round((data - OFFSET) / SCALE).astype(np.uint16)
        dst.write(np.concatenate([dn[:1], dn]))  # SR_B1 (coastal) first, as in the product
    config = run_config(classes="water", models=[str(WATNET)], sensor="landsat89-c2l2")
    (use,) = plan_run(path, config).models
    assert use.bands == (2, 3, 4, 5, 6, 7)
    assert use.scaling == ((SCALE,) * 6, (OFFSET,) * 6)
