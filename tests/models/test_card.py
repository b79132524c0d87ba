"""Model files: self-describing safetensors, no pickle, importing plain state dicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from geoseg.errors import BandError, ModelCardError
from geoseg.models.bands import band_roles, resolve_bands
from geoseg.models.card import (
    CARD_KEY,
    ClassInfo,
    ModelCard,
    card_from_json,
    card_to_json,
    read_card,
)
from geoseg.models.normalisation import Transform
from geoseg.models.registry import (
    ARCHITECTURES,
    build_network,
    import_state_dict,
    load_network,
    save_model,
)


def small_card(arch: str = "unet", encoder: str = "resnet18", **kw: object) -> ModelCard:
    base: dict[str, object] = {
        "name": "t",
        "architecture": arch,
        "encoder": encoder,
        "bands": ("red", "green", "blue"),
        "mean": (1.0, 2.0, 3.0),
        "std": (4.0, 5.0, 6.0),
        "classes": (ClassInfo(name="background"), ClassInfo(name="water", color="#0000ff")),
        "tile_size": 64,
        "overlap": 16,
    }
    base.update(kw)
    return ModelCard(**base)  # type: ignore[arg-type]


def test_card_roundtrips_through_json() -> None:
    card = small_card(
        training={"val_iou": {"water": 0.8}},
        params={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    )
    assert card_from_json(card_to_json(card)) == card


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ({"mean": (1.0,)}, "3 bands but 1 means"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
        ({"classes": (ClassInfo(name="background"),)}, "at least one class"),
        ({"tile_size": 100}, "not a multiple of 32"),
        (
            {"tile_size": 64, "overlap": 40},
            "overlap 40 must be between 0 and half the tile size 64; use an overlap of at most 32",
        ),
        ({"overlap": -1}, "overlap -1 must be between 0 and half"),
    ],
)
def test_invalid_cards_name_the_problem(mutate: dict[str, object], message: str) -> None:
    with pytest.raises(ModelCardError, match=message):
        small_card(**mutate)


def test_card_file_with_too_large_an_overlap_fails_when_read(tmp_path: Path) -> None:
    """Not first at `geoseg run`, when the tiling is planned."""
    text = card_to_json(small_card()).replace('"overlap": 16', '"overlap": 48')
    with pytest.raises(ModelCardError, match=r"overlap 48 .* at most 32"):
        card_from_json(text)


def test_bad_colour_and_unknown_fields_are_rejected() -> None:
    with pytest.raises(ModelCardError, match="'#rrggbb'"):
        ClassInfo(name="water", color="blue")
    text = card_to_json(small_card()).replace('"name": "t"', '"name": "t", "colour": 1')
    with pytest.raises(ModelCardError, match="unknown model card fields"):
        card_from_json(text)


@pytest.mark.parametrize(
    "arch", ["unet", "unetplusplus", "fpn", "pspnet", "deeplabv3", "deeplabv3plus"]
)
def test_every_required_architecture_saves_and_loads_without_pickle(
    tmp_path: Path, arch: str
) -> None:
    card = small_card(arch=arch)
    torch.manual_seed(0)
    net = build_network(card).eval()
    path = save_model(tmp_path / f"{arch}.safetensors", card, net.state_dict())
    with safe_open(str(path), framework="pt") as f:  # plain safetensors: readable anywhere
        assert CARD_KEY in f.metadata()
    loaded_card, loaded = load_network(path)
    assert loaded_card == card
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(ModelCardError, match="valid: unet, unetplusplus"):
        build_network(small_card(arch="unet3000"))
    assert {"unet", "unetplusplus", "fpn", "pspnet", "deeplabv3", "deeplabv3plus"} <= set(
        ARCHITECTURES
    )


def test_import_plain_state_dict_and_reject_mismatches(tmp_path: Path) -> None:
    card = small_card()
    net = build_network(card)
    pth = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, pth)
    out = import_state_dict(pth, card, tmp_path / "imported.safetensors")
    assert read_card(out) == card
    with pytest.raises(ModelCardError, match="do not fit the card"):
        import_state_dict(pth, small_card(encoder="resnet34"), tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, bad)
    with pytest.raises(ModelCardError, match="cannot read"):
        import_state_dict(bad, small_card(), tmp_path / "x.safetensors")


def test_files_without_a_card_are_explained(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelCardError, match="geoseg models import"):
        read_card(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelCardError, match="not a safetensors model file"):
        read_card(junk)


def test_band_roles_from_descriptions_and_sensor_codes() -> None:
    landsat = band_roles(["B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1", "B7 SWIR2"])
    assert landsat == ["blue", "green", "red", "nir", "swir1", "swir2"]
    s2 = band_roles(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08"])
    assert s2[1:4] == ["blue", "green", "red"] and s2[7] == "nir"
    assert resolve_bands(("green", "nir"), count=8, roles=s2) == (3, 8)
    assert band_roles([None, None, None], colorinterp=["red", "green", "blue"]) == [
        "red",
        "green",
        "blue",
    ]


def test_missing_bands_are_one_clear_error() -> None:
    with pytest.raises(BandError, match="has 3 bands but model 'x' needs 4"):
        resolve_bands(
            ("blue", "green", "red", "nir"), count=3, roles=[None] * 3, model_name="model 'x'"
        )
    with pytest.raises(BandError, match="missing: nir"):
        resolve_bands(("red", "nir"), count=3, roles=["red", "green", "blue"])
    assert resolve_bands(
        ("red", "nir"), count=3, roles=["red", "green", "blue"], explicit=(1, 3)
    ) == (1, 3)
    with pytest.raises(BandError, match="band 5 does not exist"):
        resolve_bands(("red", "nir"), count=3, roles=[None] * 3, explicit=(1, 5))


# --- format 2: transforms, units, activation, merged classes, licence --------------------------

WEIGHTS = Path(__file__).resolve().parents[2] / "geoseg" / "models" / "weights"
FORMAT_1_FILES = ("roads-unet-r18.safetensors", "landsat7-water-crops.safetensors")


def merged_card(**kw: object) -> ModelCard:
    base: dict[str, object] = {
        "architecture": "dynamicworld",
        "encoder": "",
        "outputs": 4,
        "classes": (
            ClassInfo(name="background"),
            ClassInfo(name="water", color="#0000ff", channels=(0, 3)),
            ClassInfo(name="crops", color="#ff8000", channels=(2,)),
        ),
        "normalisation": (
            Transform(op="scale", params={"factor": 0.005}),
            Transform(op="log1p"),
            Transform(op="zscore", params={"mean": (1.7, 1.7, 1.6), "std": (2.0, 2.0, 2.1)}),
            Transform(op="sigmoid", params={"gain": 5.0, "shift": -1.0}),
        ),
        "reflectance_scale": 10000.0,
        "licence": "Apache-2.0",
        "attribution": "Made by someone else.\n\nCopyright 2021 Someone",
        "source": "https://example.org/weights (v1)",
    }
    base.update(kw)
    return small_card(**base)


def test_a_card_with_transforms_roundtrips_as_format_2() -> None:
    card = merged_card()
    text = card_to_json(card)
    assert json.loads(text)["format"] == "geoseg-model/2"
    assert json.loads(text)["normalisation"][0] == {"op": "scale", "factor": 0.005}
    assert card_from_json(text) == card
    sigmoid = small_card(
        architecture="watnet", encoder="", activation="sigmoid", reflectance_scale=1.0
    )
    assert card_from_json(card_to_json(sigmoid)) == sigmoid


@pytest.mark.parametrize("name", FORMAT_1_FILES)
def test_shipped_format_1_cards_read_and_write_back_byte_for_byte(name: str) -> None:
    path = WEIGHTS / name
    if not path.is_file():
        pytest.skip(f"{name} not shipped")
    with safe_open(str(path), framework="np") as f:
        text = f.metadata()[CARD_KEY]
    assert json.loads(text)["format"] == "geoseg-model/1"
    card = card_from_json(text)
    assert card_to_json(card) == text
    # Their normalisation is the z-score of mean and std, their output a softmax per class.
    (step,) = card.transforms
    assert step.op == "zscore" and step.params == {"mean": card.mean, "std": card.std}
    assert card.class_channels is None and card.network_outputs == len(card.classes)


def test_a_card_using_nothing_new_is_still_written_as_format_1() -> None:
    assert json.loads(card_to_json(small_card()))["format"] == "geoseg-model/1"
    assert "licence" not in json.loads(card_to_json(small_card()))


def test_format_1_cards_cannot_use_format_2_fields() -> None:
    text = card_to_json(small_card()).replace('"name": "t"', '"name": "t", "licence": "MIT"')
    with pytest.raises(ModelCardError, match="'licence' needs format 'geoseg-model/2'"):
        card_from_json(text)
    with pytest.raises(ModelCardError, match="expected one of geoseg-model/1, geoseg-model/2"):
        card_from_json(text.replace("geoseg-model/1", "geoseg-model/9"))


def test_merged_classes_resolve_their_channels_and_the_background_takes_the_rest() -> None:
    card = merged_card()
    assert card.class_channels == ((1,), (0, 3), (2,))
    assert card.network_outputs == 4 and card.probability_channels == 4
    sigmoid = small_card(architecture="watnet", encoder="", activation="sigmoid")
    assert sigmoid.network_outputs == 1 and sigmoid.probability_channels == 2
    assert sigmoid.class_channels is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ({"activation": "relu"}, "activation 'relu' is not one of softmax, sigmoid"),
        ({"outputs": None}, "classes list channels, so give the network's output count"),
        ({"outputs": 3}, "class 'water' takes channel 3 but the network has 3 probability"),
        (
            {
                "classes": (
                    ClassInfo(name="background"),
                    ClassInfo(name="water", channels=(0, 3)),
                    ClassInfo(name="wet", channels=(3,)),
                )
            },
            "channel 3 is in both 'water' and 'wet'; a channel belongs to one class",
        ),
        (
            {"classes": (ClassInfo(name="background"), ClassInfo(name="water"))},
            "4 probability channels; list each class's channels",
        ),
        (
            {
                "classes": (
                    ClassInfo(name="background"),
                    ClassInfo(name="water", channels=(0,)),
                    ClassInfo(name="crops"),
                )
            },
            "class 'crops' lists no channels",
        ),
        ({"reflectance_scale": 0.0}, "reflectance_scale 0.0 must be positive"),
        (
            {"normalisation": (Transform(op="scale", params={"factor": [1.0, 2.0]}),)},
            "normalisation scale.factor has 2 values for 3 bands",
        ),
        ({"activation": "sigmoid", "outputs": 2}, "a sigmoid model has one output logit, not 2"),
    ],
)
def test_invalid_format_2_cards_name_the_problem(mutate: dict[str, object], message: str) -> None:
    with pytest.raises(ModelCardError, match=message) as err:
        merged_card(**mutate)
    assert "\n" not in str(err.value)


def test_a_sigmoid_card_needs_exactly_two_classes() -> None:
    with pytest.raises(ModelCardError, match="3 classes but 2 probability channels"):
        small_card(
            activation="sigmoid",
            classes=(ClassInfo(name="background"), ClassInfo(name="a"), ClassInfo(name="b")),
        )


def test_bad_class_channels_are_one_line_errors() -> None:
    with pytest.raises(ModelCardError, match=r"channels \[1, 1\] must be distinct"):
        ClassInfo(name="water", channels=(1, 1))
    text = card_to_json(merged_card()).replace('"channels": [\n        2\n      ]', '"channels": 2')
    with pytest.raises(ModelCardError, match=r"'classes\.crops\.channels' must be a list"):
        card_from_json(text)


def test_geoseg_architectures_build_with_the_network_output_count() -> None:
    assert {"dynamicworld", "watnet"} <= set(ARCHITECTURES)
    dw = build_network(merged_card())
    assert dw.head.out_channels == 4 and dw.stem.conv.in_channels == 3
    wat = build_network(small_card(architecture="watnet", encoder="", activation="sigmoid"))
    assert wat.outp[0].out_channels == 1
    with pytest.raises(ModelCardError, match=r"cannot build watnet and params \{'depth': 3\}"):
        build_network(
            small_card(architecture="watnet", encoder="", activation="sigmoid", params={"depth": 3})
        )
