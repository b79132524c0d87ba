"""The predictor: bf16 autocast keeps the answers of fp32; batching and nodata."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from geoseg.config import InferenceOptions
from geoseg.errors import ConfigError, DeviceMemoryError
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.normalisation import Transform
from geoseg.models.predictor import (
    TorchSegmenter,
    cpu_supports_bf16,
    load_segmenter,
)
from tests.helpers import synthetic_image, synthetic_truth

if TYPE_CHECKING:
    import torch

FP32 = InferenceOptions(precision="fp32", device="cpu")


def _scene(seed: int = 21) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = synthetic_truth(300, 340, seed=seed)
    return synthetic_image(truth, seed=seed), np.ones(truth.shape, dtype=bool), truth


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_agrees_with_fp32(tiny_model: Path) -> None:
    image, valid, truth = _scene()
    fp32 = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32"))
    auto = load_segmenter(tiny_model, options=InferenceOptions(precision="auto"))
    assert isinstance(auto, TorchSegmenter) and auto.precision == "bf16"
    a, b = fp32.predict(image, valid), auto.predict(image, valid)
    agreement = float((a.argmax(0) == b.argmax(0)).mean())
    assert agreement >= 0.995, f"bf16 vs fp32 class agreement {agreement:.4f}"
    assert np.abs(a - b).max() < 0.2
    # and bf16 is as accurate against the truth as fp32 (IoU of every class within 0.01)
    for c in (1, 2):
        ious = [
            ((p.argmax(0) == c) & (truth == c)).sum() / ((p.argmax(0) == c) | (truth == c)).sum()
            for p in (a, b)
        ]
        assert abs(ious[0] - ious[1]) < 0.01


def test_batch_size_does_not_change_the_result(tiny_model: Path) -> None:
    image, valid, _ = _scene(seed=5)
    one = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32", batch_size=1))
    many = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32", batch_size=7))
    np.testing.assert_allclose(one.predict(image, valid), many.predict(image, valid), atol=1e-5)


def test_model_seconds_split_waiting_from_computing(tiny_model: Path) -> None:
    # Two threads share one model, as a worker's Dask threads do; with one slot its forward
    # passes run one at a time, so the computing seconds of both cannot add up to more than
    # the wall time, and each thread waits for the other's passes.
    image, valid, _ = _scene(seed=3)
    seg = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32", batch_size=1))
    assert isinstance(seg, TorchSegmenter) and seg.slots == 1
    seconds: dict[int, tuple[float, float, float]] = {}

    def work(i: int) -> None:
        t0 = time.perf_counter()
        seg.predict(image, valid)
        elapsed = time.perf_counter() - t0
        seconds[i] = (*seg.take_model_seconds(), elapsed)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert all(
        0 < computed <= elapsed and 0 < blocked <= elapsed
        for blocked, computed, elapsed in seconds.values()
    )
    assert sum(computed for _, computed, _ in seconds.values()) <= wall
    # waiting includes the other thread's passes: more than this thread's own computing
    assert sum(blocked for blocked, _, _ in seconds.values()) > sum(
        computed for _, computed, _ in seconds.values()
    )
    assert seg.take_model_seconds() == (0.0, 0.0)  # this thread ran no forward pass


def test_one_block_keeps_every_slot_busy_and_blends_in_order(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One Dask thread alone (the last block of a run, or the other thread vectorizing) must
    # still feed both slots; the blend must not depend on which pass finished first.
    import torch

    image, valid, _ = _scene(seed=11)
    before = torch.get_num_threads()
    try:
        one = load_segmenter(
            tiny_model, options=InferenceOptions(precision="fp32", batch_size=1, threads=1)
        )
        expected = one.predict(image, valid)
        two = load_segmenter(
            tiny_model,
            options=InferenceOptions(
                precision="fp32", batch_size=1, threads=2, concurrent_batches=2
            ),
        )
        assert isinstance(two, TorchSegmenter) and two.slots == 2
        active, most = [0], [0]
        lock = threading.Lock()
        forward = two._forward
        delays = iter([0.08, 0.0] * 100)  # odd passes slow: later passes finish first

        def tracked(batch: np.ndarray) -> tuple[float, float, np.ndarray]:
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
                delay = next(delays)
            try:
                time.sleep(delay)
                return forward(batch)
            finally:
                with lock:
                    active[0] -= 1

        monkeypatch.setattr(two, "_forward", tracked)
        out = two.predict(image, valid)
        assert most[0] == 2  # this one thread's passes ran side by side
        np.testing.assert_array_equal(out, expected)
    finally:
        torch.set_num_threads(before)


def test_concurrent_cpu_passes_split_the_threads_and_keep_the_answers(tiny_model: Path) -> None:
    import torch

    image, valid, _ = _scene(seed=8)
    before = torch.get_num_threads()
    try:
        one = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32", threads=2))
        expected = one.predict(image, valid)
        two = load_segmenter(
            tiny_model, options=InferenceOptions(precision="fp32", threads=2, concurrent_batches=2)
        )
        assert isinstance(two, TorchSegmenter) and two.slots == 2
        assert torch.get_num_threads() == 1  # 2 threads shared by 2 concurrent passes
        out: dict[int, np.ndarray] = {}
        threads = [
            threading.Thread(target=lambda i=i: out.__setitem__(i, two.predict(image, valid)))
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for probs in out.values():
            np.testing.assert_allclose(probs, expected, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_nodata_is_filled_with_the_mean_and_gets_no_probability(tiny_model: Path) -> None:
    image, valid, _ = _scene(seed=6)
    valid[:, :120] = False
    image[:, ~valid] = 65535  # garbage under the mask must not matter
    seg = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32"))
    probs = seg.predict(image, valid)
    assert (probs[:, ~valid] == 0).all()
    image2 = image.copy()
    image2[:, ~valid] = 0
    np.testing.assert_allclose(seg.predict(image2, valid), probs, atol=1e-6)


def test_bad_inference_options_are_clear() -> None:
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        InferenceOptions(precision="fp8")
    with pytest.raises(ConfigError, match="device 'tpu'"):
        InferenceOptions(device="tpu")
    with pytest.raises(ConfigError, match="concurrent batches 0"):
        InferenceOptions(concurrent_batches=0)


class _SmallDevice:
    """A network on a device with room for ``fits`` tiles per pass (torch's OOM beyond)."""

    def __init__(self, network: object, fits: int) -> None:
        self.network, self.fits, self.passes = network, fits, []

    def __call__(self, x: object) -> object:
        import torch

        assert isinstance(x, torch.Tensor)
        self.passes.append(len(x))
        if len(x) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(x)  # type: ignore[operator]


def test_a_batch_that_runs_out_of_memory_is_halved_and_later_ones_stay_small(
    tiny_model: Path,
) -> None:
    truth = synthetic_truth(600, 680, seed=5)
    image, valid = synthetic_image(truth, seed=5), np.ones(truth.shape, dtype=bool)
    options = InferenceOptions(precision="fp32", batch_size=7)
    seg = load_segmenter(tiny_model, options=options)
    one = load_segmenter(tiny_model, options=replace(options, batch_size=1))
    assert isinstance(one, TorchSegmenter) and isinstance(seg, TorchSegmenter)
    assert seg.slots == 1
    counter = _SmallDevice(one.network, fits=1)
    one.network = counter  # type: ignore[assignment]
    expected = one.predict(image, valid)
    tiles = len(counter.passes)
    device = _SmallDevice(seg.network, fits=2)
    seg.network = device  # type: ignore[assignment]
    np.testing.assert_allclose(seg.predict(image, valid), expected, atol=1e-5)
    assert seg.batch_size == 2
    # The two batches of 7 queued before the first ran out of memory are split (7 -> 4 + 3
    # -> 2 + 2 + 2 + 1); every batch built after that has 2 tiles (the last one maybe 1).
    split = [7, 4, 2, 2, 3, 2, 1]
    assert device.passes[:14] == split * 2
    rest = device.passes[14:]
    assert len(rest) > 3 and set(rest[:-1]) == {2} and rest[-1] in (1, 2)
    # every tile predicted once: the passes that fitted hold each tile exactly once
    assert sum(p for p in device.passes if p <= 2) == tiles


def test_a_single_tile_that_does_not_fit_is_one_clear_error(tiny_model: Path) -> None:
    image, valid, _ = _scene(seed=5)
    seg = load_segmenter(tiny_model, options=InferenceOptions(precision="fp32", batch_size=4))
    assert isinstance(seg, TorchSegmenter)
    seg.network = _SmallDevice(seg.network, fits=0)  # type: ignore[assignment]
    with pytest.raises(DeviceMemoryError, match=r"tile of this model does not fit.*--tile"):
        seg.predict(image, valid)


# --- output activation and merged classes --------------------------------------------------------


def _fixed_network(weights: list[list[float]]) -> torch.nn.Module:
    """A 1x1 convolution whose logits are known: ``logit_k = sum_b weights[k][b] * x_b``."""
    import torch

    w = torch.tensor(weights, dtype=torch.float32)
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
    return conv


def _card(**kw: object) -> ModelCard:
    base: dict[str, object] = {
        "name": "fixed",
        "architecture": "unet",
        "encoder": "resnet18",
        "bands": ("red", "nir"),
        "mean": (0.0, 0.0),
        "std": (1.0, 1.0),
        "tile_size": 32,
        "overlap": 8,
    }
    base.update(kw)
    return ModelCard(**base)  # type: ignore[arg-type]


def test_a_sigmoid_model_gives_background_one_minus_p_and_its_class_p() -> None:
    import torch

    card = _card(
        activation="sigmoid",
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
        normalisation=(Transform(op="clip", params={"min": 0.0, "max": 1.0}),),
    )
    seg = TorchSegmenter(card, _fixed_network([[4.0, -4.0]]), options=FP32)
    rng = np.random.default_rng(1)
    image = rng.uniform(-0.5, 1.5, size=(2, 40, 45)).astype(np.float32)
    probs = seg.predict(image, np.ones((40, 45), bool))
    x = np.clip(image, 0, 1)
    p = torch.sigmoid(torch.from_numpy(4 * x[0] - 4 * x[1])).numpy()
    np.testing.assert_allclose(probs[1], p, atol=1e-5)
    np.testing.assert_allclose(probs[0], 1 - p, atol=1e-5)


def test_merged_classes_sum_their_channels_probabilities() -> None:
    import torch

    weights = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]  # 4 logits
    card = _card(
        outputs=4,
        classes=(
            ClassInfo(name="background"),  # channel 1, the one no class takes
            ClassInfo(name="water", channels=(0, 3)),
            ClassInfo(name="crops", channels=(2,)),
        ),
    )
    seg = TorchSegmenter(card, _fixed_network(weights), options=FP32)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 36, 36)).astype(np.float32)
    probs = seg.predict_whole(image, np.ones((36, 36), bool))
    logits = np.einsum("kb,bhw->khw", np.asarray(weights), image)
    soft = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    np.testing.assert_allclose(probs[0], soft[1], atol=1e-5)
    np.testing.assert_allclose(probs[1], soft[0] + soft[3], atol=1e-5)
    np.testing.assert_allclose(probs[2], soft[2], atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_a_transform_chain_feeds_the_network_what_the_card_says() -> None:
    chain = (
        Transform(op="scale", params={"factor": 0.005}),
        Transform(op="log1p"),
        Transform(op="zscore", params={"mean": (1.7, 2.3), "std": (2.0, 2.6)}),
        Transform(op="sigmoid", params={"gain": 5.0, "shift": -1.0}),
    )
    card = _card(
        normalisation=chain,
        mean=(1100.0, 2400.0),
        std=(350.0, 900.0),
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
    )
    seg = TorchSegmenter(card, _fixed_network([[0.0, 0.0], [1.0, 0.0]]), options=FP32)
    dn = np.array([[[0, 800, 4000]], [[100, 2400, 9000]]], dtype=np.int16)
    x = seg.normalise(dn, np.array([[True, True, False]]))
    expected = 1 / (
        1 + np.exp(-(5 * (np.log(dn * 0.005 + 1) - [[[1.7]], [[2.3]]]) / [[[2.0]], [[2.6]]] - 1))
    )
    np.testing.assert_allclose(x[:, :, :2], expected[:, :, :2], atol=1e-6)
    # Nodata gets the chain's value at the card's typical input, an ordinary pixel.
    typical = np.array([[[1100.0]], [[2400.0]]])
    fill = 1 / (
        1
        + np.exp(-(5 * (np.log(typical * 0.005 + 1) - [[[1.7]], [[2.3]]]) / [[[2.0]], [[2.6]]] - 1))
    )
    np.testing.assert_allclose(x[:, 0, 2], fill[:, 0, 0], atol=1e-6)
