"""A few-step real training run on synthetic squares: learning, the card, resuming, stopping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.config import InferenceOptions
from geoseg.errors import ConfigError
from geoseg.models.predictor import TorchSegmenter
from geoseg.models.registry import build_network, load_network, save_model
from geoseg.tiling.io import read_window
from geoseg.training.chips import ValidationSplit
from geoseg.training.config import TrainConfig, TrainingInput
from geoseg.training.labels import ClassMap, LabelSource
from geoseg.training.loop import train
from geoseg.training.metrics import compute_metrics, confusion_matrix
from geoseg.training.progress import TrainProgress
from tests.training.conftest import CLASSES, Scene, make_scene

# A small real network: MobileNetV2 encoder cut at depth 3, a narrow decoder (~9 MB file).
NET = {"encoder": "mobilenet_v2", "params": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Scene]:
    root = tmp_path_factory.mktemp("squares")
    return [
        make_scene(root, f"s{i}", seed=i, squares=4, nodata_rows=10 if i == 0 else 0)
        for i in range(3)
    ]


def _config(scenes: list[Scene], out: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "inputs": [TrainingInput(image=s.image, labels=s.labels) for s in scenes],
        "class_map": ClassMap(classes=CLASSES),
        "bands": ("red", "green", "blue"),
        "output": str(out),
        "name": "squares",
        "chip_size": 64,
        "batch_size": 4,
        "epochs": 2,
        "steps_per_epoch": 10,
        "lr": 3e-3,
        "tile_size": 64,
        "overlap": 16,
        "seed": 0,
        **NET,
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(scenes: list[Scene], tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted two-epoch run (the last scene held out) and its batch losses."""
    out = tmp_path_factory.mktemp("run") / "squares.safetensors"
    losses: list[float] = []

    def progress(event: TrainProgress) -> None:
        if event.stage == "train" and event.loss is not None:
            losses.append(event.loss)

    return train(_config(scenes, out), progress=progress), losses


def test_training_learns_the_squares_and_writes_a_self_describing_model(scenes, reference):
    result, losses = reference
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

    card, net = load_network(result.model_path)
    assert card.bands == ("red", "green", "blue")
    assert [(c.name, c.color) for c in card.classes] == [
        ("background", "#000000"),
        ("square", "#ff0000"),
    ]
    assert (card.tile_size, card.overlap, card.resolution_m) == (64, 16, 10.0)
    # Normalisation from the two training images' valid pixels only (nodata rows skipped).
    pixels = []
    for s in scenes[:2]:
        image, valid = read_window(str(s.image), _whole(s), bands=(1, 2, 3))
        pixels.append(image[:, valid].astype(np.float64))
    both = np.concatenate(pixels, axis=1)
    np.testing.assert_allclose(card.mean, both.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(card.std, both.std(axis=1), rtol=1e-9)

    t = card.training
    assert [d["use"] for d in t["data"]] == [
        "training",
        "training",
        "validation (whole tile held out)",
    ]
    assert t["data"][2]["image"] == str(scenes[2].image)
    assert (t["epochs"], t["steps"], t["loss"], t["best_epoch"]) == (
        2,
        20,
        "ce+dice",
        result.best_epoch,
    )
    assert t["wall_time_s"] > 0
    assert t["reproducibility"]["seed"] == 0
    assert TrainConfig.from_dict(t["reproducibility"]["config"]).fingerprint() == (
        _config(scenes, result.model_path).fingerprint()
    )
    square = t["validation"]["classes"]["square"]
    assert set(square) >= {"iou", "f1", "precision", "recall"}

    # The loaded model finds the held-out squares far better than chance, and the card's
    # validation score is what tiled inference of the saved model measures.
    seg = TorchSegmenter(card, net, options=InferenceOptions(device="cpu"))
    image, valid = read_window(str(scenes[2].image), _whole(scenes[2]), bands=(1, 2, 3))
    pred = seg.predict(image, valid).argmax(axis=0)
    iou = compute_metrics(confusion_matrix(scenes[2].truth, pred, n_classes=2), card.class_names)
    chance = scenes[2].truth.mean()  # IoU of calling everything a square
    assert iou["square"].iou > max(0.6, 3 * chance)
    assert iou["square"].iou == pytest.approx(square["iou"], abs=0.02)


def _whole(scene: Scene):
    from geoseg.tiling.grid import PixelWindow

    h, w = scene.truth.shape
    return PixelWindow(row_off=0, col_off=0, height=h, width=w)


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_after_its_last_epoch(scenes, reference, tmp_path):
    ref, ref_losses = reference
    ckpt = tmp_path / "ckpt"
    config = _config(scenes, tmp_path / "m.safetensors", checkpoint_dir=str(ckpt))

    losses: list[float] = []

    def stop_after_epoch_1(event: TrainProgress) -> None:
        if event.stage == "train" and event.loss is not None:
            losses.append(event.loss)
        if event.stage == "epoch" and event.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, progress=stop_after_epoch_1)
    assert not (tmp_path / "m.safetensors").exists()
    # The checkpoint holds tensors and plain containers only.
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "scheduler", "torch_rng"}

    def record(event: TrainProgress) -> None:
        if event.stage == "train" and event.loss is not None:
            losses.append(event.loss)

    resumed = train(config, progress=record)
    assert resumed.resumed_from == 1
    assert [r.epoch for r in resumed.history] == [1, 2]
    # Same chips, same weights, same optimizer state: the same run as without interruption.
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert resumed.history[-1].score == pytest.approx(ref.history[-1].score, abs=1e-3)

    # Asking for more epochs continues the same run on the longer schedule.
    longer = train(dataclasses.replace(config, epochs=3))
    assert longer.resumed_from == 2
    assert [r.epoch for r in longer.history] == [1, 2, 3]
    assert longer.card.training["epochs"] == 3
    assert load_network(longer.model_path)[0].training["steps"] == 30

    with pytest.raises(ConfigError, match=r"different options \(lr\)"):
        train(dataclasses.replace(config, lr=1e-2))


