"""``geoseg models import`` of any smp checkpoint (``--param``) and of ONNX models, and
``geoseg models export --onnx``: one clear line for every mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.models.registry import load_network

BASE = ("--bands", "blue,green,red,nir", "--classes", "background,water,roads")
NORM = ("--mean", "900,1000,1000,2000", "--std", "400,400,500,900")
# the tiny test model: a U-Net over resnet18 with 3 stages and small decoder blocks
PARAMS = ("--param", "encoder_depth=3", "--param", "decoder_channels=[64, 32, 16]")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's weights as a Lightning-style .pth checkpoint."""
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pth"
    state = load_file(str(tiny_model))
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return path


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    mine, theirs = load_file(str(a)), load_file(str(b))
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("source", ["checkpoint", "tiny_model"])
def test_any_smp_checkpoint_imports_with_its_architecture_settings(
    source: str, request: pytest.FixtureRequest, tiny_model: Path, tmp_path: Path
) -> None:
    src: Path = request.getfixturevalue(source)  # a .pth, or a geoseg model file
    out = tmp_path / "imported.safetensors"
    args = ("models", "import", str(src), "--arch", "unet", "--encoder", "resnet18")
    code, text = _run(*args, *BASE, *NORM, *PARAMS, "-o", str(out))
    assert code == 0, text
    card, _ = load_network(out)
    assert dict(card.params) == {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}
    _same_weights(out, tiny_model)


def test_weights_that_do_not_fit_are_one_short_line(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported.safetensors"
    args = ("models", "import", str(checkpoint), "--arch", "unet", "--encoder", "resnet18")
    # smp's defaults (5 stages, decoder 256..16) are not what the weights were trained with
    code, text = _run(*args, *BASE, *NORM, "-o", str(out))
    assert code == 1
    line = text.strip()
    assert "\n" not in line and len(line) < 400, line
    assert "do not fit the card's architecture unet/resnet18: missing decoder.blocks.3." in line
    assert "shape decoder.blocks.0.conv1.0.weight: file [64,192,3,3] vs model [256,768,3,3]" in line
    assert line.count(" more)") == 2, "how many more layers differ"
    # the right depth but another decoder: only shapes differ
    code, text = _run(
        *args, *BASE, *NORM, "--param", "encoder_depth=3", "--param", "decoder_channels=[32,16,8]",
        "-o", str(out),
    )  # fmt: skip
    line = text.strip()
    assert code == 1 and "\n" not in line and len(line) < 400, line
    assert "encoder_depth=3,decoder_channels=[32,16,8]: shape decoder.blocks.0" in line
    assert "missing" not in line and "unexpected" not in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (("--param", "encoder_depth"), 2, "--param 'encoder_depth' is not KEY=VALUE"),
        (("--param", "decoder_channels=[64, 32"), 2, "is not a JSON or YAML"),
        (("--param", "in_channels=3"), 2, "--param in_channels is set from --bands"),
        (("--param", "a=1", "--param", "a=2"), 2, "--param a is given twice"),
        (("--outputs", "logits"), 2, "--outputs applies to ONNX models"),
    ],
)
def test_bad_params_are_one_line(
    checkpoint: Path, tmp_path: Path, extra: tuple[str, ...], code: int, message: str
) -> None:
    args = ("models", "import", str(checkpoint), "--arch", "unet", "--encoder", "resnet18")
    got, text = _run(*args, *BASE, *NORM, *extra, "-o", str(tmp_path / "x.safetensors"))
    assert got == code and message in text, text
    assert len(text.strip().splitlines()) == 1, text


def test_state_dicts_need_an_architecture_and_its_encoder(checkpoint: Path, tmp_path: Path) -> None:
    out = ("-o", str(tmp_path / "x.safetensors"))
    code, text = _run("models", "import", str(checkpoint), *BASE, *NORM, *out)
    assert code == 2 and "--arch required for a state dict" in text
    code, text = _run("models", "import", str(checkpoint), "--arch", "unet", *BASE, *NORM, *out)
    assert code == 2 and "--encoder required: unet is built over an encoder" in text


@pytest.fixture(scope="module")
def onnx_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    code, text = _run("models", "export", str(tiny_model), "--onnx", "-o", str(out))
    assert code == 0, text
    return out


def test_export_writes_a_self_describing_onnx_model(onnx_model: Path, tiny_model: Path) -> None:
    from geoseg.models.card import CARD_KEY, card_from_json, read_card
    from geoseg.models.onnx_card import read_onnx_metadata

    meta = read_onnx_metadata(onnx_model)
    assert card_from_json(meta[CARD_KEY]) == read_card(tiny_model)
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert json.loads(meta["class_names"]) == {"0": "background", "1": "water", "2": "roads"}


def test_export_mistakes_are_one_line(onnx_model: Path, tiny_model: Path, tmp_path: Path) -> None:
    code, text = _run("models", "export", str(tiny_model), "-o", str(tmp_path / "m.onnx"))
    assert code == 2 and "choose the format to write: --onnx" in text
    code, text = _run("models", "export", str(tiny_model), "--onnx", "-o", str(tmp_path / "m.pt"))
    assert code == 2 and "must end in .onnx" in text
    code, text = _run(
        "models", "export", str(tiny_model), "--onnx", "--opset", "11", "-o", "m.onnx"
    )
    assert code == 2 and "--opset 11 is too old; use 17 or newer" in text
    code, text = _run("models", "export", str(tiny_model), "--onnx", "-o", str(onnx_model))
    assert code == 1 and "exists; pass --overwrite to replace it" in text
    missing = tmp_path / "missing.safetensors"
    code, text = _run("models", "export", str(missing), "--onnx", "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "does not exist" in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnx_model_imports_from_the_command_line(onnx_model: Path, tmp_path: Path) -> None:
    import onnx

    from geoseg.models.card import CARD_KEY, card_from_json
    from geoseg.models.onnx_card import read_onnx_metadata

    # another tool's ONNX: the graph and Deepness's keys, no geoseg card
    proto = onnx.load(str(onnx_model))
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("geoseg.")]
    del proto.metadata_props[:]
    for key, value in keep:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))

    out = tmp_path / "mine.onnx"
    base = ("models", "import", str(foreign), "--bands", "blue,green,red,nir")
    code, text = _run(*base, "--arch", "unet", "-o", str(out))
    assert code == 2 and "--arch apply to state dicts; an ONNX model holds its architecture" in text
    code, text = _run(*base, "-o", str(tmp_path / "mine.safetensors"))
    assert code == 2 and "an imported ONNX model stays ONNX; name it mine.onnx" in text
    code, text = _run(*base, "--bands", "red,green,blue", "-o", str(out))
    assert code == 2 and "takes 4 input channels but --bands lists 3" in text
    code, text = _run(*base, "--tile", "64", "-o", str(out))
    assert code == 0, text
    assert "background, water, roads; tile 64, overlap 16" in text
    card = card_from_json(read_onnx_metadata(out)[CARD_KEY])
    assert card.class_names == ("background", "water", "roads")
    assert (card.tile_size, card.overlap, card.resolution_m) == (64, 16, 10.0)
    assert card.bands == ("blue", "green", "red", "nir")
