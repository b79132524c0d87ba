"""Losses against hand-computed values on two-pixel inputs; ignored pixels change nothing."""

from __future__ import annotations

import math

import pytest
import torch

from geoseg.errors import ConfigError
from geoseg.training.losses import build_loss, parse_loss_spec

LN2 = math.log(2.0)


@pytest.fixture
def two_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """A: logits (0, 0), class 0 -> p = (1/2, 1/2). B: (ln 3, 0), class 1 -> (3/4, 1/4)."""
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (N=1, C=2, H=1, W=2)
    target = torch.tensor([[[0, 1]]])
    return logits, target


def _value(spec: str, logits: torch.Tensor, target: torch.Tensor, **kw: object) -> float:
    return float(build_loss(spec, n_classes=logits.shape[1], **kw)(logits, target))  # type: ignore[arg-type]


def test_cross_entropy_is_the_mean_negative_log_likelihood(two_pixels):
    # (-ln 1/2 - ln 1/4) / 2 = 1.5 ln 2
    assert _value("ce", *two_pixels) == pytest.approx(1.5 * LN2, rel=1e-6)


def test_class_weights_give_a_weighted_mean(two_pixels):
    # (1 * ln 2 + 3 * ln 4) / (1 + 3) = 7/4 ln 2
    assert _value("ce", *two_pixels, class_weights=[1.0, 3.0]) == pytest.approx(1.75 * LN2)
    # focal with gamma 2 and weights: (1 * 1/4 ln 2 + 3 * 9/16 * 2 ln 2) / 4
    expected = (0.25 * LN2 + 3 * 9 / 8 * LN2) / 4
    assert _value("focal", *two_pixels, class_weights=[1.0, 3.0]) == pytest.approx(expected)


def test_focal_down_weights_easy_pixels(two_pixels):
    # A: (1 - 1/2)^2 ln 2 = ln2 / 4 ; B: (1 - 1/4)^2 ln 4 = 9/8 ln 2 ; mean = 0.6875 ln 2
    assert _value("focal", *two_pixels) == pytest.approx(0.6875 * LN2, rel=1e-6)
    assert _value("focal(gamma=0)", *two_pixels) == pytest.approx(_value("ce", *two_pixels))


def test_dice_matches_hand_computation_and_smp(two_pixels):
    # class 0: 2 * 0.5 / (1.25 + 1) = 4/9 ; class 1: 2 * 0.25 / (0.75 + 1) = 2/7
    expected = 1 - (4 / 9 + 2 / 7) / 2
    assert _value("dice", *two_pixels) == pytest.approx(expected, rel=1e-6)
    from segmentation_models_pytorch.losses import DiceLoss

    smp_value = float(DiceLoss("multiclass", from_logits=True)(*two_pixels))
    assert _value("dice", *two_pixels) == pytest.approx(smp_value, rel=1e-5)


def test_dice_leaves_out_classes_absent_from_the_targets():
    logits = torch.zeros(1, 3, 1, 2)  # p = 1/3 each
    target = torch.tensor([[[0, 0]]])
    # only class 0 present: dice = 2 * (2/3) / (2/3 + 2) = 1/2
    assert _value("dice", logits, target) == pytest.approx(0.5, rel=1e-6)


def test_weighted_sum_of_terms(two_pixels):
    combined = _value("0.7*ce+0.3*dice", *two_pixels)
    expected = 0.7 * _value("ce", *two_pixels) + 0.3 * _value("dice", *two_pixels)
    assert combined == pytest.approx(expected, rel=1e-6)
    assert _value("focal+dice", *two_pixels) == pytest.approx(
        _value("focal", *two_pixels) + _value("dice", *two_pixels), rel=1e-6
    )


@pytest.mark.parametrize("spec", ["ce", "focal", "dice", "ce+dice", "focal(gamma=3)+0.5*dice"])
def test_ignored_pixels_change_neither_loss_nor_gradient(spec):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    target = torch.randint(0, 3, (2, 4, 4), generator=gen)
    loss = build_loss(spec, n_classes=3, class_weights=[0.5, 1.0, 2.0])
    base = float(loss(logits, target))

    # Append a column of ignored pixels with wild logits.
    wild = torch.cat([logits, 50 * torch.randn(2, 3, 4, 1, generator=gen)], dim=3)
    wild.requires_grad_(True)
    padded = torch.cat([target, torch.full((2, 4, 1), 255)], dim=2)
    value = loss(wild, padded)
    value.backward()
    assert float(value.detach()) == pytest.approx(base, rel=1e-5, abs=1e-6)
    assert wild.grad is not None
    assert torch.all(wild.grad[..., 4] == 0)
    assert torch.any(wild.grad[..., :4] != 0)


@pytest.mark.parametrize("spec", ["ce", "focal", "dice", "ce+dice"])
def test_an_all_ignored_batch_gives_zero_and_a_usable_gradient(spec):
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    value = build_loss(spec, n_classes=2)(logits, torch.full((1, 3, 3), 255))
    value.backward()
    assert float(value.detach()) == 0.0
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_spec_parsing():
    terms = parse_loss_spec("0.7*ce + 0.3*focal(gamma=1.5)")
    assert [(t.name, t.weight, dict(t.params)) for t in terms] == [
        ("ce", 0.7, {}),
        ("focal", 0.3, {"gamma": 1.5}),
    ]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("cee", "valid: ce, focal, dice"),
        ("ce+lovasz", "unknown loss 'lovasz'"),
        ("focal(alpha=1)", "valid: gamma"),
        ("dice(smooth)", "name=value"),
        ("ce+", "cannot parse"),
        ("", "empty loss spec"),
        ("0*ce", "weight > 0"),
        ("ce+0.5*ce", "repeats"),
    ],
)
def test_bad_specs_name_the_problem(spec, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("*", r"\*")):
        build_loss(spec, n_classes=2)


def test_class_weights_must_match_classes():
    with pytest.raises(ConfigError, match="3 class weights given for 2 classes"):
        build_loss("ce", n_classes=2, class_weights=[1, 2, 3])
    with pytest.raises(ConfigError, match=">= 0"):
        build_loss("ce", n_classes=2, class_weights=[1, -1])
