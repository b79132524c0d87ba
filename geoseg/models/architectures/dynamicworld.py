"""The Dynamic World land-cover network (Brown et al. 2022), written in PyTorch.

A port of the "forward" TensorFlow SavedModel published in github.com/google/dynamicworld
(Apache-2.0; "This code is produced for the Dynamic World Project by Google in partnership with
National Geographic and the World Resources Institute."). The layer structure was read from the
SavedModel graph; the weights are converted by ``tools/convert_dynamicworld.py``.

Structure (every "conv" is conv + bias, batch norm with eps 1e-3, Mish ``x * tanh(softplus(x))``;
``pw`` is a 1x1 convolution, ``dw`` a 3x3 depthwise convolution, both stride 1)::

    stem     3x3 conv, in -> 64, full resolution
    resize   to (H // 2, W // 2): TF ScaleAndTranslate, triangle kernel, antialiased
    block1   pw 64->96, dw, pw 96->96, dw, pw 96->96, dw  (+ shortcut pw 64->96)
    block2   pw 96->144, dw, pw, dw, pw, dw               (+ shortcut pw 96->144)
    side     pw 64->48, dw                                 (from the resized stem)
    block3   on concat(block2, side): pw 192->144, dw, pw, dw, pw, dw (+ shortcut pw 192->144)
    upsample bilinear with half-pixel centres back to (H, W)
    l2-normalise over channels (sum of squares clamped at 1e-12), then pw 144 -> classes (no BN)

Each block adds its two branches after their activations. All convolutions are stride 1 with an
odd kernel, so TF's ``SAME`` padding is symmetric (1 pixel for 3x3) and ``VALID`` 1x1 needs none.

Input: NCHW float, the 9 Sentinel-2 L1C bands B2, B3, B4, B5, B6, B7, B8, B11, B12 already
normalised as in the published notebook: ``x' = ln(0.005 x + 1)`` of the digital numbers,
``(x' - a) / b`` per band, then ``sigmoid(5 x'' - 1)``. Output: NCHW logits (9 for Dynamic World:
water, trees, grass, flooded vegetation, crops, shrub and scrub, built, bare, snow and ice);
the published probabilities are their softmax.

Any height and width of at least 2 work, as in TensorFlow. The resize is
``tf.image.resize(method="bilinear", antialias=True)``: the op ``ScaleAndTranslate`` with a
triangle kernel stretched to the downsampling factor (its ``antialias`` attribute is absent from
the graph, so the op default ``true`` applies). For an even size that is a separable
``[1, 3, 3, 1] / 8`` filter with stride 2, its weights renormalised over the pixels inside the
image at the borders; odd sizes follow TF's sample positions and weights, reproduced here. The
upsampling is TF's ``ResizeBilinear`` with half-pixel centres, which is torch's bilinear
``interpolate`` with ``align_corners=False``. Because of the stride-2 grid, a tile's output
matches the whole-scene output only at even tile offsets, away from the tile's borders: use
even tile sizes and halos.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicWorldNet", "antialiased_triangle_resize"]

BN_EPS = 1e-3  # Keras BatchNormalization default, read from the graph's FusedBatchNormV3 nodes
L2_EPS = 1e-12  # tf.math.l2_normalize's epsilon on the sum of squares


class _ConvBNMish(nn.Module):
    """Convolution with bias, batch norm and Mish; ``depthwise`` keeps the channel count."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int = 1, depthwise: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels if depthwise else 1,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mish(self.bn(self.conv(x)))  # in place on the fresh convolution output


_MISH_CHUNK = 1 << 18  # values per step of the in-place Mish: 1 MB of float32, cache-resident


