"""WatNet-L578, the Landsat 5/7/8 surface-water U-Net of Xin Luo, written for geoseg.

The layer order follows the network defined in ``trainer.ipynb`` of
github.com/xinluo2018/landsat578-water (MIT, Copyright (c) 2021 xin luo), and the state-dict keys
match it (``down_conv1..4``, ``up_conv1..3``, ``outp``) so the published ``watnet_l578.pth``
loads strictly; ``tools/convert_watnet.py`` turns it into safetensors.

Structure (each ``conv`` is a 3x3 convolution with padding 1 and bias, batch norm, ReLU)::

    down_conv1  in -> 16,  then 2x2 average pool           (1/2)
    down_conv2  16 -> 32,  pool                            (1/4)
    down_conv3  32 -> 64,  pool                            (1/8)
    down_conv4  64 -> 128, pool                            (1/16)
    up_conv1    concat(up(d4), d3): 192 -> 64              (1/8)
    up_conv2    concat(up(u1), d2): 96 -> 48               (1/4)
    up_conv3    concat(up(u2), d1): 64 -> 32               (1/2)
    outp        up(u3), 3x3 conv 32 -> classes             (1/1)

``up`` is nearest-neighbour upsampling by 2; the skips are the pooled encoder outputs. The
original ``outp`` ends with a sigmoid; this module returns the value before it, a logit, and
``torch.sigmoid`` of it is the published water probability.

Input: NCHW float, 6 bands blue, green, red, NIR, SWIR1, SWIR2 as reflectance 0-1 (Landsat
surface reflectance / 10000 for the published weights). Height and width must be multiples of
16 (four 2x2 poolings whose outputs are concatenated back at each scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIZE_MULTIPLE", "WatNet"]

SIZE_MULTIPLE = 16  # four 2x2 average poolings


def _conv3x3_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class WatNet(nn.Module):
    """WatNet-L578: 6-band reflectance in, one water logit per pixel out.

    Parameters
    ----------
    in_channels
        Input bands (6 for the published weights: blue, green, red, NIR, SWIR1, SWIR2).
    classes
        Output channels (1 for the published weights: the water logit).

    Notes
    -----
    ``forward`` takes NCHW float reflectance with height and width multiples of 16 and returns
    NCHW logits of the same size; the original network's final sigmoid is left out.
    Parameters: 269,569 trainable for 6 bands and 1 class, plus 768 batch-norm running
    statistics (270,337 values in all, as in ``watnet_l578.pth``).
    """

    def __init__(self, *, in_channels: int = 6, classes: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or classes < 1:
            raise ValueError(
                f"in_channels ({in_channels}) and classes ({classes}) must be at least 1"
            )
        self.down_conv1 = _conv3x3_bn_relu(in_channels, 16)
        self.down_conv2 = _conv3x3_bn_relu(16, 32)
        self.down_conv3 = _conv3x3_bn_relu(32, 64)
        self.down_conv4 = _conv3x3_bn_relu(64, 128)
        self.up_conv1 = _conv3x3_bn_relu(128 + 64, 64)
        self.up_conv2 = _conv3x3_bn_relu(64 + 32, 48)
        self.up_conv3 = _conv3x3_bn_relu(48 + 16, 32)
        # A Sequential so the key stays ``outp.0``: the original's sigmoid was ``outp.1``.
        self.outp = nn.Sequential(nn.Conv2d(32, classes, kernel_size=3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(
                f"WatNet needs height and width divisible by {SIZE_MULTIPLE}, got {height}x{width};"
                f" pad to {-(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE}"
                f"x{-(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE}"
            )
        x1 = F.avg_pool2d(self.down_conv1(x), 2)
        x2 = F.avg_pool2d(self.down_conv2(x1), 2)
        x3 = F.avg_pool2d(self.down_conv3(x2), 2)
        x4 = F.avg_pool2d(self.down_conv4(x3), 2)
        u1 = self.up_conv1(torch.cat([_up(x4), x3], dim=1))
        u2 = self.up_conv2(torch.cat([_up(u1), x2], dim=1))
        u3 = self.up_conv3(torch.cat([_up(u2), x1], dim=1))
        return self.outp(_up(u3))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")