def test_early_stopping_keeps_the_best_epoch(scenes, tmp_path):
    # A learning rate too small to change anything: no epoch beats the first.
    config = _config(
        scenes,
        tmp_path / "m.safetensors",
        epochs=5,
        steps_per_epoch=2,
        lr=1e-12,
        schedule="constant",
        patience=1,
        validation=ValidationSplit(kind="region", image=0, gap=0, fraction=0.25),
        inputs=[
            TrainingInput(image=scenes[1].image, labels=LabelSource(path=str(scenes[1].labels)))
        ],
    )
    result = train(config)
    assert result.stopped_early
    assert [r.epoch for r in result.history] == [1, 2]
    assert result.best_epoch == 1
    data = result.card.training["data"][0]
    assert data["held_out"] == [96, 0, 32, 128] and data["gap"] == 0


def test_fp16_storage_halves_the_file_and_predicts_the_same(tmp_path):
    from geoseg.models.card import ModelCard
    from geoseg.training.checkpoints import cast_state

    card = ModelCard(
        name="t",
        architecture="unet",
        bands=("red", "green", "blue"),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        classes=CLASSES,
        tile_size=64,
        overlap=16,
        **NET,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    net = build_network(card).eval()
    full = save_model(tmp_path / "fp32.safetensors", card, net.state_dict())
    half = save_model(tmp_path / "fp16.safetensors", card, cast_state(net.state_dict(), "fp16"))
    assert half.stat().st_size < 0.55 * full.stat().st_size
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = torch.softmax(load_network(full)[1](x), 1)
        b = torch.softmax(load_network(half)[1](x), 1)
    assert torch.allclose(a, b, atol=1e-2)


def test_config_round_trips_and_validates(scenes, tmp_path):
    config = _config(
        scenes,
        tmp_path / "m.safetensors",
        class_map=ClassMap(classes=CLASSES, values={1: "square", 9: "ignore"}, unmapped="ignore"),
        validation=ValidationSplit(kind="tile", tiles=(0,)),
        class_weights=(0.5, 2.0),
    )
    again = TrainConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.fingerprint() == config.fingerprint()
    bad = [
        ({"chip_size": 100}, "chip size 100 is not a positive multiple of 32; try 96"),
        ({"bands": ("red", "infrared")}, "unknown band role 'infrared'"),
        ({"loss": "ce+lovasz"}, "unknown loss 'lovasz'"),
        ({"class_weights": (1.0,)}, "1 class weights for 2 classes"),
        ({"architecture": "unet3d"}, "unknown architecture 'unet3d'"),
        ({"batch_size": 1}, "batch norm"),
        ({"precision": "fp8"}, "precision 'fp8'"),
        ({"mean": (1.0, 2.0, 3.0)}, "both mean and std"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
            _config(scenes, tmp_path / "m.safetensors", **override)
    with pytest.raises(ConfigError, match="unknown training option 'epoch'"):
        TrainConfig.from_dict({**config.to_dict(), "epoch": 3})


def test_bf16_autocast_training_learns_and_writes_a_loadable_model(scenes, tmp_path):
    from geoseg.models.predictor import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 bf16 or AMX)")
    losses: list[float] = []

    def progress(event: TrainProgress) -> None:
        if event.stage == "train" and event.loss is not None:
            losses.append(event.loss)

    config = _config(
        scenes,
        tmp_path / "bf16.safetensors",
        device="cpu",
        precision="bf16",
        validation=ValidationSplit(kind="none"),
    )
    result = train(config, progress=progress)
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    card, net = load_network(result.model_path)
    assert card.training["precision"] == "bf16"
    assert card.training["validation"] is None and result.best_score is None
    # The fp32 weights it wrote find the squares of a scene it never saw.
    seg = TorchSegmenter(card, net, options=InferenceOptions(device="cpu", precision="fp32"))
    image, valid = read_window(str(scenes[2].image), _whole(scenes[2]), bands=(1, 2, 3))
    pred = seg.predict(image, valid).argmax(axis=0)
    iou = compute_metrics(confusion_matrix(scenes[2].truth, pred, n_classes=2), card.class_names)
    assert iou["square"].iou > 0.5


def test_cards_record_shared_data_relative_to_its_root(scenes, tmp_path, monkeypatch):
    root = scenes[0].image.parent
    monkeypatch.setenv("GEOSEG_SHARED_DATA", str(root.parent))
    config = _config(
        scenes[:2],
        tmp_path / "m.safetensors",
        epochs=1,
        steps_per_epoch=2,
        validation=ValidationSplit(kind="none"),
    )
    t = train(config).card.training
    assert [d["image"] for d in t["data"]] == [
        f"{root.name}/s0_image.tif",
        f"{root.name}/s1_image.tif",
    ]
    assert t["data"][1]["labels"] == {"path": f"{root.name}/s1_label.tif"}
    assert "GEOSEG_SHARED_DATA" in t["data_root"]
    recorded = t["reproducibility"]["config"]["inputs"]
    assert recorded == [{"image": d["image"], "labels": d["labels"]} for d in t["data"]]
    assert not any(str(root) in str(d) for d in t["data"])
    assert t["reproducibility"]["torch_threads"] == torch.get_num_threads()

    # Data elsewhere keeps its path as given, and the card claims no data root.
    monkeypatch.setenv("GEOSEG_SHARED_DATA", str(tmp_path / "elsewhere"))
    t = train(dataclasses.replace(config, output=str(tmp_path / "n.safetensors"))).card.training
    assert t["data"][0]["image"] == str(scenes[0].image) and "data_root" not in t


def test_data_relative():
    from geoseg.training.config import data_relative

    assert data_relative("/data/shared/mass_roads/a.tif", "/data/shared") == "mass_roads/a.tif"
    assert data_relative("/data/other/a.tif", "/data/shared") is None
    assert data_relative("/vsis3/bucket/a.tif", "/") is None
    assert data_relative("https://host/a.tif", "/") is None


def test_init_encoder_from_starts_the_encoder_alone_from_another_model(
    scenes, reference, tmp_path, monkeypatch
):
    """Transfer between tasks: another decoder and other classes, the source's encoder."""
    import geoseg.training.loop as loop

    result, _ = reference
    source_card, source_net = load_network(result.model_path)
    card = dataclasses.replace(
        source_card,
        params={"encoder_depth": 3, "decoder_channels": [16, 16, 8]},
        classes=(*source_card.classes, dataclasses.replace(source_card.classes[1], name="edge")),
    )
    net = build_network(card)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loaded = loop._initialise_encoder(net, card, result.model_path)
    theirs = source_net.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert loaded == len(encoder) > 0
    for key, value in net.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(value, theirs[key]), key
        else:
            assert torch.equal(value, before[key]), f"{key} is not the encoder's"
    assert any(not torch.equal(before[k], theirs[k]) for k in encoder), "a real change"

    other = dataclasses.replace(card, encoder="resnet18")
    with pytest.raises(ConfigError, match="has a mobilenet_v2 encoder over red, green, blue"):
        loop._initialise_encoder(build_network(other), other, result.model_path)
    other = dataclasses.replace(card, bands=("green", "red", "blue"))
    with pytest.raises(ConfigError, match="the config trains a mobilenet_v2 encoder over green"):
        loop._initialise_encoder(build_network(other), other, result.model_path)
    # A file of that encoder whose tensors do not fit: one missing, or one of another shape.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(result.model_path), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    first = encoder[0]
    for name, broken in (
        ("missing", {k: v for k, v in state.items() if k != first}),
        ("reshaped", {**state, first: torch.zeros(3, *state[first].shape)}),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_file(broken, str(path), metadata=metadata)
        with pytest.raises(ConfigError, match="do not fit the network"):
            loop._initialise_encoder(build_network(card), card, str(path))

    with pytest.raises(ConfigError, match="give one of them"):
        _config(scenes, tmp_path / "m.safetensors", init_from="a", init_encoder_from="b")
    # train() starts from it, and records it in the card's config.
    seen = []
    monkeypatch.setattr(loop, "_initialise_encoder", lambda n, c, p: seen.append(p) or 0)
    out = train(
        _config(
            scenes,
            tmp_path / "t.safetensors",
            init_encoder_from=result.model_path,
            epochs=1,
            steps_per_epoch=2,
        )
    )
    assert seen == [str(result.model_path)]
    recorded = load_network(out.model_path)[0].training["reproducibility"]["config"]
    assert recorded["init_encoder_from"] == str(result.model_path)
