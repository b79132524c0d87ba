"""Test-time augmentation: flips and rotations predicted, turned back and averaged."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from geoseg.config import InferenceOptions
from geoseg.errors import ConfigError
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.predictor import TorchSegmenter

CARD = ModelCard(
    name="t", architecture="unet", encoder="resnet18", bands=("red", "green", "blue"),
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    classes=(ClassInfo(name="background"), ClassInfo(name="water")), tile_size=64, overlap=16,
)  # fmt: skip


class PixelWise(nn.Module):
    """A 1x1 convolution: what it says of a pixel does not depend on where the pixel is, so
    every symmetry, turned back correctly, gives the same answer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Sided(nn.Module):
    """Looks only at its right-hand neighbour: not symmetric, so augmentation changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, (1, 3), padding=(0, 1))
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0, 0, 2] = 4.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _predict(net: nn.Module, tta: str, card: ModelCard = CARD) -> np.ndarray:
    torch.manual_seed(0)
    seg = TorchSegmenter(card, net.eval(), options=InferenceOptions(precision="fp32", tta=tta))
    image = np.random.default_rng(1).normal(size=(3, 100, 90)).astype(np.float32)
    return seg.predict(image, np.ones((100, 90), dtype=bool))


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_each_symmetry_is_turned_back_before_averaging(mode: str) -> None:
    torch.manual_seed(0)
    net = PixelWise()
    np.testing.assert_allclose(_predict(net, mode), _predict(net, "none"), atol=1e-5)


def test_augmentation_averages_what_the_symmetries_see() -> None:
    torch.manual_seed(0)
    net = Sided()
    plain, flips, d4 = (_predict(net, m) for m in ("none", "flips", "d4"))
    assert np.abs(flips - plain).max() > 0.05 and np.abs(d4 - flips).max() > 0.01
    np.testing.assert_allclose(flips.sum(axis=0), 1.0, rtol=1e-5)


def test_auto_follows_the_card_and_a_bad_mode_is_refused() -> None:
    torch.manual_seed(0)
    net = Sided()
    recommends = replace(CARD, training={"tta": "flips"})
    np.testing.assert_allclose(_predict(net, "auto", recommends), _predict(net, "flips"))
    np.testing.assert_allclose(_predict(net, "auto"), _predict(net, "none"))
    with pytest.raises(ConfigError, match="tta 'd8' is not one of auto, none, flips, d4"):
        InferenceOptions(tta="d8")
