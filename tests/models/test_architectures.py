"""The hand-written architectures: shapes, TF's resize, the published weights on real imagery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.models.architectures.dynamicworld import DynamicWorldNet, antialiased_triangle_resize
from geoseg.models.architectures.watnet import WatNet

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CHIP = SHARED / "data" / "sen1floods11_s2" / "Spain_7370579_S2Hand.tif"
WATNET_PTH = SHARED / "models" / "watnet_l578" / "watnet_l578.pth"
DW_WEIGHTS = REPO / "geoseg" / "models" / "weights" / "dynamicworld-s2l1c.safetensors"
DW_REFERENCE = REPO / "tests" / "data" / "dynamicworld_tf_reference.npz"
WATNET_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12")


def _read_chip(bands: tuple[str, ...], window: tuple[int, int, int, int]) -> np.ndarray:
    """Digital numbers of ``bands`` in ``(row, col, height, width)`` of the real chip."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    if not CHIP.is_file():
        pytest.skip(f"real Sentinel-2 chip not found at {CHIP}")
    row, col, height, width = window
    with rasterio.open(CHIP) as src:
        indexes = [src.descriptions.index(b) + 1 for b in bands]
        return src.read(indexes, window=Window(col, row, width, height)).astype(np.float64)


@pytest.mark.parametrize(("height", "width"), [(2, 2), (5, 7), (33, 18)])
def test_dynamicworld_returns_one_logit_per_class_at_input_size(height: int, width: int) -> None:
    net = DynamicWorldNet(in_channels=9, classes=9).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 9, height, width))
    assert out.shape == (2, 9, height, width)
    assert torch.isfinite(out).all()


def test_dynamicworld_rejects_a_single_row() -> None:
    with pytest.raises(ValueError, match="at least 2x2"):
        DynamicWorldNet(in_channels=9, classes=9)(torch.rand(1, 9, 1, 8))


@pytest.mark.parametrize(("height", "width"), [(16, 48), (64, 32)])
def test_watnet_returns_one_logit_at_input_size(height: int, width: int) -> None:
    net = WatNet(in_channels=6, classes=1).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 6, height, width))
    assert out.shape == (1, 1, height, width)


def test_watnet_names_the_size_it_needs() -> None:
    with pytest.raises(ValueError, match=r"divisible by 16, got 50x64; pad to 64x64"):
        WatNet(in_channels=6, classes=1)(torch.rand(1, 6, 50, 64))


def test_resize_halving_is_tfs_antialiased_triangle_filter() -> None:
    # One row of 8 pixels to 4: interior outputs weigh [1, 3, 3, 1] / 8, the two border
    # outputs [3, 3, 1] / 7 over the pixels inside the image.
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]).reshape(1, 1, 1, 8)
    x = x.expand(1, 1, 2, 8)
    out = antialiased_triangle_resize(x, (1, 4))[0, 0, 0]
    expected = torch.tensor(
        [
            (3 * 1 + 3 * 2 + 1 * 4) / 7,
            (1 * 2 + 3 * 4 + 3 * 8 + 1 * 16) / 8,
            (1 * 8 + 3 * 16 + 3 * 32 + 1 * 64) / 8,
            (1 * 32 + 3 * 64 + 3 * 128) / 7,
        ]
    )
    torch.testing.assert_close(out, expected)


def test_resize_keeps_a_constant_image_constant_at_odd_sizes() -> None:
    out = antialiased_triangle_resize(torch.full((1, 3, 45, 51), 0.7), (22, 25))
    torch.testing.assert_close(out, torch.full((1, 3, 22, 25), 0.7))


def _watnet_published() -> WatNet:
    if not WATNET_PTH.is_file():
        pytest.skip(f"WatNet-L578 weights not found at {WATNET_PTH}")
    net = WatNet(in_channels=6, classes=1).eval()
    net.load_state_dict(torch.load(WATNET_PTH, map_location="cpu", weights_only=True), strict=True)
    return net


def test_watnet_published_weights_load_strictly() -> None:
    net = _watnet_published()
    with torch.no_grad():
        assert torch.isfinite(net(torch.full((1, 6, 32, 32), 0.1))).all()


def test_watnet_published_weights_find_the_flood_dynamic_world_finds() -> None:
    net = _watnet_published()
    reference = np.load(DW_REFERENCE)
    window = tuple(int(v) for v in reference["even_window"])
    x = torch.from_numpy((_read_chip(WATNET_BANDS, window) / 10000).astype(np.float32))
    with torch.no_grad():
        water = (torch.sigmoid(net(x[None]))[0, 0] > 0.5).numpy()
    dw_water = reference["even_probabilities"].argmax(axis=0) == 0
    assert water.mean() > 0.5  # a flooded window (0.79 measured)
    assert (water == dw_water).mean() > 0.75  # 0.85 measured


def _dynamicworld_normalise(dn: np.ndarray, percentiles: np.ndarray) -> np.ndarray:
    """The published notebook's normalisation of (9, H, W) digital numbers."""
    x = np.log(dn * 0.005 + 1)
    x = (x - percentiles[:, 0, None, None]) / percentiles[:, 1, None, None]
    e = np.exp(x * 5 - 1)
    return (e / (e + 1)).astype(np.float32)


@pytest.mark.parametrize("window", ["even", "odd"])
def test_dynamicworld_weights_reproduce_tensorflow(window: str) -> None:
    if not DW_WEIGHTS.is_file():
        pytest.skip(f"Dynamic World weights not found at {DW_WEIGHTS}")
    from safetensors.torch import load_file

    reference = np.load(DW_REFERENCE)
    bands = tuple(str(b) for b in reference["bands"])
    offsets = tuple(int(v) for v in reference[f"{window}_window"])
    x = _dynamicworld_normalise(_read_chip(bands, offsets), reference["norm_percentiles"])
    net = DynamicWorldNet(in_channels=9, classes=9).eval()
    net.load_state_dict(load_file(str(DW_WEIGHTS)), strict=True)
    with torch.no_grad():
        probabilities = torch.softmax(net(torch.from_numpy(x)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probabilities, reference[f"{window}_probabilities"], atol=1e-3)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dynamicworld_inference_mish_is_mish(layout: torch.memory_format) -> None:
    from geoseg.models.architectures.dynamicworld import _mish

    x = (torch.randn(2, 64, 70, 90) * 6).contiguous(memory_format=layout)
    x[0, 0, 0, :4] = torch.tensor([-40.0, 0.0, 25.0, 90.0])  # saturated ends, no NaN
    expected = torch.nn.functional.mish(x)
    with torch.inference_mode():
        got = _mish(x.clone(memory_format=layout))
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    # With gradients (fine-tuning) it is torch's own Mish.
    y = x.clone().requires_grad_(True)
    _mish(y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


@pytest.mark.parametrize(("height", "width"), [(4, 6), (8, 8), (64, 34), (512, 512)])
def test_halving_an_even_size_is_the_general_resize(height: int, width: int) -> None:
    from geoseg.models.architectures.dynamicworld import _halve, _resample_axis

    x = torch.rand(2, 5, height, width).contiguous(memory_format=torch.channels_last)
    general = _resample_axis(_resample_axis(x, 2, height // 2), 3, width // 2)
    torch.testing.assert_close(_halve(x), general, rtol=0, atol=5e-7)
