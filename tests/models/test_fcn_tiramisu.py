"""FCN and Tiramisu (FC-DenseNet): every variant builds, keeps any input size, trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geoseg.models.architectures.fcn import FCN, bilinear_kernel
from geoseg.models.architectures.tiramisu import Tiramisu

FCN_VARIANTS = ["fcn32s", "fcn16s", "fcn8s"]
TIRAMISU_VARIANTS = ["fc-densenet56", "fc-densenet67", "fc-densenet103"]
SIZES = [(97, 131), (64, 64)]


def _fcn(variant: str, upsampling: str = "transposed") -> FCN:
    # A light smp encoder (fast to build); FCN fuses its stride-8/16/32 features as any.
    return FCN(
        encoder_name="mobilenet_v2",
        encoder_weights=None,
        in_channels=4,
        classes=3,
        variant=variant,
        upsampling=upsampling,
    )


@pytest.mark.parametrize("upsampling", ["transposed", "bilinear"])
@pytest.mark.parametrize("variant", FCN_VARIANTS)
def test_fcn_returns_logits_at_the_input_size(variant: str, upsampling: str) -> None:
    net = _fcn(variant, upsampling).eval()
    for size in SIZES:
        with torch.no_grad():
            out = net(torch.rand(2, 4, *size))
        assert out.shape == (2, 3, *size)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", TIRAMISU_VARIANTS)
def test_tiramisu_returns_logits_at_the_input_size(variant: str) -> None:
    net = Tiramisu(in_channels=4, classes=3, variant=variant).eval()
    for size in SIZES:
        with torch.no_grad():
            out = net(torch.rand(1, 4, *size))
        assert out.shape == (1, 3, *size)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("variant", "paper"),
    [("fc-densenet56", 1.5e6), ("fc-densenet67", 3.5e6), ("fc-densenet103", 9.4e6)],
)
def test_tiramisu_has_the_papers_parameter_count(variant: str, paper: float) -> None:
    # Jégou et al. 2017, table 2 (CamVid: 3 bands, 11 classes). Measured: 1.377 M, 3.463 M,
    # 9.322 M; the 56's 8 % gap is the paper's rounding or counting, the layout is the 67's.
    net = Tiramisu(in_channels=3, classes=11, variant=variant)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - paper) / paper < 0.1, f"{variant}: {count:,} parameters"


@pytest.mark.parametrize(
    "build",
    [
        # One of each architecture, with the most parts: FCN-8s with learnt upsampling.
        pytest.param(lambda: _fcn("fcn8s"), id="fcn8s-transposed"),
        pytest.param(
            lambda: Tiramisu(in_channels=4, classes=3, variant="fc-densenet56"),
            id="fc-densenet56",
        ),
    ],
)
def test_two_optimizer_steps_reach_every_parameter(build: object) -> None:
    torch.manual_seed(0)
    net = build()  # type: ignore[operator]
    net.train()
    x = torch.rand(2, 4, 32, 64)
    y = torch.randint(0, 3, (2, 32, 64))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        optimiser.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, f"no gradient reaches {missing[:3]}"
        bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradients in {bad[:3]}"
        optimiser.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    unchanged = [n for n, p in net.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"the optimiser did not move {unchanged[:3]}"


def test_fcn_transposed_upsampling_starts_as_bilinear_interpolation() -> None:
    # The learnable upsampling is initialised to bilinear interpolation: away from the
    # borders, where the transposed convolution sees zeros, the two agree.
    x = torch.rand(1, 2, 12, 10)
    deconv = torch.nn.ConvTranspose2d(2, 2, 16, stride=8, padding=4, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(bilinear_kernel(2, 8))
        up = deconv(x)
    ref = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
    assert up.shape == ref.shape
    torch.testing.assert_close(up[..., 8:-8, 8:-8], ref[..., 8:-8, 8:-8])


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (FCN, {"encoder_name": "mobilenet_v2", "variant": "fcn4s"}, "fcn32s, fcn16s, fcn8s"),
        (FCN, {"encoder_name": "mobilenet_v2", "upsampling": "nearest"}, "transposed, bilinear"),
        (Tiramisu, {"variant": "fc-densenet57"}, "fc-densenet56, fc-densenet67"),
    ],
)
def test_an_unknown_variant_lists_the_valid_ones(
    factory: type, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        factory(in_channels=3, classes=2, **kwargs)
