"""Batch norm folding and weight casting leave every architecture's answers unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from geoseg.models.bn_folding import cast_weights, fold_batchnorm
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.registry import ARCHITECTURES, build_network

_PARAMS = {"upernet": {"decoder_channels": 32}, "segformer": {"decoder_segmentation_channels": 32}}


def _network(architecture: str, *, seed: int = 0) -> torch.nn.Module:
    card = ModelCard(
        name=f"test-{architecture}",
        architecture=architecture,
        encoder="mit_b0" if architecture == "segformer" else "resnet18",
        bands=("B02", "B03", "B04"),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
        tile_size=64,
        overlap=16,
        params=_PARAMS.get(architecture, {}),
    )
    torch.manual_seed(seed)
    net = build_network(card)
    # Trained-looking statistics: fresh batch norms (mean 0, var 1, weight 1) fold trivially.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_folding_keeps_the_output_at_every_input_size(architecture: str) -> None:
    net = _network(architecture)
    folded = copy.deepcopy(net)
    fold_batchnorm(folded)
    for h, w in ((128, 128), (160, 192)):  # a second shape: nothing traced may bake in a size
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            torch.testing.assert_close(folded(x), net(x), atol=2e-4, rtol=1e-4)


def test_the_cnns_run_no_batch_norm() -> None:
    for architecture in ("unet", "fpn", "deeplabv3plus", "pspnet", "unetplusplus", "manet"):
        net = _network(architecture)
        assert fold_batchnorm(net) > 0
        ran: list[str] = []
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.register_forward_hook(lambda *_, name=name, ran=ran: ran.append(name))
        with torch.inference_mode():
            net(torch.rand(1, 3, 128, 128))
        assert not ran, f"{architecture}: {ran} still run"


class _ConvBN(torch.nn.Module):
    """A conv and a batch norm with non-trivial statistics; subclasses say how they run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(2)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.3)
        self.eval()


def _assert_nothing_folded(net: torch.nn.Module) -> None:
    x = torch.rand(1, 2, 8, 8)
    expected = net(x)
    assert fold_batchnorm(net) == 0
    assert isinstance(net.bn, torch.nn.BatchNorm2d)
    torch.testing.assert_close(net(x), expected)


def test_a_module_called_twice_is_not_folded() -> None:
    class Shared(_ConvBN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x)

    _assert_nothing_folded(Shared())


def test_an_untraceable_module_keeps_its_batch_norm() -> None:
    class Branchy(_ConvBN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return x

    _assert_nothing_folded(Branchy())


def test_folding_refuses_a_network_in_training_mode() -> None:
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(_network("unet").train())


def test_cast_weights_matches_autocast() -> None:
    net = _network("unet")
    fold_batchnorm(net)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x)
        cast_weights(net, torch.bfloat16)
        got = net(x)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {p.dtype for m in convs for p in m.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
