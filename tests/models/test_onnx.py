"""ONNX models: exported ones predict what the torch network predicts, the card and the
Deepness plugin's keys travel in the file, and foreign (Deepness) models import and run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from geoseg.config import InferenceOptions  # noqa: E402
from geoseg.errors import ConfigError, ModelCardError  # noqa: E402
from geoseg.models.card import CARD_KEY, ClassInfo, ModelCard, card_from_json, read_card  # noqa: E402
from geoseg.models.normalisation import Transform  # noqa: E402
from geoseg.models.onnx import OUTPUTS_KEY, export_onnx, import_onnx, load_onnx  # noqa: E402
from geoseg.models.onnx_card import read_onnx_metadata  # noqa: E402
from geoseg.models.predictor import TorchSegmenter, load_segmenter  # noqa: E402
from geoseg.models.registry import build_network, load_network, save_model  # noqa: E402
from tests.helpers import synthetic_image, synthetic_truth  # noqa: E402

FP32 = InferenceOptions(device="cpu", precision="fp32", tile=64, overlap=16)


def onnx_segmenter(path: Path, options: InferenceOptions = FP32) -> TorchSegmenter:
    """What ``load_segmenter`` gives for an ``.onnx`` file once wired."""
    card, network, opts = load_onnx(path, options=options)
    return TorchSegmenter(card, network, options=opts, copy=False)


def _block(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A 150 x 170 block of the synthetic scene, with a nodata corner."""
    image = synthetic_image(synthetic_truth(150, 170, seed=seed), seed=seed)
    valid = np.ones(image.shape[1:], dtype=bool)
    valid[:20, :40] = False
    return image, valid


