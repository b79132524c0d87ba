"""The published networks shipped ported (Dynamic World, WatNet-L578): files, cards, licences,
the port through geoseg's own predictor, defaults per scene, and a real run on Sentinel-2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS

from geoseg.cli import main
from geoseg.config import InferenceOptions, RunConfig
from geoseg.models.bands import band_roles
from geoseg.models.defaults import (
    DEFAULT_MODELS,
    DYNAMIC_WORLD,
    WATNET,
    WEIGHTS_DIR,
    default_sources,
)
from geoseg.models.predictor import load_segmenter
from geoseg.models.registry import load_network
from geoseg.run.plan import plan_run

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CHIP = SHARED / "data" / "sen1floods11_s2" / "Spain_7370579_S2Hand.tif"
DW_REFERENCE = REPO / "tests" / "data" / "dynamicworld_tf_reference.npz"
PORTED = (DYNAMIC_WORLD, WATNET)
MAX_BYTES = 5 * 1024 * 1024
FP32 = InferenceOptions(precision="fp32", device="cpu")
# Dynamic World's network channels summed into each class of the shipped card.
DW_CLASS_CHANNELS = {"water": (0, 3), "trees": (1,), "grass": (2,), "crops": (4,)}


@pytest.mark.parametrize("name", PORTED)
def test_ported_weights_load_strictly_from_small_files(name: str) -> None:
    path = WEIGHTS_DIR / name
    assert path.stat().st_size <= MAX_BYTES
    card, net = load_network(path)  # strict: every tensor of the architecture, nothing else
    assert not net.training
    state = net.state_dict()
    values = sum(t.numel() for k, t in state.items() if not k.endswith("num_batches_tracked"))
    # As published: the SavedModel's 231,209 values; the .pth's 270,337.
    assert values == {DYNAMIC_WORLD: 231_209, WATNET: 270_337}[name]
    assert card.licence and card.attribution and card.source.startswith("https://github.com/")
    licence_file = WEIGHTS_DIR / f"{Path(name).stem}.LICENSE.txt"
    assert card.licence.split("-")[0].lower() in licence_file.read_text().lower()


def test_the_cards_carry_the_required_notices_verbatim() -> None:
    dw = load_network(WEIGHTS_DIR / DYNAMIC_WORLD)[0]
    assert dw.licence == "Apache-2.0"
    assert (
        "This code is produced for the Dynamic World Project by Google in partnership\n"
        "with National Geographic and the World Resources Institute." in dw.attribution
    )
    assert "Changed by geoseg" in dw.attribution  # Apache-2.0 4(b)
    watnet = load_network(WEIGHTS_DIR / WATNET)[0]
    assert watnet.licence == "MIT"
    assert watnet.attribution.startswith("MIT License\n\nCopyright (c) 2021 xin luo")
    assert "The above copyright notice and this permission notice" in watnet.attribution


def test_the_cards_state_units_bands_and_what_each_class_is_made_of() -> None:
    dw = load_network(WEIGHTS_DIR / DYNAMIC_WORLD)[0]
    assert dw.bands == (
        "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "swir1", "swir2",
    )  # fmt: skip
    assert dw.reflectance_scale == 10000 and dw.resolution_m == 10 and dw.tile_size % 2 == 0
    assert [t.op for t in dw.transforms] == ["scale", "log1p", "zscore", "sigmoid"]
    merged = dict(zip(dw.class_names, dw.class_channels or (), strict=True))
    assert {c: merged[c] for c in DW_CLASS_CHANNELS} == DW_CLASS_CHANNELS
    assert "flooded_vegetation" not in dw.class_names  # it is part of water
    watnet = load_network(WEIGHTS_DIR / WATNET)[0]
    assert watnet.activation == "sigmoid" and watnet.reflectance_scale == 1
    assert watnet.bands == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert watnet.tile_size % 16 == 0 and watnet.resolution_m == 30
    for card in (dw, watnet):
        t = card.training
        assert {"trained_by", "published_accuracy", "conversion", "measured_here"} <= set(t)


def test_models_show_and_list_print_licence_and_attribution() -> None:
    runner = CliRunner()
    shown = runner.invoke(main, ["models", "show", str(WEIGHTS_DIR / DYNAMIC_WORLD)])
    assert shown.exit_code == 0, shown.output
    assert "licence:       Apache-2.0" in shown.output
    assert "produced for the Dynamic World Project by Google" in shown.output
    assert "scale(factor=0.005) -> log1p() -> zscore(" in shown.output
    assert "water=0+3" in shown.output
    shown = runner.invoke(main, ["models", "show", str(WEIGHTS_DIR / WATNET)])
    assert "licence:       MIT" in shown.output and "Copyright (c) 2021 xin luo" in shown.output
    assert "sigmoid of 1 logit" in shown.output
    listed = runner.invoke(main, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert f"{DYNAMIC_WORLD}: dynamicworld" in listed.output and "Apache-2.0" in listed.output
    assert "MIT" in listed.output and "Copyright (c) 2021 xin luo" in listed.output
    assert "Permission is hereby granted" not in listed.output  # the boilerplate: show only


# --- the port through geoseg's predictor ------------------------------------------------------


def _chip_window(bands: tuple[str, ...], window: tuple[int, ...]) -> np.ndarray:
    if not CHIP.is_file():
        pytest.skip(f"real Sentinel-2 chip not found at {CHIP}")
    row, col, height, width = window
    with rasterio.open(CHIP) as src:
        idx = [src.descriptions.index(b) + 1 for b in bands]
        return src.read(idx, window=rasterio.windows.Window(col, row, width, height))


def test_dynamic_world_through_the_card_matches_tensorflow() -> None:
    """Card normalisation, network and class merging against TF's probabilities (fp32)."""
    reference = np.load(DW_REFERENCE)
    window = tuple(int(v) for v in reference["even_window"])
    dn = _chip_window(tuple(str(b) for b in reference["bands"]), window)
    seg = load_segmenter(WEIGHTS_DIR / DYNAMIC_WORLD, options=FP32)
    probs = seg.predict_whole(dn, np.ones(dn.shape[1:], dtype=bool))
    tf = reference["even_probabilities"]
    for name, channels in DW_CLASS_CHANNELS.items():
        expected = tf[list(channels)].sum(axis=0)
        np.testing.assert_allclose(probs[seg.card.class_index(name)], expected, atol=1e-3)
    assert (probs[0] == 0).all()  # every channel belongs to a class: nothing is background


