"""QGIS-ready outputs: COGs, styles, provenance, metric areas, reprojection."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from geoseg.config import RunConfig
from geoseg.errors import ConfigError
from geoseg.run.pipeline import run_scene
from geoseg.run.provenance import file_sha256
from geoseg.tiling.io import write_array

# Water (dark nir, bright green) inside rows 40..139, cols 30..149 of a 4-band image.
ROWS, COLS = slice(40, 140), slice(30, 150)


def _square_scene(path: Path, *, crs: str, transform: Affine, size: int = 200) -> Path:
    img = np.full((4, size, size), 1000, dtype=np.uint16)
    img[3] = 3000  # land: nir > green -> NDWI < 0
    img[1, ROWS, COLS] = 1500  # water: green > nir -> NDWI > 0
    img[3, ROWS, COLS] = 300
    write_array(path, img, crs=crs, transform=transform)
    return path


def _config(**kw: object) -> RunConfig:
    base: dict[str, object] = {
        "classes": ("water",),
        "models": ("ndwi:0.0",),
        "bands": (2, 4),
        "smooth": "none",
        "block": 128,
    }
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


def _authalic_rectangle_area(lon0: float, lon1: float, lat0: float, lat1: float) -> float:
    """Area of a lon/lat rectangle on the WGS84 authalic sphere (hand formula)."""
    r = 6371007.181
    return (
        r
        * r
        * math.radians(lon1 - lon0)
        * abs(math.sin(math.radians(lat1)) - math.sin(math.radians(lat0)))
    )


def test_areas_match_hand_computed_values_in_utm_and_wgs84(tmp_path: Path) -> None:
    utm = _square_scene(
        tmp_path / "utm.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )
    s = run_scene(utm, tmp_path / "utm.gpkg", _config())
    df = pyogrio.read_dataframe(s.gpkg, layer="water")
    assert len(df) == 1
    # 100 x 120 pixels of 10 m on the UTM grid; at the central meridian the scale factor 0.9996
    # makes the true area 0.08 % smaller than the grid area.
    assert df.area_m2[0] == pytest.approx(100 * 120 * 100.0 * 0.9996**2, rel=0.005)

    d = 9e-5
    geo = _square_scene(
        tmp_path / "geo.tif", crs="EPSG:4326", transform=Affine(d, 0, -76.7, 0, -d, 34.7)
    )
    s = run_scene(geo, tmp_path / "geo.gpkg", _config())
    df = pyogrio.read_dataframe(s.gpkg, layer="water")
    assert len(df) == 1
    expected = _authalic_rectangle_area(
        -76.7 + 30 * d, -76.7 + 150 * d, 34.7 - 140 * d, 34.7 - 40 * d
    )
    assert df.area_m2[0] == pytest.approx(expected, rel=0.005)
    assert df.geometry[0].equals(
        shapely.box(-76.7 + 30 * d, 34.7 - 140 * d, -76.7 + 150 * d, 34.7 - 40 * d)
    )


def test_corner_touching_speck_and_pinched_hole_are_not_in_the_gpkg(tmp_path: Path) -> None:
    # Pixels are 10 m: the 1000 m2 minimum is 10 px and the 2000 m2 hole maximum 20 px.
    path = _square_scene(
        tmp_path / "s.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )
    with rasterio.open(path, "r+") as ds:
        img = ds.read()
        land, water = img[:, 0, 0].copy(), img[:, 50, 50].copy()
        img[:, ROWS.start - 1, COLS.start - 1] = water  # a 100 m2 speck touching a corner
        img[:, ROWS.stop - 1, COLS.stop - 1] = land  # a notch in another corner...
        img[:, ROWS.stop - 2, COLS.stop - 2] = land  # ...and a hole touching it diagonally
        ds.write(img)
    cfg = _config(
        smooth="morph", smooth_params=("min_object_area_m2=1000", "max_hole_area_m2=2000")
    )
    df = pyogrio.read_dataframe(run_scene(path, tmp_path / "s.gpkg", cfg).gpkg, layer="water")
    assert len(df) == 1, f"specks left: {sorted(df.area_m2)[:-1]}"
    assert len(df.geometry[0].interiors) == 0, "the pinched one-pixel hole is filled"
    assert df.pixels[0] == 100 * 120 - 1  # the lake minus its notch
    # Without the filters both show up: the speck as a polygon, the hole as a ring.
    raw = run_scene(path, tmp_path / "raw.gpkg", _config()).gpkg
    df = pyogrio.read_dataframe(raw, layer="water")
    assert sorted(df.pixels) == [1, 100 * 120 - 2]
    assert sum(len(g.interiors) for g in df.geometry) == 1


def test_area_is_that_of_the_simplified_polygon(tmp_path: Path) -> None:
    path = _square_scene(
        tmp_path / "s.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )
    with rasterio.open(path, "r+") as ds:
        img = ds.read()
        land = img[:, 0, 0].copy()
        img[:, ROWS, COLS] = land[:, None, None]
        yy, xx = np.mgrid[: img.shape[1], : img.shape[2]]
        lake = (yy - 50) ** 2 + (xx - 50) ** 2 <= 30**2  # a staircase disk of 2821 px
        pond = (yy - 150) ** 2 + (xx - 150) ** 2 <= 3**2  # 29 px, 25 px once simplified
        water = np.array([1500, 300])
        for band, value in zip((1, 3), water, strict=True):
            img[band][lake | pond] = value
        ds.write(img)
    cfg = _config(simplify_m=20.0, min_area_m2=2700.0)
    df = pyogrio.read_dataframe(run_scene(path, tmp_path / "s.gpkg", cfg).gpkg, layer="water")
    assert shapely.is_valid(df.geometry.values).all()
    # area_m2 is the area of what is written (UTM: planar area within the scale error).
    assert np.allclose(df.area_m2, shapely.area(df.geometry.values) * 0.9996**-2, rtol=0.002)
    assert (df.area_m2 >= 2700).all(), "the minimum applies to the area written"
    lake_row = df.loc[df.pixels.idxmax()]
    assert abs(lake_row.area_m2 / (lake_row.pixels * 100.0) - 1) > 0.002  # it did change
    # The pond passes the minimum as traced (2900 m2) but not once simplified (2500 m2).
    assert len(df) == 1
    traced = pyogrio.read_dataframe(
        run_scene(path, tmp_path / "t.gpkg", _config(min_area_m2=2700.0)).gpkg, layer="water"
    )
    assert sorted(traced.pixels) == [int(pond.sum()), int(lake.sum())]
    assert np.allclose(traced.area_m2, traced.pixels * 100.0 * 0.9996**2, rtol=0.002)


def test_rasters_are_valid_cogs_with_colour_table_overviews_and_nodata(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(700, 600, seed=2)
    cfg = RunConfig(
        classes=("water", "roads"), models=(str(tiny_model),), block=256, probabilities=True
    )
    s = run_scene(scene, tmp_path / "c.gpkg", cfg)
    for path in (s.raster, s.probabilities):
        assert path is not None
        valid, errors, _ = cog_validate(path)
        assert valid, errors
        with rasterio.open(path) as src:
            assert src.overviews(1), f"{path.name} has overviews"
            assert src.nodata == 255
            assert src.crs == rasterio.open(scene).crs
    with rasterio.open(s.raster) as src:
        cmap = src.colormap(1)
        assert cmap[1][:3] == (0x1F, 0x78, 0xB4) and cmap[2][:3] == (0xE3, 0x1A, 0x1C)
        assert src.tags()["CLASS_1"] == "water" and src.tags()["GEOSEG_GEOSEG_VERSION"]
        classes = src.read(1)
    with rasterio.open(s.probabilities) as src:
        assert src.descriptions == ("water", "roads")
        probs = src.read()
    # the class raster says water where the water probability is high
    assert (probs[0][classes == 1] > 127).mean() > 0.95
    qml = s.raster.with_suffix(".qml").read_text()
    assert (
        'value="0" color="#000000" alpha="0"' in qml
        and 'color="#1f78b4" alpha="255" label="water"' in qml
    )


def test_styles_and_provenance_are_stored_in_the_gpkg(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(300, 300, seed=4)
    cfg = RunConfig(
        classes=("water", "roads"), models=(str(tiny_model),), block=128, simplify_m=5.0
    )
    s = run_scene(scene, tmp_path / "p.gpkg", cfg)
    with sqlite3.connect(s.gpkg) as db:
        styles = dict(
            db.execute("SELECT f_table_name, styleQML FROM layer_styles WHERE useAsDefault")
        )
        prov = dict(db.execute("SELECT key, value FROM geoseg_provenance"))
        contents = {r[0] for r in db.execute("SELECT table_name FROM gpkg_contents")}
        rtree = {
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'rtree_%'")
        }
        fields = {r[1]: r[2] for r in db.execute("PRAGMA table_info(water)")}
    assert set(styles) == {"water", "roads", "roads_centerlines"}
    assert 'class="SimpleLine"' in styles["roads_centerlines"]
    assert (
        'value="31,120,180,110"' in styles["water"] and 'value="227,26,28,255"' in styles["roads"]
    )
    assert {"water", "roads", "layer_styles", "geoseg_provenance"} <= contents
    assert {"rtree_water_geom", "rtree_roads_geom", "rtree_roads_centerlines_geom"} <= rtree
    assert (
        fields["area_m2"] == "REAL" and fields["confidence"] == "REAL" and fields["class"] == "TEXT"
    )
    assert fields["block_id"] in ("INTEGER", "MEDIUMINT", "BIGINT")
    assert prov["input_sha256"] == file_sha256(scene)
    models = json.loads(prov["models"])
    assert models[0]["sha256"] == file_sha256(tiny_model) and models[0]["name"] == "synthetic-unet"
    assert prov["classes"] == "water,roads" and prov["simplify_m"] == "5"
    tiling = json.loads(prov["tiling"])
    assert tiling["tile"] == 128 and tiling["overlap"] == 32 and tiling["blocks"] >= 4
    assert set(json.loads(prov["smoothing"])) == {"water", "roads"}
    assert float(prov["run_seconds"]) > 0 and prov["created_utc"].startswith("20")
    for layer in ("water", "roads"):
        df = pyogrio.read_dataframe(s.gpkg, layer=layer)
        assert shapely.is_valid(df.geometry.values).all()
        assert df.confidence.between(0, 1).all()
    with rasterio.open(s.raster) as src:
        assert src.tags()["GEOSEG_INPUT_SHA256"] == prov["input_sha256"]


def test_relative_input_is_recorded_absolute_and_probabilities_scale_to_0_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _square_scene(tmp_path / "s.tif", crs="EPSG:32617", transform=Affine(10, 0, 0, 0, -10, 0))
    monkeypatch.chdir(tmp_path)
    s = run_scene("s.tif", "s.gpkg", _config(probabilities=True))
    with sqlite3.connect(tmp_path / "s.gpkg") as db:
        prov = dict(db.execute("SELECT key, value FROM geoseg_provenance"))
    assert prov["input_path"] == str(tmp_path / "s.tif")
    assert s.probabilities is not None
    with rasterio.open(tmp_path / s.probabilities.name) as src:
        assert src.tags()["GEOSEG_INPUT_PATH"] == str(tmp_path / "s.tif")
        assert src.scales == (1 / 254,) and src.offsets == (0.0,)
        p = src.read(1, masked=True).astype(np.float64) * src.scales[0] + src.offsets[0]
    assert p.min() >= 0 and p.max() == pytest.approx(1.0)
    assert p[ROWS, COLS].mean() > 0.9 and p[:30].mean() < 0.1


def test_dst_crs_reprojects_polygons_and_keeps_metric_areas(tmp_path: Path) -> None:
    scene = _square_scene(
        tmp_path / "utm.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )
    native = pyogrio.read_dataframe(
        run_scene(scene, tmp_path / "n.gpkg", _config()).gpkg, layer="water"
    )
    s = run_scene(scene, tmp_path / "m.gpkg", _config(dst_crs="EPSG:3857"))
    info = pyogrio.read_info(s.gpkg, layer="water")
    assert info["crs"] == "EPSG:3857"
    merc = pyogrio.read_dataframe(s.gpkg, layer="water")
    assert merc.area_m2[0] == pytest.approx(native.area_m2[0], rel=1e-9)
    assert merc.to_crs("EPSG:32617").geometry[0].symmetric_difference(native.geometry[0]).area < 1.0
    with rasterio.open(s.raster) as src:
        assert src.crs.to_epsg() == 32617, "rasters stay on the scene grid"


def test_dst_crs_on_a_scene_without_crs_is_refused_before_writing(tmp_path: Path) -> None:
    img = np.full((4, 64, 64), 1000, dtype=np.uint16)
    img[1, 10:30, 10:30], img[3, 10:30, 10:30] = 1500, 300
    write_array(tmp_path / "nocrs.tif", img, crs=None, transform=Affine(10, 0, 0, 0, -10, 640))
    with pytest.raises(ConfigError, match=r"--dst-crs EPSG:3857 needs the scene's CRS"):
        run_scene(tmp_path / "nocrs.tif", tmp_path / "out.gpkg", _config(dst_crs="EPSG:3857"))
    # (the run's resume journal is the pipeline's business)
    written = sorted(p.name for p in tmp_path.iterdir() if ".journal" not in p.name)
    assert written == ["nocrs.tif"], "no output, not even a partial one"
    # Without --dst-crs the run goes ahead (pixel-grid coordinates, no CRS).
    s = run_scene(tmp_path / "nocrs.tif", tmp_path / "out.gpkg", _config())
    assert pyogrio.read_info(s.gpkg, layer="water")["crs"] is None
