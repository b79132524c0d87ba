"""A STAC item as the scene of one run: its band assets composed, the output named by its id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import geoseg
from geoseg.errors import SceneReadError
from geoseg.run.api import resolve_scene
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info, read_window
from geoseg.tiling.stac import scene_from_item

ORIGIN = (500000.0, 4000000.0)


def _band(path: Path, values: np.ndarray, pixel: float) -> None:
    profile = {
        "driver": "GTiff", "height": values.shape[0], "width": values.shape[1], "count": 1,
        "dtype": "uint16", "crs": "EPSG:32631", "nodata": 0,
        "transform": Affine(pixel, 0, ORIGIN[0], 0, -pixel, ORIGIN[1]),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)


def _item(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A Sentinel-2-like item: 10 m green and NIR, a 20 m SWIR band, a visual asset."""
    rng = np.random.default_rng(0)
    water = np.zeros((80, 80), dtype=bool)
    water[20:60, 10:50] = True
    green = np.where(water, 1400, 700).astype(np.uint16) + rng.integers(1, 50, (80, 80)).astype(
        np.uint16
    )
    nir = np.where(water, 300, 2600).astype(np.uint16) + rng.integers(1, 50, (80, 80)).astype(
        np.uint16
    )
    swir = np.full((40, 40), 1500, dtype=np.uint16)
    _band(tmp_path / "B03.tif", green, 10.0)
    _band(tmp_path / "B08.tif", nir, 10.0)
    _band(tmp_path / "B11.tif", swir, 20.0)
    doc = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2B_31UFU_20240611",
        "properties": {"datetime": "2024-06-11T10:56:19Z"},
        "geometry": None, "links": [],
        "assets": {
            "green": {"href": "B03.tif", "type": "image/tiff; application=geotiff",
                      "eo:bands": [{"name": "B03", "common_name": "green"}]},
            "nir": {"href": "./B08.tif", "type": "image/tiff; application=geotiff",
                    "eo:bands": [{"name": "B08", "common_name": "nir"}]},
            "B11": {"href": "B11.tif", "type": "image/tiff; application=geotiff"},
            "thumbnail": {"href": "thumb.png", "type": "image/png"},
        },
    }  # fmt: skip
    item = tmp_path / "item.json"
    item.write_text(json.dumps(doc))
    return item, {"green": green, "nir": nir, "water": water}


def test_band_assets_become_one_virtual_scene_without_copying(tmp_path: Path) -> None:
    item, truth = _item(tmp_path)
    asset = scene_from_item(str(item))
    assert asset.item_id == "S2B_31UFU_20240611" and asset.date == "2024-06-11"
    assert asset.path.startswith("<VRTDataset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B03.tif", "B08.tif", "B11.tif",
                                                          "item.json"]  # fmt: skip
    info = read_scene_info(asset.path)
    assert (info.width, info.height, info.count) == (80, 80, 3)
    assert info.descriptions == ("green", "nir", "swir1")  # band roles, in geoseg's order
    image, valid = read_window(asset.path, PixelWindow(row_off=0, col_off=0, height=80,
                                                       width=80), bands=(1, 2, 3))  # fmt: skip
    np.testing.assert_array_equal(image[0], truth["green"])
    np.testing.assert_array_equal(image[1], truth["nir"])
    assert valid.all() and (image[2] == 1500).all()  # the 20 m band on the 10 m grid


def test_geoseg_run_takes_an_item_and_names_the_output_by_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item, truth = _item(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = geoseg.run(str(item), classes="water", models=["ndwi:0.2"], scheduler="sync")
    assert result.gpkg == Path("S2B_31UFU_20240611.gpkg")
    with rasterio.open(result.raster) as src:
        water = src.read(1) == 1
    assert (water == truth["water"]).mean() > 0.98


def test_a_bad_item_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"type": "Feature", "assets": {}}')
    with pytest.raises(SceneReadError, match=r"bad\.json' needs one GeoTIFF asset"):
        resolve_scene(str(tmp_path / "bad.json"))
    with pytest.raises(SceneReadError, match="cannot read STAC item"):
        resolve_scene(str(tmp_path / "missing.json"))
    assert resolve_scene("scene.tif") == ("scene.tif", "scene")
