"""Training files: reading them, and the two that reproduce the shipped models."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.errors import ConfigError
from geoseg.models.card import read_card
from geoseg.models.defaults import WEIGHTS_DIR
from geoseg.tiling.grid import PixelWindow
from geoseg.training.chips import plan_split
from geoseg.training.config import TrainConfig
from geoseg.training.config_file import expand_variables, read_train_file

TRAIN_FILES = Path(__file__).resolve().parents[2] / "workflows" / "train"
# Options that do not change the weights, or name where files go, or are new since the
# shipped models were trained.
NOT_COMPARED = {"inputs", "output", "checkpoint_dir", "command", "compare"}


def _read(name: str, tmp_path: Path) -> TrainConfig:
    return read_train_file(TRAIN_FILES / name, overrides={"output": str(tmp_path / "m.st")})


def test_roads_file_holds_out_tile_10678810_15_whole(tmp_path):
    config = _read("roads.yaml", tmp_path)
    tiles = [Path(i.image).name.removesuffix("_image.tif") for i in config.inputs]
    assert len(set(tiles)) == len(tiles) == 7
    assert config.validation.kind == "tile"
    assert [tiles[i] for i in config.validation.tiles] == ["10678810_15"]
    for item in config.inputs:
        assert Path(item.labels.path).name == Path(item.image).name.replace("image", "label")
    plan = plan_split(config.validation, [(1500, 1500)] * 7, chip=config.chip_size)
    assert [i for i, _ in plan.validation] == [6] and 6 not in {a.index for a in plan.train}
    assert config.class_map.class_names == ("background", "roads")
    assert (config.keep, config.threads, config.store_dtype) == ("best", 0, "fp16")


def test_landsat_file_holds_out_a_region_with_a_one_chip_gap(tmp_path):
    config = _read("landsat.yaml", tmp_path)
    assert [Path(i.image).name for i in config.inputs] == ["lsat7_2000_stack.tif"]
    split = config.validation
    assert split.kind == "region" and split.image == 0
    assert split.region == PixelWindow(row_off=336, col_off=160, height=107, width=329)
    (area,) = plan_split(split, [(443, 489)], chip=config.chip_size).train
    assert area.exclude == split.region and area.gap == config.chip_size == 64
    assert config.class_map.class_names == ("background", "water", "crops")
    assert (config.keep, config.threads, config.store_dtype) == ("last", 1, "fp16")
    assert config.compare == ("ndwi", "mndwi")


@pytest.mark.parametrize("name", ["roads.yaml", "landsat.yaml"])
def test_training_files_state_what_trained_the_shipped_models(name, tmp_path, shared_data):
    # The card of each shipped model records the config that trained it: the file holds the
    # same options, so `geoseg train` on it trains the same model. The options name the data
    # where it is, so this needs ../shared/data (the fixture skips without it).
    config = _read(name, tmp_path)
    model = WEIGHTS_DIR / f"{config.name}.safetensors"
    recorded = read_card(model).training["reproducibility"]["config"]
    again = TrainConfig.from_dict({**recorded, "output": config.output})
    # Not the fingerprint: it hashes the input paths, which differ where the data is mounted
    # elsewhere; the options are compared below and the inputs by their file names.
    mine = config.to_dict()
    assert {k: v for k, v in mine.items() if k not in NOT_COMPARED} == {
        k: v for k, v in again.to_dict().items() if k not in NOT_COMPARED
    }

    def tail(path: str) -> str:  # the shared data may be mounted anywhere
        return "/".join(Path(path).parts[-2:])

    assert [(tail(i.image), tail(i.labels.path)) for i in config.inputs] == [
        (tail(i.image), tail(i.labels.path)) for i in again.inputs
    ]


def test_input_paths_resolve_against_data_root_and_its_variable(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "t.yaml"
    path.write_text(
        "data_root: ${MY_DATA:-../data}\n"
        "inputs:\n"
        "  - {image: a/img.tif, labels: {path: a/lab.tif}}\n"
        "  - {image: /abs/i.tif, labels: l.tif}\n"
        "class_map: {classes: [{name: background}, {name: water}]}\n"
        "bands: [red, green, blue]\n"
        "output: out/m.safetensors\n"
    )
    monkeypatch.delenv("MY_DATA", raising=False)
    config = read_train_file(path)
    data = (tmp_path / "data").resolve()
    assert config.inputs[0].image == str(data / "a/img.tif")
    assert config.inputs[0].labels.path == str(data / "a/lab.tif")
    assert config.inputs[1].image == "/abs/i.tif"
    assert config.inputs[1].labels.path == str(data / "l.tif")
    # Outputs stay beside the file, whatever the data root.
    assert config.output == str(folder.resolve() / "out/m.safetensors")
    assert config.checkpoint_dir == config.output + ".ckpt"

    monkeypatch.setenv("MY_DATA", str(tmp_path / "elsewhere"))
    assert read_train_file(path).inputs[0].image == str(tmp_path / "elsewhere" / "a/img.tif")
    given = read_train_file(path, overrides={"output": "/x/y.safetensors", "epochs": 3})
    assert (given.output, given.epochs) == ("/x/y.safetensors", 3)


def test_without_data_root_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "inputs: [{image: img.tif, labels: lab.tif}]\n"
        "class_map: {classes: [{name: background}, {name: water}]}\n"
        "bands: [red]\n"
    )
    with pytest.raises(ConfigError, match="no output model file"):
        read_train_file(path)
    config = read_train_file(path, overrides={"output": "/o/m.safetensors"})
    assert config.inputs[0].image == str(tmp_path.resolve() / "img.tif")


def test_expand_variables():
    env = {"A": "/data", "EMPTY": ""}
    assert expand_variables("${A}/x", env) == "/data/x"
    assert expand_variables("${B:-../d}/x", env) == "../d/x"
    assert expand_variables("${EMPTY:-fallback}", env) == "fallback"
    assert expand_variables("$A/x", env) == "$A/x"  # only the braced form
    with pytest.raises(ConfigError, match=r"\$\{B\}, which is not set"):
        expand_variables("${B}/x", env)


def test_compare_names_index_methods_of_one_model_class(tmp_path):
    config = _read("landsat.yaml", tmp_path)
    raw = {**config.to_dict(), "compare": "ndwi"}
    assert TrainConfig.from_dict(raw).compare == ("ndwi",)
    for compare, message in [
        (["ndwi:0.3"], "unknown index method 'ndwi:0.3'"),
        (["ndvi"], "ndvi find vegetation, which is not a class of the model"),
        (["ndwi", "ndvi"], "find different classes"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict({**raw, "compare": compare})


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_crops_file_trains_on_the_training_images_only(tmp_path):
    # The authors' split: 30 training images, 10 test images that nothing trains on or
    # chooses with; 5 of the 30 are held out whole for validation.
    config = _read("crops.yaml", tmp_path)

    def ids(items):
        return [Path(i.image).name.removesuffix("_image.tif") for i in items]

    trained, tested = ids(config.inputs), ids(config.test)
    assert len(set(trained)) == len(trained) == 30 and len(set(tested)) == 10
    split_csv = SHARED / "naip_fields" / "split.csv"
    if split_csv.is_file():
        import csv

        with split_csv.open() as f:
            split = {row["image"]: row["split"] for row in csv.DictReader(f)}
        assert {split[i] for i in trained} == {"train"}
        assert {split[i] for i in tested} == {"test"}
    assert config.validation.kind == "tile" and len(config.validation.tiles) == 5
    plan = plan_split(config.validation, [(1024, 1024)] * 30, chip=config.chip_size)
    assert len(plan.train) == 25 and not {i for i, _ in plan.validation} & {
        a.index for a in plan.train
    }
    for item in (*config.inputs, *config.test):
        assert item.labels.boundary_px == 2 and item.labels.boundary_class == "field_boundary"
        assert Path(item.labels.path).name == Path(item.image).name.replace(
            "image.tif", "fields.gpkg"
        )
    assert config.class_map.class_names == ("background", "crops", "field_boundary")
    assert config.scores == {"merge": {"field_boundary": "crops"}, "objects": True}
    assert config.threads == 1


def test_roads_v2_file_holds_out_the_same_tile_as_roads_unet_r18(tmp_path):
    config = _read("roads-v2.yaml", tmp_path)
    first = _read("roads.yaml", tmp_path)
    assert [Path(i.image).name for i in config.inputs] == [Path(i.image).name for i in first.inputs]
    assert config.validation == first.validation
    assert config.augment is not None and config.augment.scale == (0.5, 2.0)
    assert Path(config.init_from or "").name == "roads-unet-r18.safetensors"
    assert config.scores == {"relaxed_px": 3}
    assert config.threads == 1


def test_a_test_image_cannot_also_be_a_training_input(tmp_path):
    config = _read("crops.yaml", tmp_path)
    leaked = {**config.to_dict(), "test": [config.to_dict()["inputs"][0]]}
    with pytest.raises(ConfigError, match="also a training input"):
        TrainConfig.from_dict(leaked)


@pytest.mark.parametrize("name", ["roads-v5.yaml", "roads-v5-scratch.yaml"])
def test_roads_v5_files_hold_out_a_region_and_test_on_a_tile_nothing_chose(name, tmp_path):
    config = _read(name, tmp_path)
    tiles = [Path(i.image).name.removesuffix("_image.tif") for i in config.inputs]
    (test,) = [Path(t.image).name.removesuffix("_image.tif") for t in config.test]
    assert test == "10678810_15" and test not in tiles and len(tiles) == 6
    split = config.validation
    assert split.kind == "region" and tiles[split.image] == "10228660_15"
    assert split.region == PixelWindow(row_off=0, col_off=0, height=500, width=1500)
    plan = plan_split(split, [(1500, 1500)] * 6, chip=config.chip_size)
    held = [a for a in plan.train if a.index == split.image]
    assert len(plan.train) == 6 and held[0].exclude == split.region
    assert held[0].gap == config.chip_size == 256, "no training chip within a chip of it"
    assert config.threshold_class == "roads" and config.keep == "best"
    assert config.scores == {"relaxed_px": 3} and config.encoder == "resnet34"
    transfer = config.init_encoder_from
    if name == "roads-v5.yaml":
        assert Path(transfer or "").name == "crops-fields-naip-v2.safetensors"
        assert Path(transfer or "").is_file()
    else:
        assert transfer is None and config.init_from is None
    # The two differ in their start alone.
    v5, scratch = (_read(n, tmp_path).to_dict() for n in ("roads-v5.yaml", "roads-v5-scratch.yaml"))
    differ = {k for k in v5.keys() | scratch.keys() if v5.get(k) != scratch.get(k)}
    assert differ == {"init_encoder_from", "name", "checkpoint_dir"}