def _mish(x: torch.Tensor) -> torch.Tensor:
    """Mish, ``x * tanh(softplus(x))``; at inference in place, in cache-sized chunks.

    ``tanh(ln(1 + e)) = 1 - 2 / ((1 + e)^2 + 1)`` with ``e = exp(x)``: one transcendental
    instead of three. Its steps run over chunks of ``x``'s memory that stay in the CPU's cache,
    and ``x`` (a convolution's fresh output) is overwritten, so no activation-sized tensor is
    made: on a CPU a new tensor costs more than a step over it (its pages are touched for the
    first time), and a step over memory more than one over cache. Within 2e-6 of ``F.mish``
    (below x = -16 it gives 0 where Mish is above -2e-6); the input is clamped at 20, above
    which ``tanh(softplus(x))`` is 1 in float32. With gradients (training) it is ``F.mish``.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.mish(x)
    if x.is_contiguous():
        flat = x.view(-1)
    elif x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).view(-1)
    else:
        return F.mish(x)
    for chunk in flat.split(_MISH_CHUNK):
        g = torch.clamp(chunk, max=20.0).exp_().add_(1.0).square_().add_(1.0)
        chunk.mul_(g.reciprocal_().mul_(-2.0).add_(1.0))
    return x


# A leaf for torch.fx: batch-norm folding traces the network, and tracing cannot enter the
# branch above (the conv -> batch norm pairs around it still fold).
torch.fx.wrap("_mish")


class _SeparableBlock(nn.Module):
    """Three (pointwise, depthwise) pairs plus a pointwise shortcut, summed after activation."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(_ConvBNMish(in_channels if i == 0 else out_channels, out_channels))
            layers.append(_ConvBNMish(out_channels, out_channels, kernel_size=3, depthwise=True))
        self.layers = nn.Sequential(*layers)
        self.shortcut = _ConvBNMish(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        y += self.shortcut(x)  # in place: the sum is a new activation map otherwise
        return y


def _triangle_taps(
    in_size: int, out_size: int, *, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights, shape (out_size, taps), of TF's antialiased triangle resize.

    Mirrors ``ComputeSpansCore`` in TensorFlow's ``scale_and_translate_op.cc`` in float32, with
    translation 0 and ``antialias=True``: output pixel ``x`` samples the input at
    ``(x + 0.5) / scale``; when downsampling the unit tent is stretched by ``1 / scale`` (radius
    ``1 / scale`` input pixels), sources whose centres fall outside the image are dropped and
    the remaining weights are normalised to sum to one.
    """
    scale = torch.tensor(float(out_size), dtype=torch.float32) / torch.tensor(
        float(in_size), dtype=torch.float32
    )
    inv_scale = (1.0 / scale.double()).float()
    kernel_scale = torch.clamp(inv_scale, min=1.0)
    radius = 1.0 * kernel_scale  # the triangle kernel's radius is 1
    taps = min(2 * math.ceil(float(radius)) + 1, in_size)
    sample = (torch.arange(out_size, dtype=torch.float32) + 0.5) * inv_scale
    start = torch.ceil(sample - radius - 0.5).long().clamp(0, in_size - 1)
    end = torch.floor(sample + radius - 0.5).long().clamp(0, in_size - 1) + 1
    source = start[:, None] + torch.arange(taps)[None, :]
    position = (source.float() + 0.5 - sample[:, None]) * (1.0 / kernel_scale)
    weight = (1.0 - position.abs()).clamp(min=0.0)
    weight = torch.where(source < end[:, None], weight, torch.zeros_like(weight))
    weight = weight * (1.0 / weight.sum(dim=1, keepdim=True))
    return source.clamp(max=in_size - 1).to(device), weight.to(device)


def _resample_axis(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    source, weight = _triangle_taps(x.shape[dim], out_size, device=x.device)
    shape = [1] * x.ndim
    shape[dim] = out_size
    weight = weight.to(x.dtype)
    out = x.index_select(dim, source[:, 0]) * weight[:, 0].reshape(shape)
    for k in range(1, source.shape[1]):
        out = out + x.index_select(dim, source[:, k]) * weight[:, k].reshape(shape)
    return out


def antialiased_triangle_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Downsample NCHW ``x`` to ``size`` exactly as TF's antialiased bilinear resize.

    This is ``tf.image.resize(x, size, method="bilinear", antialias=True)``, the op
    ``ScaleAndTranslate`` with a triangle kernel, translation 0 and antialiasing. Halving an
    even size is a separable ``[1, 3, 3, 1] / 8`` filter with stride 2, renormalised to
    ``[3, 3, 1] / 7`` at the first and last output pixel; other sizes use TF's sample
    positions and stretched, normalised tent weights.

    Parameters
    ----------
    x
        NCHW tensor.
    size
        Output (height, width), each at least 1 and no larger than the input's.

    Returns
    -------
    torch.Tensor
        The resized NCHW tensor.
    """
    height, width = size
    in_h, in_w = x.shape[-2:]
    if not (1 <= height <= in_h and 1 <= width <= in_w):
        raise ValueError(f"cannot downsample {in_h}x{in_w} to {height}x{width}")
    if in_h == 2 * height and in_w == 2 * width and height >= 2 and width >= 2:
        return _halve(x)
    return _resample_axis(_resample_axis(x, 2, height), 3, width)


_TENT = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8.0


def _halve(x: torch.Tensor) -> torch.Tensor:
    """:func:`antialiased_triangle_resize` to half an even size, as one depthwise convolution.

    The separable ``[1, 3, 3, 1] / 8`` filter at stride 2 over the image padded with one zero
    on every side; the first and last outputs of each axis, whose outer tap fell on the
    padding, are scaled by 8 / 7 to renormalise TF's weights over the pixels inside.
    """
    kernel = torch.outer(_TENT, _TENT).to(device=x.device, dtype=x.dtype)
    if torch.onnx.is_in_onnx_export():
        # ONNX wants a convolution's kernel of a known shape, and the channel count is traced
        # from the input: fold the channels into the batch and convolve each plane with the
        # one constant kernel (the same sums, in a layout torch would run more slowly).
        n, c, h, w = x.shape
        planes = x.reshape(n * c, 1, h, w)
        y = F.conv2d(planes, kernel[None, None], stride=2, padding=1)
        y = y.reshape(n, c, y.shape[-2], y.shape[-1])
    else:
        channels = x.shape[1]
        weight = kernel.expand(channels, 1, 4, 4).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, stride=2, padding=1, groups=channels)
    edge = 8.0 / 7.0
    y[..., 0, :] *= edge
    y[..., -1, :] *= edge
    y[..., :, 0] *= edge
    y[..., :, -1] *= edge
    return y


class DynamicWorldNet(nn.Module):
    """The Dynamic World "forward" network: normalised 9-band L1C in, land-cover logits out.

    Parameters
    ----------
    in_channels
        Input bands (9 for the published weights: B2, B3, B4, B5, B6, B7, B8, B11, B12).
    classes
        Output logits (9 for the published weights).

    Notes
    -----
    ``forward`` takes NCHW float input normalised as the module docstring describes, with height
    and width at least 2 (any parity), and returns NCHW logits of the same height and width.
    Parameters: 225,513 trainable for 9 bands and 9 classes, plus 5,696 batch-norm running
    statistics (231,209 values in all, as in the SavedModel).
    """

    def __init__(self, *, in_channels: int = 9, classes: int = 9) -> None:
        super().__init__()
        if in_channels < 1 or classes < 1:
            raise ValueError(
                f"in_channels ({in_channels}) and classes ({classes}) must be at least 1"
            )
        self.stem = _ConvBNMish(in_channels, 64, kernel_size=3)
        self.block1 = _SeparableBlock(64, 96)
        self.block2 = _SeparableBlock(96, 144)
        self.side = nn.Sequential(
            _ConvBNMish(64, 48), _ConvBNMish(48, 48, kernel_size=3, depthwise=True)
        )
        self.block3 = _SeparableBlock(144 + 48, 144)
        self.head = nn.Conv2d(144, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height < 2 or width < 2:
            raise ValueError(f"Dynamic World needs at least 2x2 pixels, got {height}x{width}")
        stem = self.stem(x)
        half = antialiased_triangle_resize(stem, (height // 2, width // 2))
        deep = self.block2(self.block1(half))
        y = self.block3(torch.cat([deep, self.side(half)], dim=1))
        y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
        # tf.math.l2_normalize: x * rsqrt(max(sum x^2, eps)) = x / max(|x|, sqrt(eps)). The
        # head is linear, so the per-pixel scale is applied to its 9 outputs, not the 144
        # inputs: W (y / s) + b = (W y) / s + b.
        scale = torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_(min=math.sqrt(L2_EPS))
        bias = self.head.bias
        logits = F.conv2d(y, self.head.weight)
        logits = logits / scale
        return logits if bias is None else logits + bias[:, None, None]