def test_watnet_through_the_card_is_the_networks_sigmoid() -> None:
    import torch

    dn = _chip_window(("B2", "B3", "B4", "B8", "B11", "B12"), (208, 256, 64, 64))
    reflectance = (dn / 10000).astype(np.float32)
    seg = load_segmenter(WEIGHTS_DIR / WATNET, options=FP32)
    probs = seg.predict_whole(reflectance, np.ones((64, 64), dtype=bool))
    _, net = load_network(WEIGHTS_DIR / WATNET)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(np.clip(reflectance, 0, 1))[None]))[0, 0]
    np.testing.assert_allclose(probs[1], p.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs[0], 1 - p.numpy(), atol=1e-5)
    assert probs[1].mean() > 0.5  # a flooded window


# --- defaults per scene ---------------------------------------------------------------------------

S2_L1C = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def test_water_and_crops_on_sentinel2_with_swir_come_from_dynamic_world() -> None:
    roles = band_roles(S2_L1C)
    dw = str(WEIGHTS_DIR / DYNAMIC_WORLD)
    assert default_sources(["water", "crops"], roles=roles, count=13, resolution_m=10) == (dw,)
    for cls in ("trees", "grass", "built", "bare", "shrub_and_scrub", "snow_and_ice"):
        assert DEFAULT_MODELS[cls] == (DYNAMIC_WORLD,)


def _landsat_scene(path: Path, values: np.ndarray, *, descriptions: list[str]) -> Path:
    profile = {
        "driver": "GTiff",
        "width": values.shape[2],
        "height": values.shape[1],
        "count": values.shape[0],
        "dtype": values.dtype.name,
        "crs": CRS.from_epsg(32617),
        "transform": Affine(30.0, 0, 500000.0, 0, -30.0, 4000000.0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
        dst.descriptions = descriptions
    return path


def test_water_on_landsat_reflectance_is_watnet_and_on_8_bit_dns_the_landsat7_model(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    names = ["B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1", "B7 SWIR2"]
    typical = np.array([0.06, 0.08, 0.07, 0.25, 0.18, 0.1])[:, None, None]
    refl = (typical * rng.uniform(0.6, 1.4, size=(6, 64, 64))).astype(np.float32)
    scene = _landsat_scene(tmp_path / "sr.tif", refl, descriptions=names)
    (use,) = plan_run(scene, RunConfig(classes=("water",))).models
    assert use.source == str(WEIGHTS_DIR / WATNET)
    dn = np.clip(refl * 300, 1, 255).astype(np.uint8)
    scene = _landsat_scene(tmp_path / "dn.tif", dn, descriptions=names)
    (use,) = plan_run(scene, RunConfig(classes=("water",))).models
    assert use.source == str(WEIGHTS_DIR / "landsat7-water-crops.safetensors")


def test_ndwi_remains_for_imagery_no_network_fits() -> None:
    roles = band_roles([None] * 4, sensor="naip")
    assert default_sources(["water"], roles=roles, count=4, resolution_m=1.0) == ("ndwi:0.35",)


# --- a real run -------------------------------------------------------------------------------


def test_geoseg_run_maps_water_and_crops_on_a_real_sentinel2_l1c_chip(tmp_path: Path) -> None:
    if not CHIP.is_file():
        pytest.skip(f"real Sentinel-2 chip not found at {CHIP}")
    from geoseg.run.pipeline import run_scene

    config = RunConfig(classes=("water", "crops"), smooth="none", inference=FP32)
    summary = run_scene(CHIP, tmp_path / "flood.gpkg", config)
    with rasterio.open(summary.raster) as ds:
        labels = ds.read(1)
    water, crops = (labels == 1).mean(), (labels == 2).mean()
    # TensorFlow's own argmax: water 0.300, flooded vegetation 0.071, crops 0.295 (PORT_NOTES);
    # summed water + flooded vegetation probabilities win a little more often (0.447).
    assert 0.40 < water < 0.50, water
    assert 0.20 < crops < 0.32, crops
    import pyogrio

    meta = pyogrio.read_info(tmp_path / "flood.gpkg", layer="water")["layer_metadata"]
    (model,) = json.loads(meta["models"])
    assert model["name"] == "dynamicworld-s2l1c" and model["licence"] == "Apache-2.0"
    assert "Dynamic World Project by Google" in model["attribution"]
