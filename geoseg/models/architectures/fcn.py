"""Fully convolutional networks (Long, Shelhamer & Darrell 2015), over segmentation-models-pytorch
encoders.

The encoder is any smp encoder (``get_encoder(name, in_channels, depth=5)``), used as FCN used
VGG-16: its stride-32 features are scored per class, and the coarse score map is upsampled back
to the input. The three variants of the paper differ in the skip fusions::

    fcn32s   score(s32) -------------------------------------------------> up x32
    fcn16s   up x2(score(s32)) + score(s16) -----------------------------> up x16
    fcn8s    up x2(up x2(score(s32)) + score(s16)) + score(s8) ----------> up x8

``score(s32)`` is the head: a 3 x 3 convolution, batch norm, ReLU and dropout (in place of
VGG's fc6/fc7, as torchvision's FCN-ResNet does), then a 1 x 1 convolution to the classes.
The skip scores ``score(s16)``, ``score(s8)`` are 1 x 1 convolutions on the encoder's stride-16
and stride-8 features, initialised to zero as in the paper, so training starts from the
coarser variant's output and learns how much the finer features add.

Upsampling is either a transposed convolution initialised to bilinear interpolation and
learned (the paper's choice; kernel ``2 s``, stride ``s``, padding ``s / 2``) or fixed bilinear
interpolation (``upsampling="bilinear"``). Both scale by exactly the factor and crop (or pad
at the bottom and right) to the finer map's size, so pixel ``(0, 0)`` stays at the same place
at every scale and any input height and width work, odd sizes included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FCN", "UPSAMPLING", "VARIANTS", "bilinear_kernel"]

VARIANTS: dict[str, tuple[int, ...]] = {
    # Variant -> the encoder strides whose scores are fused, coarsest first.
    "fcn32s": (32,),
    "fcn16s": (32, 16),
    "fcn8s": (32, 16, 8),
}
UPSAMPLING = ("transposed", "bilinear")
ENCODER_DEPTH = 5  # features at strides 2, 4, 8, 16, 32


def bilinear_kernel(channels: int, factor: int) -> torch.Tensor:
    """Weights ``(channels, channels, 2 f, 2 f)`` of a transposed convolution that performs
    bilinear upsampling by ``factor`` on each channel separately (FCN's initialisation)."""
    size = 2 * factor
    center = factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1.0 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, size, size)
    for c in range(channels):
        weight[c, c] = kernel
    return weight


def _fit(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop ``x`` to ``height x width`` from the top left, or pad the bottom/right edges."""
    x = x[..., :height, :width]
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), mode="replicate")
    return x


class _Upsample(nn.Module):
    """Upsampling of class scores by an integer factor, then fitted to a target size."""

    def __init__(self, classes: int, factor: int, *, mode: str) -> None:
        super().__init__()
        self.factor = factor
        self.deconv: nn.ConvTranspose2d | None = None
        if mode == "transposed":
            self.deconv = nn.ConvTranspose2d(
                classes, classes, 2 * factor, stride=factor, padding=factor // 2, bias=False
            )
            with torch.no_grad():
                self.deconv.weight.copy_(bilinear_kernel(classes, factor))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.deconv is not None:
            y = self.deconv(x)
        else:
            y = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return _fit(y, *size)


class FCN(nn.Module):
    """FCN-32s, FCN-16s or FCN-8s over an smp encoder.

    Parameters
    ----------
    encoder_name
        smp encoder (``resnet34``, ``efficientnet-b0``, ...; any with depth 5).
    encoder_weights
        Pretrained encoder weights to download (``None``: random; geoseg always builds
        with ``None`` and loads the model file's weights).
    in_channels
        Input bands.
    classes
        Output logits.
    variant
        ``fcn8s`` (default), ``fcn16s`` or ``fcn32s``.
    upsampling
        ``transposed``: learnable transposed convolutions initialised bilinear (the paper);
        ``bilinear``: fixed interpolation, no parameters.
    head_channels
        Width of the head's 3 x 3 convolution; ``None``: a quarter of the encoder's
        stride-32 channels (torchvision's FCN head).
    dropout
        Dropout before the head's class scores.

    Notes
    -----
    ``forward`` takes NCHW input of any height and width and returns NCHW logits of the
    same height and width.
    """

    def __init__(
        self,
        *,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        classes: int = 2,
        variant: str = "fcn8s",
        upsampling: str = "transposed",
        head_channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"FCN variant {variant!r} is not known; valid: {', '.join(VARIANTS)}")
        if upsampling not in UPSAMPLING:
            raise ValueError(
                f"FCN upsampling {upsampling!r} is not known; valid: {', '.join(UPSAMPLING)}"
            )
        if in_channels < 1 or classes < 1:
            raise ValueError(
                f"in_channels ({in_channels}) and classes ({classes}) must be at least 1"
            )
        from segmentation_models_pytorch.encoders import get_encoder

        self.variant = variant
        self.encoder = get_encoder(
            encoder_name, in_channels=in_channels, depth=ENCODER_DEPTH, weights=encoder_weights
        )
        # out_channels[k] is the channel count at stride 2**k (k = 0: the input itself).
        channels = {2**k: c for k, c in enumerate(self.encoder.out_channels)}
        deepest = channels[32]
        width = head_channels or max(1, deepest // 4)
        self.head = nn.Sequential(
            nn.Conv2d(deepest, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(width, classes, 1),
        )
        strides = VARIANTS[variant]
        self.skip_scores = nn.ModuleDict()
        self.skip_ups = nn.ModuleDict()
        for stride in strides[1:]:
            score = nn.Conv2d(channels[stride], classes, 1, bias=True)
            nn.init.zeros_(score.weight)
            if score.bias is not None:
                nn.init.zeros_(score.bias)
            self.skip_scores[str(stride)] = score
            self.skip_ups[str(stride)] = _Upsample(classes, 2, mode=upsampling)
        self.final_up = _Upsample(classes, strides[-1], mode=upsampling)
        self._strides = strides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        features = self.encoder(x)
        by_stride = {2**k: f for k, f in enumerate(features)}
        score = self.head(by_stride[32])
        for stride in self._strides[1:]:
            finer = by_stride[stride]
            score = self.skip_ups[str(stride)](score, tuple(finer.shape[-2:]))
            score = score + self.skip_scores[str(stride)](finer)
        return self.final_up(score, (height, width))
