"""The default models shipped in the package: files, cards, selection per scene, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from safetensors import safe_open

from geoseg.errors import BandError, ClassNotAvailableError, ModelCardError
from geoseg.models.bands import band_roles
from geoseg.models.card import ModelCard
from geoseg.models.defaults import (
    DEFAULT_MODELS,
    DYNAMIC_WORLD,
    WATNET,
    WEIGHTS_DIR,
    default_model_cards,
    default_sources,
    units_misfit,
)
from geoseg.models.registry import load_network
from geoseg.models.spectral import is_spectral
from geoseg.training.config_file import read_train_file

# The training files that reproduce the shipped models (`make train-defaults`), and the files.
TRAIN_FILES = Path(__file__).resolve().parents[2] / "workflows" / "train"
ROADS = read_train_file(TRAIN_FILES / "roads.yaml", overrides={"output": "roads"})
ROADS_V2 = read_train_file(TRAIN_FILES / "roads-v2.yaml", overrides={"output": "roads-v2"})
LANDSAT = read_train_file(TRAIN_FILES / "landsat.yaml", overrides={"output": "landsat"})
CROPS = read_train_file(TRAIN_FILES / "crops.yaml", overrides={"output": "crops"})
CROPS_V2 = read_train_file(TRAIN_FILES / "crops-v2.yaml", overrides={"output": "crops-v2"})
ROADS_FILE = f"{ROADS.name}.safetensors"  # the first roads model, now the fallback
ROADS_V2_FILE = f"{ROADS_V2.name}.safetensors"  # the roads default
LANDSAT_FILE = f"{LANDSAT.name}.safetensors"
CROPS_FILE = f"{CROPS.name}.safetensors"  # the first crops model, now the fallback
CROPS_V2_FILE = f"{CROPS_V2.name}.safetensors"  # the crops default
ROADS_HELD_OUT = ROADS.inputs[ROADS.validation.tiles[0]]
LANDSAT_REGION = LANDSAT.validation.region
assert LANDSAT_REGION is not None

SHIPPED = sorted({s for c in DEFAULT_MODELS.values() for s in c if not is_spectral(s)})
# Published networks ported by tools/ (trained elsewhere), and the models geoseg trained.
PORTED = [DYNAMIC_WORLD, WATNET]
TRAINED = [s for s in SHIPPED if s not in PORTED]
WATER_FALLBACK = DEFAULT_MODELS["water"][-1]  # the NDWI method
# A ResNet-34 U-Net in fp16 (the crops model) is 49 MB; nothing shipped may grow past 50 MB.
MAX_BYTES = 50 * 1024 * 1024
MIN_DEFAULT_IOU = 0.2  # a class gets a default model only if it validates at least this well

RGB = ["red", "green", "blue"]
LANDSAT7 = band_roles(["B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1", "B7 SWIR2"])
S2_L1C = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
DW_NEEDS = "blue, green, red, rededge1, rededge2, rededge3, nir, swir1, swir2"


@pytest.fixture(scope="module")
def cards() -> dict[str, ModelCard]:
    return default_model_cards()


# --- the files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_a_small_self_describing_safetensors_file(name, cards):
    path = WEIGHTS_DIR / name
    assert path.is_file(), f"{name} is missing; run make train-defaults"
    assert path.stat().st_size < MAX_BYTES
    # safetensors: a JSON header and raw tensors; nothing is unpickled to load it.
    with safe_open(str(path), framework="pt") as f:
        assert "geoseg.card" in (f.metadata() or {})
    card, net = load_network(path)
    assert not net.training
    assert card == cards[name]
    # Every class the mapping sends to this file is one of its outputs.
    claimed = {cls for cls, sources in DEFAULT_MODELS.items() if name in sources}
    assert claimed <= set(card.class_names[1:])
    # Weights made elsewhere carry a licence; geoseg's own carry none.
    assert bool(card.licence) == (name in PORTED)


@pytest.mark.parametrize("name", TRAINED)
def test_a_model_geoseg_trained_records_its_training(name, cards):
    card = cards[name]
    claimed = {cls for cls, sources in DEFAULT_MODELS.items() if name in sources}
    # The card says what it was trained on, for how long, and how well it did.
    t = card.training
    assert t["epochs"] >= 1 and t["steps"] >= 100 and t["wall_time_s"] > 0
    assert any("validation" in d["use"] or "held_out" in d for d in t["data"])
    for cls in claimed:
        assert t["validation"]["classes"][cls]["iou"] >= MIN_DEFAULT_IOU
    # The command that made it: `make train-defaults` runs the files in workflows/train/;
    # the files shipped now were made before those existed, by a script since removed.
    command = t["reproducibility"]["command"]
    assert command.startswith(
        ("geoseg train workflows/train/", "python -m geoseg.models.train_defaults ")
    ), command
    assert card.training["weights_dtype"] == "fp16"


def test_the_new_defaults_record_their_held_out_scores_through_the_pipeline(cards):
    # Scored as `geoseg run` runs by default (each class's smoothing recipe), on images the
    # training never saw: roads v2 on the held-out tile (which also chose its epoch; the
    # threshold once chosen there is taken out again), the crops models on their test
    # images (field boundaries merged into crops).
    roads_v2 = cards[ROADS_V2_FILE].training
    held_out = roads_v2["scores"]["held_out"]
    assert [Path(i).name for i in held_out["images"]] == [Path(ROADS_HELD_OUT.image).name]
    v2_iou = held_out["default"]["pooled"]["classes"]["roads"]["iou"]
    assert v2_iou >= 0.4
    assert "threshold" not in roads_v2 and roads_v2["threshold_removed"]["threshold"] < 0.5
    # It replaced the first model as the default because it scores better on the same tile.
    (old,) = cards[ROADS_FILE].training["evaluation"]["default"]
    assert v2_iou > old["classes"]["roads"]["iou"]
    assert roads_v2["reproducibility"]["command"].startswith(
        "geoseg train workflows/train/roads-v2.yaml"
    )
    for name, recipe in ((CROPS_FILE, "crops.yaml"), (CROPS_V2_FILE, "crops-v2.yaml")):
        crops = cards[name].training
        test = crops["scores"]["test"]
        assert test["images"] and not set(test["images"]) & set(crops["evaluation"]["held_out"])
        assert test["default"]["pooled"]["classes"]["crops"]["iou"] >= 0.8
        assert crops["reproducibility"]["command"].startswith(
            f"geoseg train workflows/train/{recipe}"
        )
    # v2 replaced the first as the default: it scored higher on the validation images (field
    # F1 0.752 against 0.698, measured before looking at its test scores).
    v1 = cards[CROPS_FILE].training["scores"]["test"]["default"]["pooled"]["objects"]["crops"]
    v2 = cards[CROPS_V2_FILE].training["scores"]["test"]["default"]["pooled"]["objects"]["crops"]
    assert v2["f1"] >= 0.6 > v1["f1"]


@pytest.mark.parametrize("name", PORTED)
def test_a_ported_model_records_its_origin_licence_and_port_fidelity(name, cards):
    card = cards[name]
    t = card.training
    # Who trained it and where it comes from, under which licence, with the credit it requires.
    assert card.licence in {"Apache-2.0", "MIT"}
    assert card.attribution.strip()
    assert card.source.startswith("https://github.com/") and "commit" in card.source
    assert "geoseg did not train" in t["trained_by"]
    assert t["data"] and t["published_accuracy"]
    # How the file was made from the published weights, and how close the port is to them.
    assert "tools/convert_" in t["conversion"]
    fidelity = t.get("port_fidelity") or t.get("measured_here", {}).get("port_fidelity")
    assert fidelity, f"{name}: no port fidelity record"
    if name == DYNAMIC_WORLD:
        assert fidelity["network_fp32_argmax_agreement"] == 1.0
        assert fidelity["network_fp32_max_abs_diff_probabilities"] < 1e-4
    else:
        assert fidelity.startswith("bit-identical")
    assert t["measured_here"]
    # No geoseg training record: nothing suggests geoseg trained it or can retrain it.
    assert not {"epochs", "steps", "reproducibility", "evaluation"} & set(t)
    # Where the card records a validation, each class it is a default for clears the bar.
    claimed = {cls for cls, sources in DEFAULT_MODELS.items() if name in sources}
    for cls in claimed & set(t.get("validation", {}).get("classes", {})):
        assert t["validation"]["classes"][cls]["iou"] >= MIN_DEFAULT_IOU


def test_cards_list_every_default_and_every_shipped_file(cards):
    shipped = {p.name for p in WEIGHTS_DIR.glob("*.safetensors")}
    # The training files in workflows/train/ name the files geoseg ships.
    assert ROADS_V2_FILE == "roads-unet-r18-v2.safetensors"
    assert CROPS_FILE == "crops-fields-naip.safetensors"
    assert CROPS_V2_FILE == "crops-fields-naip-v2.safetensors"
    assert shipped == {
        ROADS_FILE, ROADS_V2_FILE, LANDSAT_FILE, CROPS_FILE, CROPS_V2_FILE, DYNAMIC_WORLD,
        WATNET,
    }  # fmt: skip
    assert set(SHIPPED) == shipped  # every shipped file is some class's default or fallback
    assert set(TRAINED) == {ROADS_FILE, ROADS_V2_FILE, LANDSAT_FILE, CROPS_FILE, CROPS_V2_FILE}
    # Roads: v2 first, the first model as its fallback. Crops: fields at 1 m RGB, then
    # Dynamic World's cropland on Sentinel-2.
    assert DEFAULT_MODELS["roads"] == (ROADS_V2_FILE, ROADS_FILE)
    assert DEFAULT_MODELS["crops"] == (CROPS_V2_FILE, CROPS_FILE, DYNAMIC_WORLD)
    assert set(cards) == {s for c in DEFAULT_MODELS.values() for s in c} | shipped
    assert cards[WATER_FALLBACK].bands == ("green", "nir")
    assert cards[ROADS_FILE].bands == ("red", "green", "blue")
    assert cards[ROADS_V2_FILE].bands == ("red", "green", "blue")
    assert cards[ROADS_V2_FILE].class_names == ("background", "roads")
    for crops in (CROPS_FILE, CROPS_V2_FILE):
        assert cards[crops].bands == ("red", "green", "blue")
        assert cards[crops].class_names == ("background", "crops", "field_boundary")
        assert cards[crops].resolution_m == 1.0
    assert cards[LANDSAT_FILE].bands == ("blue", "green", "red", "nir", "swir1")
    assert cards[LANDSAT_FILE].class_names == ("background", "water", "crops")
    assert cards[WATNET].bands == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert cards[WATNET].class_names == ("background", "water")
    assert ", ".join(cards[DYNAMIC_WORLD].bands) == DW_NEEDS


def test_the_water_default_is_what_validated_best(cards):
    comparison = cards[LANDSAT_FILE].training["comparison"]
    results = comparison["results"]
    # Decided on what `geoseg run` gives by default: each class's smoothing recipe.
    best = max(results.values(), key=lambda r: r["water"]["default"]["iou"] or 0.0)
    assert comparison["best"] == best["source"] == LANDSAT_FILE
    # Where a scene's values cannot be sampled, the order chooses between the two Landsat
    # networks: the one that scored better on the held-out region of the Landsat 7 scene.
    water = DEFAULT_MODELS["water"]
    held_out = cards[WATNET].training["measured_here"]["landsat7_nc"]["water_iou"]
    scores = held_out["held_out_default_smoothing"]
    assert scores[Path(LANDSAT_FILE).stem] > scores[Path(WATNET).stem]
    assert water.index(LANDSAT_FILE) < water.index(WATNET)
    # The NDWI fallback is the best NDWI method of the comparison (threshold chosen on
    # the training area), for scenes no network fits.
    ndwi = [r for k, r in results.items() if k.startswith("ndwi:")]
    assert max(ndwi, key=lambda r: r["water"]["default"]["iou"])["source"] == WATER_FALLBACK
    # Every spectral contender was scored on the same held-out region.
    assert {"ndwi:otsu", "mndwi:otsu"} <= set(results)
    assert sum(k.startswith("ndwi:") for k in results) == 2
    assert sum(k.startswith("mndwi:") for k in results) == 2
    assert comparison["region"] == [
        LANDSAT_REGION.row_off,
        LANDSAT_REGION.col_off,
        LANDSAT_REGION.height,
        LANDSAT_REGION.width,
    ]


# --- choosing the model for a scene ---------------------------------------------------------


def test_roads_on_an_rgb_scene_named_or_not():
    roads = str(WEIGHTS_DIR / ROADS_V2_FILE)
    assert default_sources(["roads"], roles=RGB, count=3) == (roads,)
    # The Massachusetts tiles: three bands without descriptions, in R, G, B order.
    assert default_sources(["roads"], roles=[None] * 3, count=3) == (roads,)
    with pytest.raises(BandError, match="roads"):
        default_sources(["roads"], roles=[None] * 4, count=4)  # which three? unknowable


def test_water_on_landsat7_uses_the_trained_model_and_sources_are_listed_once():
    landsat = str(WEIGHTS_DIR / LANDSAT_FILE)
    assert default_sources(["water"], roles=LANDSAT7, count=6) == (landsat,)
    assert default_sources(["roads", "water"], roles=LANDSAT7, count=6) == (
        str(WEIGHTS_DIR / ROADS_V2_FILE),
        landsat,
    )
    assert default_sources(["water", "water"], roles=LANDSAT7, count=6) == (landsat,)


def test_water_falls_back_to_ndwi_on_a_green_and_nir_scene():
    naip = band_roles([None] * 4, sensor="naip")  # red, green, blue, nir
    assert default_sources(["water"], roles=naip, count=4) == (WATER_FALLBACK,)
    assert default_sources(["water", "roads"], roles=naip, count=4) == (
        WATER_FALLBACK,
        str(WEIGHTS_DIR / ROADS_V2_FILE),
    )
    # The Sentinel-2 render in ../shared/data: B01..B08, no SWIR.
    s2 = band_roles([f"B0{i}" for i in range(1, 9)])
    assert default_sources(["water"], roles=s2, count=8) == (WATER_FALLBACK,)
    # Two unnamed bands are taken as the method's own order (green, nir).
    assert default_sources(["water"], roles=[None, None], count=2) == (WATER_FALLBACK,)


def test_trained_models_are_passed_over_on_much_coarser_pixels_but_kept_on_finer():
    landsat = str(WEIGHTS_DIR / LANDSAT_FILE)
    assert default_sources(["water"], roles=LANDSAT7, count=6, resolution_m=30.0) == (landsat,)
    # Finer pixels at any ratio: the scene is read at the model's 28.5 m.
    assert default_sources(["water"], roles=LANDSAT7, count=6, resolution_m=10.0) == (landsat,)
    # Coarser by more than 2x: both Landsat networks (28.5 m, 30 m) are passed over for NDWI,
    # which has no resolution.
    assert default_sources(["water"], roles=LANDSAT7, count=6, resolution_m=100.0) == (
        WATER_FALLBACK,
    )
    roads = str(WEIGHTS_DIR / ROADS_V2_FILE)
    assert default_sources(["roads"], roles=RGB, count=3, resolution_m=0.3) == (roads,)
    assert default_sources(["roads"], roles=RGB, count=3, resolution_m=2.0) == (roads,)
    # Neither roads model takes 2.5 m pixels: the error names both.
    with pytest.raises(BandError) as err:
        default_sources(["roads"], roles=RGB, count=3, resolution_m=2.5)
    for name in (ROADS_V2_FILE, ROADS_FILE):
        assert f"{name} is trained for 1 m pixels, the scene's are 2.5 m;" in str(err.value)
    assert str(err.value).endswith("pass a model made for this imagery with --model")
    with pytest.raises(BandError, match=r"trained for 1 m pixels, the scene's are 8.22 m; pass"):
        default_sources(["roads"], roles=RGB, count=3, resolution_m=8.21533)


def test_units_misfit_tells_8_bit_dns_from_16_bit_dns_and_reflectance(cards):
    landsat = cards[LANDSAT_FILE]
    assert units_misfit(landsat, np.array([81.0, 67, 67, 69, 90])) is None  # its own units
    assert units_misfit(landsat, np.array([60.0, 40, 30, 15, 10])) is None  # a dark, wet scene
    assert units_misfit(landsat, np.array([160.0, 140, 150, 130, 170])) is None  # bright
    why = units_misfit(landsat, np.array([9000.0, 8800, 8200, 14000, 11000]))  # Landsat 8 DNs
    assert why is not None and "9e+03/8.8e+03" in why and "81.1/67.1" in why
    assert units_misfit(landsat, np.array([0.08, 0.07, 0.06, 0.3, 0.2])) is not None
    assert units_misfit(cards[WATER_FALLBACK], np.array([9000.0, 8000])) is None  # scale-free
    assert units_misfit(landsat, None) is None  # nothing sampled: no objection


def test_defaults_whose_units_do_not_match_the_scene_are_passed_over(cards):
    def l8_dns(card: ModelCard) -> str | None:
        return units_misfit(card, np.full(len(card.bands), 9000.0))

    assert default_sources(["water"], roles=LANDSAT7, count=6, value_misfit=l8_dns) == (
        WATER_FALLBACK,
    )
    with pytest.raises(BandError) as err:
        default_sources(["roads"], roles=RGB, count=3, value_misfit=l8_dns)
    for name in (ROADS_V2_FILE, ROADS_FILE):
        assert f"{name}: it was trained on values" in str(err.value)


def _landsat_like(
    path: Path, scale: float, dtype: str, *, metadata: tuple[float, float] | None = None
) -> Path:
    """A 6-band 30 m scene named like Landsat 7 (B1-B5, B7) with values ``scale`` x 8-bit,
    and each band's ``metadata`` (scale, offset) to physical values when given."""
    rng = np.random.default_rng(0)
    base = rng.integers(40, 110, size=(6, 300, 300)).astype(np.float64)
    profile = dict(
        driver="GTiff", width=300, height=300, count=6, dtype=dtype, crs="EPSG:32617",
        transform=Affine(30, 0, 500000, 0, -30, 4000000),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((base * scale).astype(dtype))
        for i, name in enumerate(["B1", "B2", "B3", "B4", "B5", "B7"], start=1):
            dst.set_band_description(i, name)
        if metadata is not None:
            dst.scales = [metadata[0]] * 6
            dst.offsets = [metadata[1]] * 6
    return path


def test_a_run_plan_samples_the_scene_to_choose_the_water_model(tmp_path: Path, caplog):
    from geoseg.config import RunConfig
    from geoseg.run.plan import plan_run

    landsat = str(WEIGHTS_DIR / LANDSAT_FILE)
    watnet = str(WEIGHTS_DIR / WATNET)
    config = RunConfig(classes=("water",), sensor="landsat7")
    dn8 = plan_run(_landsat_like(tmp_path / "l7.tif", 1.0, "uint8"), config)
    assert [u.source for u in dn8.models] == [landsat]
    # 16-bit DNs of unknown scaling: neither Landsat network understands them.
    dn16 = plan_run(_landsat_like(tmp_path / "l8.tif", 120.0, "uint16"), config)
    assert [u.source for u in dn16.models] == [WATER_FALLBACK]
    # Reflectance 0-1: WatNet, reading the values as stored.
    refl = plan_run(_landsat_like(tmp_path / "sr.tif", 1 / 800, "float32"), config)
    assert [(u.source, u.scaling) for u in refl.models] == [(watnet, None)]
    # The same 16-bit DNs with the file's scale and offset to reflectance (Collection 2
    # Level-2): sampled in WatNet's units, they fit it, and the run applies that scaling.
    c2l2 = _landsat_like(tmp_path / "c2l2.tif", 120.0, "uint16", metadata=(2.75e-5, -0.2))
    (use,) = plan_run(c2l2, config).models
    assert use.source == watnet
    assert use.scaling is not None
    np.testing.assert_allclose(use.scaling, [[2.75e-5] * 6, [-0.2] * 6])
    # A model the user names is kept, with a warning saying why it may not suit the scene.
    caplog.clear()
    config = RunConfig(classes=("water",), models=(landsat,), sensor="landsat7")
    given = plan_run(tmp_path / "l8.tif", config)
    assert [u.source for u in given.models] == [landsat]
    assert "may not suit" in caplog.text and "other units or scaling" in caplog.text


def test_an_unknown_class_lists_the_classes_with_defaults():
    listed = "roads, water, crops, trees, grass, built, bare, shrub_and_scrub, snow_and_ice"
    with pytest.raises(ClassNotAvailableError, match=rf"'buildings'.*: {listed};.*--model"):
        default_sources(["water", "buildings"], roles=LANDSAT7, count=6)


def test_crops_come_from_the_field_model_at_1_m_and_dynamic_world_on_sentinel2(cards):
    # The Landsat model has a crops output, but on the held-out region it finds none of the
    # 1996 agriculture pixels: a default that silently returns nothing would mislead.
    crops = cards[LANDSAT_FILE].training["validation"]["classes"]["crops"]
    assert crops["iou"] < MIN_DEFAULT_IOU
    assert LANDSAT_FILE not in DEFAULT_MODELS["crops"]
    fields = str(WEIGHTS_DIR / CROPS_V2_FILE)
    dw = str(WEIGHTS_DIR / DYNAMIC_WORLD)
    # 1 m RGB (NAIP, aerial): the field model, named bands or three unnamed ones.
    assert default_sources(["crops"], roles=RGB, count=3, resolution_m=1.0) == (fields,)
    assert default_sources(["crops"], roles=[None] * 3, count=3, resolution_m=0.6) == (fields,)
    naip = band_roles([None] * 4, sensor="naip")  # red, green, blue, nir
    assert default_sources(["crops"], roles=naip, count=4, resolution_m=1.0) == (fields,)
    # Sentinel-2 at 10 m has red, green and blue too, but its pixels are 10x the field
    # model's: it is passed over for Dynamic World.
    s2 = band_roles(S2_L1C)
    assert default_sources(["crops"], roles=s2, count=13, resolution_m=10.0) == (dw,)
    # A 30 m Landsat 7 scene (no red edge), or the 10 m Sentinel-2 render B01-B08 (no SWIR):
    # the error names the class, why each candidate does not fit, what the scene has, and
    # the way out.
    with pytest.raises(BandError) as err:
        default_sources(["crops"], roles=LANDSAT7, count=6, resolution_m=30.0)
    msg = str(err.value)
    assert "class 'crops'" in msg and f"{DYNAMIC_WORLD} needs {DW_NEEDS};" in msg
    assert f"{CROPS_FILE} is trained for 1 m pixels, the scene's are 30 m;" in msg
    assert "(bands blue, green, red, nir, swir1, swir2)" in msg
    assert "--bands" in msg and "--sensor" in msg and "--model" in msg
    render = band_roles([f"B0{i}" for i in range(1, 9)])
    with pytest.raises(BandError, match=rf"class 'crops'.*{DYNAMIC_WORLD} needs {DW_NEEDS}"):
        default_sources(["crops"], roles=render, count=8, resolution_m=10.0)


def test_a_scene_without_the_bands_says_what_each_candidate_needs_and_how_to_fix_it():
    with pytest.raises(BandError) as err:
        default_sources(["water"], roles=RGB, count=3)
    msg = str(err.value)
    assert "class 'water'" in msg
    assert f"{DYNAMIC_WORLD} needs {DW_NEEDS};" in msg
    assert f"{LANDSAT_FILE} needs blue, green, red, nir, swir1;" in msg
    assert f"{WATNET} needs blue, green, red, nir, swir1, swir2;" in msg
    assert f"{WATER_FALLBACK} needs green, nir" in msg
    assert "(bands red, green, blue)" in msg
    assert "--bands" in msg and "--sensor" in msg and "--model" in msg
    with pytest.raises(BandError, match=r"class 'water'.*\(3 unnamed bands\)"):
        default_sources(["water"], roles=[None] * 3, count=3)


def test_a_missing_weights_file_falls_back_for_water_and_fails_clearly_for_roads(
    monkeypatch, tmp_path
):
    monkeypatch.setattr("geoseg.models.defaults.WEIGHTS_DIR", tmp_path)
    assert default_sources(["water"], roles=LANDSAT7, count=6) == (WATER_FALLBACK,)
    with pytest.raises(ModelCardError, match=r"class 'roads' is unusable.*does not exist.*retrain"):
        default_sources(["roads"], roles=RGB, count=3)


def test_roads_fall_back_to_the_first_model_when_v2_is_missing(monkeypatch, tmp_path, caplog):
    (tmp_path / ROADS_FILE).symlink_to(WEIGHTS_DIR / ROADS_FILE)
    monkeypatch.setattr("geoseg.models.defaults.WEIGHTS_DIR", tmp_path)
    caplog.clear()
    assert default_sources(["roads"], roles=RGB, count=3) == (str(tmp_path / ROADS_FILE),)
    assert f"default model {ROADS_V2_FILE} for roads is unusable" in caplog.text


# --- accuracy on the held-out data, through the real pipeline --------------------------------


def _iou_floor(card: ModelCard, cls: str) -> float:
    return float(card.training["validation"]["classes"][cls]["iou"]) - 0.02


def test_roads_model_reaches_its_card_score_on_the_held_out_tile(shared_data, cards):
    from geoseg.run.evaluate import evaluate

    card = cards[ROADS_FILE]
    # The card's validation ran the tiled inference without smoothing; so does this.
    result = evaluate(
        str(WEIGHTS_DIR / ROADS_FILE),
        ROADS_HELD_OUT.image,
        ROADS_HELD_OUT.labels,
        class_map=ROADS.class_map,
        smooth="none",
    )
    assert result.metrics["roads"].iou >= _iou_floor(card, "roads")


def test_landsat_model_reaches_its_card_scores_on_the_held_out_region(shared_data, cards):
    from geoseg.run.evaluate import evaluate

    card = cards[LANDSAT_FILE]
    (data,) = LANDSAT.inputs
    result = evaluate(
        str(WEIGHTS_DIR / LANDSAT_FILE),
        data.image,
        data.labels,
        class_map=LANDSAT.class_map,
        region=LANDSAT_REGION,
        smooth="none",
    )
    claimed = [cls for cls, sources in DEFAULT_MODELS.items() if LANDSAT_FILE in sources]
    assert claimed
    for cls in claimed:
        assert result.metrics[cls].iou >= _iou_floor(card, cls), cls


def test_card_records_the_pipeline_scores_it_was_shipped_with(cards):
    # What `geoseg evaluate` measured when the model was trained, with and without smoothing,
    # so users see what the default recipes do to each class.
    # Models geoseg trained (a ported model's card holds what was measured here instead).
    for name in TRAINED:
        ev = cards[name].training["evaluation"]
        assert set(ev) >= {"none", "default", "held_out"}
        json.dumps(ev)  # plain JSON
        assert Path(ev["held_out"][0]).name.endswith(".tif")


def test_landsat_card_keeps_the_last_epoch_so_the_comparison_is_fair(cards):
    # keep="last": the held-out region chose neither the epoch nor the threshold of any
    # contender, so the water comparison compares like with like.
    t = cards[LANDSAT_FILE].training
    assert t["kept"] == "last"
    assert t["best_epoch"] == t["epochs"] == t["history"][-1]["epoch"]
    water = t["validation"]["classes"]["water"]["iou"]
    model = t["comparison"]["results"][LANDSAT_FILE]["water"]["none"]["iou"]
    assert model == pytest.approx(water, abs=0.01)  # training-time and pipeline scores agree


# --- smoothing recipes in a run plan ---------------------------------------------------------


def test_water_smoothing_depends_on_whether_a_model_or_an_index_gives_it(tmp_path: Path):
    from geoseg.config import RunConfig
    from geoseg.run.plan import plan_run

    scene = _landsat_like(tmp_path / "l7.tif", 1.0, "uint8")
    trained = plan_run(scene, RunConfig(classes=("water",), sensor="landsat7"))
    assert trained.models[0].source == str(WEIGHTS_DIR / LANDSAT_FILE)
    assert trained.models[0].recipes["water"].method == "crf+morph"
    config = RunConfig(classes=("water",), models=(WATER_FALLBACK,), sensor="landsat7")
    index = plan_run(scene, config)
    assert index.models[0].recipes["water"].method == "morph"
    assert index.models[0].recipes["water"].morph == trained.models[0].recipes["water"].morph
    # The halo follows the recipe actually used: no CRF reach for the index.
    assert index.tiling.halo_px < trained.tiling.halo_px


def test_a_class_prefixed_smoothing_parameter_changes_only_that_class_in_a_run(tmp_path: Path):
    from geoseg.config import RunConfig
    from geoseg.errors import ConfigError
    from geoseg.run.plan import plan_run

    scene = _landsat_like(tmp_path / "l7.tif", 1.0, "uint8")

    def recipes(*params: str) -> dict:
        config = RunConfig(
            classes=("water", "vegetation"),
            models=("ndwi:0.35", "ndvi:0.3"),
            sensor="landsat7",
            smooth_params=params,
        )
        return {c: r for u in plan_run(scene, config).models for c, r in u.recipes.items()}

    default = recipes()
    scoped = recipes("water.min_object_area_m2=500")
    assert scoped["water"].morph.min_object_area_m2 == 500.0
    assert scoped["vegetation"] == default["vegetation"]
    every = recipes("min_object_area_m2=500")
    assert every["water"].morph.min_object_area_m2 == 500.0
    assert every["vegetation"].morph.min_object_area_m2 == 500.0
    with pytest.raises(ConfigError, match=r"class 'watr'.*\(classes: water, vegetation\)"):
        recipes("watr.min_object_area_m2=500")


def test_a_class_its_model_does_not_validate_for_gets_a_warning(tmp_path: Path, caplog):
    from geoseg.config import RunConfig
    from geoseg.run.plan import plan_run

    scene = _landsat_like(tmp_path / "l7.tif", 1.0, "uint8")
    landsat = str(WEIGHTS_DIR / LANDSAT_FILE)
    caplog.clear()
    plan_run(scene, RunConfig(classes=("water",), models=(landsat,), sensor="landsat7"))
    assert "held-out" not in caplog.text  # water validates at 0.68
    plan_run(scene, RunConfig(classes=("crops",), models=(landsat,), sensor="landsat7"))
    assert "scored crops IoU 0.00 on its held-out data" in caplog.text
