"""The One Hundred Layers Tiramisu: fully convolutional DenseNets (Jégou et al. 2017).

A U-shaped network of dense blocks. A dense block of ``n`` layers with growth rate ``k``
applies, ``n`` times, a layer (batch norm, ReLU, 3 x 3 convolution to ``k`` maps, dropout 0.2)
to the concatenation of its input and every map made so far in the block::

    first conv   3 x 3, in -> 48
    down path    dense block, its input and new maps concatenated (kept as the skip),
                 transition down: BN, ReLU, 1 x 1 conv (same width), dropout, 2 x 2 max pool
    bottleneck   dense block
    up path      transition up: 3 x 3 transposed conv, stride 2, of the previous block's *new*
                 maps only (``n k`` channels, to ``n k``), concatenated with the skip,
                 then a dense block
    classifier   1 x 1 conv of the last block's input and new maps -> classes

Only the new maps of the bottleneck and up-path blocks are upsampled (the paper's answer to
the feature explosion of upsampling everything). Variants (layers per block; growth rate):

    fc-densenet56    4 in each of the 11 blocks; 12      (paper: 1.5 M parameters)
    fc-densenet67    5 in each of the 11 blocks; 16      (paper: 3.5 M)
    fc-densenet103   4, 5, 7, 10, 12 | 15 | 12, 10, 7, 5, 4; 16   (paper: 9.4 M)

Five transitions down halve the size five times, so the input is padded (edge pixels
repeated, at the bottom and right) to a multiple of 32 and the output cropped back: any
height and width work. The transposed convolution is unpadded (``2 h + 1`` rows), and its
first ``2 h`` rows are kept, as the reference implementation's crop to the skip does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SIZE_MULTIPLE", "VARIANTS", "Tiramisu"]

SIZE_MULTIPLE = 32  # five 2 x 2 poolings
FIRST_CONV = 48
VARIANTS: dict[str, tuple[tuple[int, ...], int]] = {
    # Variant -> (layers per dense block: 5 down, the bottleneck, 5 up; growth rate).
    "fc-densenet56": ((4,) * 11, 12),
    "fc-densenet67": ((5,) * 11, 16),
    "fc-densenet103": ((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16),
}


class _DenseLayer(nn.Sequential):
    def __init__(self, in_channels: int, growth: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth, 3, padding=1),
            nn.Dropout2d(dropout),
        )


class _DenseBlock(nn.Module):
    """``layers`` dense layers; returns (input and new maps, new maps only)."""

    def __init__(self, in_channels: int, *, layers: int, growth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _DenseLayer(in_channels + i * growth, growth, dropout) for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new: list[torch.Tensor] = []
        stack = x
        for layer in self.layers:
            out = layer(stack)
            new.append(out)
            stack = torch.cat([stack, out], dim=1)
        return stack, torch.cat(new, dim=1)


class _TransitionDown(nn.Sequential):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )


class Tiramisu(nn.Module):
    """FC-DenseNet56, 67 or 103.

    Parameters
    ----------
    in_channels
        Input bands.
    classes
        Output logits.
    variant
        ``fc-densenet56``, ``fc-densenet67`` or ``fc-densenet103`` (default).
    dropout
        Dropout after every convolution but the first and the classifier (0.2 in the paper).

    Notes
    -----
    ``forward`` takes NCHW input of any height and width and returns NCHW logits of the
    same size. Memory grows with the concatenated maps of every dense block: measure it
    (``benchmarks/architectures.py``) before sizing batches.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        classes: int = 2,
        variant: str = "fc-densenet103",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"Tiramisu variant {variant!r} is not known; valid: {', '.join(VARIANTS)}"
            )
        if in_channels < 1 or classes < 1:
            raise ValueError(
                f"in_channels ({in_channels}) and classes ({classes}) must be at least 1"
            )
        layers, growth = VARIANTS[variant]
        n_pool = len(layers) // 2
        self.variant = variant
        self.first_conv = nn.Conv2d(in_channels, FIRST_CONV, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        channels = FIRST_CONV
        skip_channels: list[int] = []
        for n in layers[:n_pool]:
            self.down_blocks.append(_DenseBlock(channels, layers=n, growth=growth, dropout=dropout))
            channels += n * growth
            skip_channels.append(channels)
            self.transitions_down.append(_TransitionDown(channels, dropout))
        self.bottleneck = _DenseBlock(
            channels, layers=layers[n_pool], growth=growth, dropout=dropout
        )
        upsampled = layers[n_pool] * growth  # only the bottleneck's new maps go up
        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i, n in enumerate(layers[n_pool + 1 :]):
            self.transitions_up.append(
                nn.ConvTranspose2d(upsampled, upsampled, 3, stride=2, padding=0)
            )
            channels = upsampled + skip_channels[-1 - i]
            self.up_blocks.append(_DenseBlock(channels, layers=n, growth=growth, dropout=dropout))
            upsampled = n * growth
            channels += n * growth
        self.classifier = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = -height % SIZE_MULTIPLE
        pad_w = -width % SIZE_MULTIPLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        stack = self.first_conv(x)
        skips: list[torch.Tensor] = []
        for block, down in zip(self.down_blocks, self.transitions_down, strict=True):
            stack, _ = block(stack)
            skips.append(stack)
            stack = down(stack)
        _, new = self.bottleneck(stack)
        for up, block, skip in zip(
            self.transitions_up, self.up_blocks, reversed(skips), strict=True
        ):
            upsampled = up(new)[..., : skip.shape[-2], : skip.shape[-1]]
            stack, new = block(torch.cat([upsampled, skip], dim=1))
        return self.classifier(stack)[..., :height, :width]