def _foreign(
    path: Path, net: torch.nn.Module, *, bands: int, fixed: int | None, softmax: bool
) -> Path:
    """``net`` exported as another tool would: no geoseg metadata, maybe a fixed shape."""

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return torch.softmax(y, dim=1) if softmax else y

    size = fixed or 64
    axes = None if fixed else {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        torch.onnx.export(
            Graph().eval(),
            (torch.zeros(1, bands, size, size),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=None if axes is None else {"x": axes, "y": axes},
        )
    return path


def _with_metadata(path: Path, **values: object) -> Path:
    """Deepness writes each value as JSON (its documentation's example)."""
    proto = onnx.load(str(path))
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.parametrize("batch_size", [1, 5])
def test_an_exported_model_predicts_what_torch_predicts(
    tiny_model: Path, exported: Path, batch_size: int
) -> None:
    card, net = load_network(tiny_model)
    options = InferenceOptions(
        device="cpu", precision="fp32", tile=64, overlap=16, batch_size=batch_size
    )
    image, valid = _block()
    expected = TorchSegmenter(card, net, options=options).predict(image, valid)
    seg = onnx_segmenter(exported, options)
    got = seg.predict(image, valid)
    assert seg.card == card and seg.precision == "fp32" and seg.device == "cpu"
    assert got.shape == expected.shape == (3, 150, 170)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.all(got[:, ~valid] == 0)
    assert (expected.argmax(0) > 0).mean() > 0.05, "the model finds water and roads"


def test_model_slots_share_the_session_and_keep_the_answers(exported: Path) -> None:
    image, valid = _block()
    one = onnx_segmenter(exported).predict(image, valid)
    threads = torch.get_num_threads()
    try:
        options = InferenceOptions(
            device="cpu", precision="fp32", tile=64, overlap=16, batch_size=1,
            threads=2, concurrent_batches=2,
        )  # fmt: skip
        two = onnx_segmenter(exported, options).predict(image, valid)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one, two)


def test_the_export_carries_the_card_and_the_deepness_keys(
    tiny_model: Path, exported: Path
) -> None:
    meta = read_onnx_metadata(exported)
    assert meta == {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    card = read_card(tiny_model)
    assert card_from_json(meta[CARD_KEY]) == card
    assert meta[OUTPUTS_KEY] == "probabilities"
    deepness = {k: json.loads(v) for k, v in meta.items() if not k.startswith("geoseg.")}
    assert deepness["model_type"] == "Segmentor"
    assert deepness["class_names"] == {"0": "background", "1": "water", "2": "roads"}
    assert deepness["resolution"] == 1000  # cm per pixel: the card's 10 m
    assert deepness["tile_size"] == deepness["tiles_size"] == 128
    assert deepness["tiles_overlap"] == 25  # percent: 32 of 128 px
    # Deepness feeds the network (x / 255 - m) / s: the card's (x - mean) / std.
    x = np.random.default_rng(0).uniform(0, 5000, size=(4, 1000))
    m = np.asarray(deepness["standardization_mean"])[:, None]
    s = np.asarray(deepness["standardization_std"])[:, None]
    want = (x - np.asarray(card.mean)[:, None]) / np.asarray(card.std)[:, None]
    np.testing.assert_allclose((x / 255 - m) / s, want, rtol=1e-9, atol=1e-9)
    # the graph takes any batch and tile size
    shape = onnx.load(str(exported)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in shape] == ["batch", 4, "height", "width"]


def test_a_sigmoid_model_round_trips_and_an_unmappable_normalisation_is_left_out(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    card = ModelCard(
        name="ponds",
        architecture="unet",
        encoder="resnet18",
        bands=("green", "nir"),
        mean=(900.0, 2000.0),
        std=(300.0, 800.0),
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
        tile_size=64,
        overlap=16,
        params={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
        activation="sigmoid",
        normalisation=(
            Transform(op="scale", params={"factor": 0.001}),
            Transform(op="log1p"),
        ),
    )
    net = build_network(card).eval()
    path = save_model(tmp_path / "ponds.safetensors", card, net.state_dict())
    out = export_onnx(path, tmp_path / "ponds.onnx")
    image = np.random.default_rng(1).uniform(0, 4000, size=(2, 100, 90)).astype(np.float32)
    valid = np.ones((100, 90), dtype=bool)
    expected = TorchSegmenter(card, net, options=FP32).predict(image, valid)
    got = onnx_segmenter(out).predict(image, valid)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)
    meta = read_onnx_metadata(out)
    assert json.loads(meta["class_names"]) == {"0": "background", "1": "water"}
    assert json.loads(meta["seg_thresh"]) == 0.5
    # Deepness cannot take ln(1 + x / 1000): it would feed x / 255, so nothing is claimed
    assert "standardization_mean" not in meta and "standardization_std" not in meta
    assert "resolution" not in meta


def test_the_card_is_read_without_parsing_the_weights(tmp_path: Path) -> None:
    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    def entry(key: str, value: str) -> bytes:
        return field(14, field(1, key.encode()) + field(2, value.encode()))

    garbage = np.random.default_rng(0).bytes(200_000)  # no valid graph: never parsed
    body = b"\x08\x08" + field(7, garbage) + entry("geoseg.card", "{}") + entry("a", "é")
    path = tmp_path / "big.onnx"
    path.write_bytes(body)
    assert read_onnx_metadata(path) == {"geoseg.card": "{}", "a": "é"}
    with pytest.raises(Exception):  # noqa: B017, PT011 - the onnx package does parse it
        onnx.load(str(path))
    path.write_bytes(body[:1000])
    with pytest.raises(ModelCardError, match="not an ONNX model: field 7 runs past the end"):
        read_onnx_metadata(path)
    path.write_bytes(b"\x08\x08" + entry("a", "b"))
    with pytest.raises(ModelCardError, match="not an ONNX model: it has no graph"):
        read_onnx_metadata(path)
    with pytest.raises(ModelCardError, match="does not exist"):
        read_onnx_metadata(tmp_path / "missing.onnx")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.fixture(scope="module")
def zoo_net() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(1)
    return smp.Unet(
        encoder_name="resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(16, 8, 4),
        in_channels=3,
        classes=2,
    ).eval()


def test_a_deepness_zoo_model_imports_and_predicts_as_in_deepness(
    zoo_net: torch.nn.Module, tmp_path: Path
) -> None:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    src = _with_metadata(
        _foreign(tmp_path / "zoo.onnx", zoo_net, bands=3, fixed=64, softmax=True),
        model_type="Segmentor",
        class_names={0: "_background", 1: "road surface"},
        resolution=50,
        tile_size=64,
        tiles_overlap=25,
        standardization_mean=mean,
        standardization_std=std,
    )
    before = src.read_bytes()
    card = import_onnx(src, tmp_path / "roads.onnx", bands=("red", "green", "blue"), name="zoo")
    assert src.read_bytes() == before
    assert card.class_names == ("_background", "road_surface")
    assert (card.tile_size, card.overlap, card.resolution_m) == (64, 16, 0.5)
    assert card.activation == "softmax" and card.architecture == "onnx"
    np.testing.assert_allclose(card.mean, 255 * np.asarray(mean))
    np.testing.assert_allclose(card.std, 255 * np.asarray(std))
    meta = read_onnx_metadata(tmp_path / "roads.onnx")
    assert card_from_json(meta[CARD_KEY]) == card
    assert json.loads(meta["resolution"]) == 50 and json.loads(meta["tiles_overlap"]) == 25
    # The imported model in geoseg (fixed batch of 1, batches of 4 asked) is the network
    # on (x / 255 - m) / s, tiled and blended as any geoseg model.
    image = np.random.default_rng(2).integers(0, 256, size=(3, 150, 150)).astype(np.uint8)
    valid = np.ones((150, 150), dtype=bool)
    options = InferenceOptions(device="cpu", precision="fp32", batch_size=4)
    got = onnx_segmenter(tmp_path / "roads.onnx", options).predict(image, valid)
    expected = TorchSegmenter(card, zoo_net, options=options).predict(image, valid)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_an_import_names_what_does_not_fit(zoo_net: torch.nn.Module, tmp_path: Path) -> None:
    logits = _foreign(tmp_path / "logits.onnx", zoo_net, bands=3, fixed=None, softmax=False)
    out = tmp_path / "out.onnx"
    rgb = ("red", "green", "blue")
    norm = {"mean": (100.0, 100.0, 100.0), "std": (50.0, 50.0, 50.0)}
    with pytest.raises(ConfigError, match="--mean and --std required"):
        import_onnx(logits, out, bands=rgb, name="x", classes=("bg", "water"))
    with pytest.raises(ConfigError, match="takes 3 input channels but --bands lists 4"):
        import_onnx(logits, out, bands=(*rgb, "nir"), name="x", classes=("bg", "w"), **norm)
    small = {"bands": rgb, "name": "x", "tile": 64, **norm}  # each check runs the model once
    with pytest.raises(ConfigError, match="not probabilities; import it with --outputs logits"):
        import_onnx(logits, out, classes=("bg", "water"), **small)
    with pytest.raises(ConfigError, match=r"2 output channels, so 2 classes .* 3 are given"):
        import_onnx(logits, out, classes=("bg", "a", "b"), outputs="logits", **small)
    with pytest.raises(ConfigError, match="--classes required"):
        import_onnx(logits, out, outputs="logits", **small)
    assert not out.exists()
    card = import_onnx(
        logits, out, bands=rgb, name="x", classes=("bg", "water"), outputs="logits", **norm
    )
    assert (card.tile_size, card.overlap, card.mean) == (512, 64, norm["mean"])
    image = np.random.default_rng(3).uniform(0, 255, size=(3, 70, 80)).astype(np.float32)
    valid = np.ones((70, 80), dtype=bool)
    np.testing.assert_allclose(
        onnx_segmenter(out).predict(image, valid),
        TorchSegmenter(card, zoo_net, options=FP32).predict(image, valid),
        atol=1e-4,
        rtol=0,
    )


def test_read_card_reads_an_onnx_card(tiny_model: Path, exported: Path) -> None:
    assert read_card(exported) == read_card(tiny_model)


def test_load_segmenter_runs_an_onnx_model(tiny_model: Path, exported: Path) -> None:
    image, valid = _block()
    got = load_segmenter(exported, options=FP32).predict(image, valid)
    np.testing.assert_allclose(got, onnx_segmenter(exported).predict(image, valid), atol=1e-6)
