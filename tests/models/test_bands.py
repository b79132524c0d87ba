"""Band roles: sensor presets by position and by name, colour interpretation, alpha."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.config import RunConfig
from geoseg.errors import BandError, ConfigError
from geoseg.models.bands import (
    LAYOUTS,
    SCALING,
    SENSORS,
    band_roles,
    preset_scaling,
    resolve_bands,
)
from geoseg.models.defaults import DEFAULT_MODELS, WEIGHTS_DIR
from geoseg.run.plan import plan_run
from geoseg.tiling.io import read_scene_info, read_window

# What each preset's usual stacks hold, band by band (None: no spectral role).
BY_POSITION = {
    ("sentinel2", 4): ["blue", "green", "red", "nir"],
    ("sentinel2", 8): [
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir",
    ],
    ("sentinel2", 10): [
        "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir1",
        "swir2",
    ],
    ("sentinel2", 12): [
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
        None, "swir1", "swir2",
    ],
    ("sentinel2", 13): [
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
        None, None, "swir1", "swir2",
    ],
    ("landsat8", 6): ["blue", "green", "red", "nir", "swir1", "swir2"],
    ("landsat8", 7): ["coastal", "blue", "green", "red", "nir", "swir1", "swir2"],
    ("landsat8", 11): [
        "coastal", "blue", "green", "red", "nir", "swir1", "swir2", None, None, None, None,
    ],
    ("landsat7", 6): ["blue", "green", "red", "nir", "swir1", "swir2"],
    ("landsat7", 7): ["blue", "green", "red", "nir", "swir1", None, "swir2"],
    ("naip", 3): ["red", "green", "blue"],
    ("naip", 4): ["red", "green", "blue", "nir"],
    ("rgb", 3): ["red", "green", "blue"],
    ("sentinel2-l1c", 4): ["blue", "green", "red", "nir"],
    ("sentinel2-l1c", 10): [
        "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir1",
        "swir2",
    ],
    ("sentinel2-l1c", 13): [
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
        None, None, "swir1", "swir2",
    ],
    ("sentinel2-l2a", 4): ["blue", "green", "red", "nir"],
    ("sentinel2-l2a", 10): [
        "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir1",
        "swir2",
    ],
    ("sentinel2-l2a", 12): [
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
        None, "swir1", "swir2",
    ],
    ("landsat89-c2l2", 6): ["blue", "green", "red", "nir", "swir1", "swir2"],
    ("landsat89-c2l2", 7): ["coastal", "blue", "green", "red", "nir", "swir1", "swir2"],
    ("landsat57-c2l2", 6): ["blue", "green", "red", "nir", "swir1", "swir2"],
}  # fmt: skip


def test_every_layout_of_every_preset_is_checked_here():
    assert set(BY_POSITION) == {(s, n) for s, layouts in LAYOUTS.items() for n in layouts}
    assert set(LAYOUTS) == set(SENSORS)


@pytest.mark.parametrize(("sensor", "count"), sorted(BY_POSITION))
def test_presets_name_unnamed_bands_of_their_usual_stacks_by_position(sensor, count):
    assert band_roles([None] * count, sensor=sensor) == BY_POSITION[(sensor, count)]
    assert band_roles([""] * count, sensor=sensor) == BY_POSITION[(sensor, count)]


@pytest.mark.parametrize(("sensor", "count"), sorted(BY_POSITION))
def test_presets_read_band_codes_whatever_the_band_order(sensor, count):
    codes = list(LAYOUTS[sensor][count])
    shuffled = codes[::-1]
    expected = BY_POSITION[(sensor, count)][::-1]
    assert band_roles(shuffled, sensor=sensor) == expected
    # Zero padding and prefixes as in common file and band names: B3 = B03, SR_B5, B6_VCID_1.
    unpadded = [c.replace("B0", "B") for c in shuffled]
    assert band_roles([f"SR_{c}" for c in unpadded], sensor=sensor) == expected


def test_landsat7_reflective_stack_has_swir2_in_its_sixth_band():
    roles = band_roles([None] * 6, sensor="landsat7")
    assert resolve_bands(("green", "swir2"), count=6, roles=roles) == (2, 6)
    # The shared Landsat 7 scene's own descriptions agree.
    named = band_roles(["B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1", "B7 SWIR2"])
    assert named == roles
    assert band_roles(["B6_VCID_1"], sensor="landsat7") == [None]  # thermal: no role


def test_the_same_code_means_what_its_sensor_says():
    assert band_roles(["B4"], sensor="landsat7") == ["nir"]
    assert band_roles(["B4"], sensor="landsat8") == ["red"]
    assert band_roles(["B04"], sensor="sentinel2") == ["red"]
    assert band_roles(["B8A"], sensor="sentinel2") == ["nir08"]
    assert band_roles(["B4"]) == [None]  # no sensor: a bare number could be any of them
    assert band_roles(["B01", "B02", "B03", "B08"]) == ["coastal", "blue", "green", "nir"]


@pytest.mark.parametrize(
    ("sensor", "count"), [("sentinel2", 2), ("sentinel2", 3), ("landsat7", 8), ("landsat8", 5),
                          ("naip", 2), ("naip", 5), ("rgb", 4)],
)  # fmt: skip
def test_a_band_count_that_fits_no_stack_of_the_preset_is_a_clear_error(sensor, count):
    with pytest.raises(BandError) as err:
        band_roles([None] * count, sensor=sensor)
    msg = str(err.value)
    assert f"sensor {sensor!r}" in msg and f"the scene has {count} bands" in msg
    for n in LAYOUTS[sensor]:
        assert f"{n} (" in msg  # lists the stacks it knows
    assert "--bands" in msg


def test_an_unknown_sensor_lists_the_presets_and_no_bands_is_no_error():
    with pytest.raises(ConfigError, match="valid sensors: sentinel2, landsat8, landsat7, naip"):
        band_roles([None], sensor="spot")
    assert band_roles([], sensor="naip") == []  # how workflow files check a sensor name


def test_colour_interpretation_names_bands_and_alpha_is_no_band():
    assert band_roles([None] * 3, colorinterp=["blue", "green", "red"]) == ["blue", "green", "red"]
    assert band_roles([None] * 4, colorinterp=["red", "green", "blue", "alpha"]) == [
        "red", "green", "blue", None,
    ]  # fmt: skip
    # Descriptions say more than colour interpretation.
    assert band_roles(["nir", None], colorinterp=["red", "green"]) == ["nir", "green"]
    # Alpha bands are left out of the preset's positions.
    assert band_roles(
        [None] * 5, colorinterp=["red", "green", "blue", "undefined", "alpha"], sensor="naip"
    ) == ["red", "green", "blue", "nir", None]
    assert band_roles([None] * 4, colorinterp=["red", "green", "blue", "alpha"], sensor="rgb") == [
        "red", "green", "blue", None,
    ]  # fmt: skip
    with pytest.raises(BandError, match=r"the scene has 4 bands besides alpha band 5; say"):
        band_roles([None] * 5, colorinterp=["gray", *["undefined"] * 3, "alpha"], sensor="landsat8")


def test_a_sensor_stack_that_needs_a_band_gdal_flagged_alpha_takes_it_with_a_warning(caplog):
    # GDAL flags the 4th band of a 4-band 8-bit GeoTIFF alpha unless told otherwise, so
    # a B02, B03, B04, B08 export often says (red, green, blue, alpha): the sensor wins.
    roles = band_roles(
        [None] * 4, colorinterp=["red", "green", "blue", "alpha"], sensor="sentinel2"
    )
    assert roles == ["blue", "green", "red", "nir"]
    assert "band 4 is marked alpha" in caplog.text and "B08" in caplog.text
    assert "-colorinterp_4 undefined" in caplog.text


# --- through a run plan, on real tiny GeoTIFFs ------------------------------------------------

UTM = "EPSG:32617"


def _write(
    path: Path,
    count: int,
    *,
    dtype: str = "uint16",
    res: float = 10.0,
    colorinterp: list[str] | None = None,
    descriptions: list[str] | None = None,
    alpha_rows: int = 0,
) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(60, 140, size=(count, 40, 40)).astype(dtype)
    profile = dict(
        driver="GTiff", width=40, height=40, count=count, dtype=dtype, crs=UTM,
        transform=Affine(res, 0, 500000, 0, -res, 4000000),
    )  # fmt: skip
    if colorinterp is None:
        profile["photometric"] = "MINISBLACK"  # no RGB guess for 3-4 band 8-bit files
    with rasterio.open(path, "w", **profile) as dst:
        if colorinterp is not None:
            if "alpha" in colorinterp:
                data[colorinterp.index("alpha")] = 255
                data[colorinterp.index("alpha"), :alpha_rows] = 0
            dst.colorinterp = [rasterio.enums.ColorInterp[c] for c in colorinterp]
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def test_sentinel2_preset_on_an_unnamed_8_band_stack_feeds_ndwi_green_and_nir(tmp_path):
    scene = _write(tmp_path / "s2.tif", 8)
    plan = plan_run(scene, RunConfig(classes=("water",), sensor="sentinel2"))
    (use,) = plan.models
    assert use.card.architecture == "spectral" and use.card.bands == ("green", "nir")
    assert use.bands == (3, 8)


def test_sentinel2_preset_refuses_an_unnamed_2_band_file_instead_of_guessing(tmp_path):
    scene = _write(tmp_path / "two.tif", 2)
    with pytest.raises(BandError, match=r"sensor 'sentinel2'.*the scene has 2 bands"):
        plan_run(scene, RunConfig(classes=("water",), sensor="sentinel2"))
    with pytest.raises(BandError, match=r"sensor 'sentinel2'.*the scene has 2 bands"):
        plan_run(scene, RunConfig(classes=("water",), models=("ndwi:0.3",), sensor="sentinel2"))
    # Explicit band numbers are the user saying which is which: the preset does not object.
    plan = plan_run(
        scene,
        RunConfig(classes=("water",), models=("ndwi:0.3",), bands=(2, 1), sensor="sentinel2"),
    )
    assert plan.models[0].bands == (2, 1)


def test_landsat7_preset_maps_an_unnamed_6_band_stack_for_mndwi_and_ndwi(tmp_path):
    scene = _write(tmp_path / "l7.tif", 6, res=30.0)
    for method, bands in (("mndwi:0.25", (2, 5)), ("ndwi:0.35", (2, 4))):
        config = RunConfig(classes=("water",), models=(method,), sensor="landsat7")
        assert plan_run(scene, config).models[0].bands == bands


def test_an_rgb_geotiff_without_descriptions_gets_its_roles_from_colour_interpretation(
    tmp_path,
):
    rgb = _write(
        tmp_path / "rgb.tif", 3, dtype="uint8", res=1.0, colorinterp=["red", "green", "blue"]
    )
    assert read_scene_info(rgb).colorinterp == ("red", "green", "blue")
    plan = plan_run(rgb, RunConfig(classes=("roads",)))
    (use,) = plan.models
    roads = WEIGHTS_DIR / DEFAULT_MODELS["roads"][0]
    assert use.source == str(roads) and use.bands == (1, 2, 3)
    # The colours are read, not the band order: a BGR file feeds the model red, green, blue.
    bgr = _write(
        tmp_path / "bgr.tif", 3, dtype="uint8", res=1.0, colorinterp=["blue", "green", "red"]
    )
    assert plan_run(bgr, RunConfig(classes=("roads",))).models[0].bands == (3, 2, 1)


def test_an_rgba_geotiff_feeds_rgb_and_its_alpha_masks_pixels(tmp_path):
    rgba = _write(
        tmp_path / "rgba.tif", 4, dtype="uint8", res=1.0,
        colorinterp=["red", "green", "blue", "alpha"], alpha_rows=5,
    )  # fmt: skip
    plan = plan_run(rgba, RunConfig(classes=("roads",)))
    assert plan.models[0].bands == (1, 2, 3)  # alpha is not a 4th input band
    info = read_scene_info(rgba)
    _, valid = read_window(str(rgba), info.window, bands=plan.models[0].bands)
    assert not valid[:5].any() and valid[5:].all()  # alpha 0 = no data


# --- product presets: their digital numbers' scale and offset ------------------------------------


@pytest.mark.parametrize(
    ("sensor", "scale", "offset"),
    [
        ("sentinel2-l1c", 1e-4, 0.0),  # TOA reflectance x 10000
        ("sentinel2-l2a", 1e-4, -0.1),  # (DN - 1000) / 10000 since processing baseline 04.00
        ("landsat89-c2l2", 2.75e-5, -0.2),  # Collection 2 Level-2 surface reflectance
        ("landsat57-c2l2", 2.75e-5, -0.2),
    ],
)
def test_product_presets_turn_their_reflective_bands_into_reflectance(sensor, scale, offset):
    for count, codes in LAYOUTS[sensor].items():
        scales, offsets = preset_scaling(sensor, [None] * count)
        assert scales == (scale,) * count and offsets == (offset,) * count
        # Band codes in the descriptions place each band whatever the order.
        assert preset_scaling(sensor, list(reversed(codes))) == (scales, offsets)
    assert set(SCALING[sensor]) <= set(SENSORS[sensor])


def test_landsat_surface_temperature_bands_keep_their_own_scaling():
    scales, offsets = preset_scaling("landsat89-c2l2", ["SR_B4", "SR_B5", "ST_B10"])
    assert scales == (2.75e-5, 2.75e-5, 0.00341802) and offsets == (-0.2, -0.2, 149.0)
    assert preset_scaling("landsat57-c2l2", ["SR_B3", "ST_B6"])[1] == (-0.2, 149.0)


def test_presets_that_name_bands_only_and_unplaceable_stacks_give_no_scaling():
    for sensor in ("sentinel2", "landsat8", "landsat7", "naip", "rgb"):
        assert preset_scaling(sensor, [None] * 4) is None
    assert preset_scaling(None, ["B02"]) is None
    assert preset_scaling("sentinel2-l2a", [None] * 7) is None  # no 7-band L2A stack
    with pytest.raises(ConfigError, match="unknown sensor 'spot'"):
        preset_scaling("spot", [None])


def test_the_l2a_preset_has_no_cirrus_band_and_its_12_band_stack_skips_it():
    assert "B10" not in SENSORS["sentinel2-l2a"]
    roles = band_roles([None] * 12, sensor="sentinel2-l2a")
    assert roles[9] is None and roles[10:] == ["swir1", "swir2"]


def test_unpadded_sentinel2_codes_name_the_bands_without_a_sensor():
    # The Sen1Floods11 chips describe their bands B1 ... B12 with B8A.
    codes = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    assert band_roles(codes) == BY_POSITION[("sentinel2", 13)]
    # Without B8A, bare numbers could be Landsat's: no guess.
    assert band_roles(["B1", "B2", "B3", "B4"]) == [None] * 4
