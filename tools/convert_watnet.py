"""Convert the published WatNet-L578 PyTorch state dict to a geoseg safetensors state dict.

One-time conversion; it needs only geoseg's own dependencies (torch, safetensors, rasterio).
``watnet_l578.pth`` (github.com/xinluo2018/landsat578-water, MIT) is read with
``torch.load(weights_only=True)``: tensors only, no pickled code. The script

1. strict-loads it into ``geoseg.models.architectures.watnet.WatNet`` and writes the module's
   state dict (float32 weights and running statistics, int64 ``num_batches_tracked``) with
   safetensors, no metadata; the written file is read back and strict-loaded again;
2. compares the port with the original network as ``trainer.ipynb`` defines it (``_Original``
   below, restated from the notebook: nn.Upsample, the sigmoid inside ``outp``) on the real
   Sentinel-2 chip: max abs difference of the water probabilities;
3. reports the fraction of water pixels (probability > 0.5) on the chip, bands B2, B3, B4, B8,
   B11, B12 / 10000, next to the fraction with MNDWI (B3 - B11) / (B3 + B11) > 0 as a sanity
   reference, and that inputs must be multiples of 16 pixels.

Command, from the repo root::

    .venv/bin/python tools/convert_watnet.py \\
        --pth ../shared/models/watnet_l578/watnet_l578.pth \\
        --chip ../shared/data/sen1floods11_s2/Spain_7370579_S2Hand.tif \\
        --out /work/staging/watnet_l578.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoseg.models.architectures.watnet import SIZE_MULTIPLE, WatNet  # noqa: E402

CHIP_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
WATNET_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12")  # blue, green, red, NIR, SWIR1, SWIR2


def _conv3x3_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Original(nn.Module):
    """The ``unet`` of trainer.ipynb (MIT, Copyright (c) 2021 xin luo), as the reference."""

    def __init__(self, num_bands: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.down_conv1 = _conv3x3_bn_relu(num_bands, 16)
        self.down_conv2 = _conv3x3_bn_relu(16, 32)
        self.down_conv3 = _conv3x3_bn_relu(32, 64)
        self.down_conv4 = _conv3x3_bn_relu(64, 128)
        self.up_conv1 = _conv3x3_bn_relu(192, 64)
        self.up_conv2 = _conv3x3_bn_relu(96, 48)
        self.up_conv3 = _conv3x3_bn_relu(64, 32)
        self.outp = nn.Sequential(nn.Conv2d(32, 1, kernel_size=3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.avg_pool2d(input=self.down_conv1(x), kernel_size=2)
        x2 = F.avg_pool2d(input=self.down_conv2(x1), kernel_size=2)
        x3 = F.avg_pool2d(input=self.down_conv3(x2), kernel_size=2)
        x4 = F.avg_pool2d(input=self.down_conv4(x3), kernel_size=2)
        x4_up = torch.cat([self.up(x4), x3], dim=1)
        x3_up = self.up_conv1(x4_up)
        x3_up = torch.cat([self.up(x3_up), x2], dim=1)
        x2_up = self.up_conv2(x3_up)
        x2_up = torch.cat([self.up(x2_up), x1], dim=1)
        x1_up = self.up_conv3(x2_up)
        return self.outp(self.up(x1_up))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pth", type=Path, required=True)
    parser.add_argument("--chip", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import rasterio
    from safetensors.torch import load_file, save_file

    published = torch.load(str(args.pth), map_location="cpu", weights_only=True)
    net = WatNet(in_channels=6, classes=1).eval()
    net.load_state_dict(published, strict=True)
    original = _Original(num_bands=6).eval()
    original.load_state_dict(published, strict=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out))
    net.load_state_dict(load_file(str(args.out)), strict=True)
    values = sum(v.numel() for k, v in published.items() if not k.endswith("num_batches_tracked"))
    trainable = sum(p.numel() for p in net.parameters())
    print(f"{args.pth.name}: {len(published)} tensors, {values:,} values; strict load OK")
    print(f"torch parameters: {trainable:,} trainable; wrote {args.out}")

    with rasterio.open(args.chip) as src:
        names = src.descriptions if all(src.descriptions) else CHIP_BANDS
        dn = src.read([names.index(b) + 1 for b in WATNET_BANDS]).astype(np.float32)
        nodata = (
            (dn == src.nodata).all(0) if src.nodata is not None else np.zeros(dn.shape[1:], bool)
        )
    height, width = dn.shape[1:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise SystemExit(f"chip {height}x{width} is not a multiple of {SIZE_MULTIPLE}")
    x = torch.from_numpy(np.clip(dn / 10000.0, 0.0, 1.0))[None]
    with torch.no_grad():
        p_port = torch.sigmoid(net(x))[0, 0].numpy()
        p_orig = original(x)[0, 0].numpy()
    valid = ~nodata
    water = float((p_port[valid] > 0.5).mean())
    green, swir1 = dn[1].astype(np.float64), dn[4].astype(np.float64)
    mndwi = (green - swir1) / np.maximum(green + swir1, 1e-9)
    diff = float(np.abs(p_port - p_orig).max())
    print(f"port vs original network, max abs diff of probabilities: {diff:.3g}")
    print(
        f"chip {height}x{width} ({int(nodata.sum())} nodata pixels): water (p > 0.5) {water:.4f}, "
        f"MNDWI > 0 {float((mndwi[valid] > 0).mean()):.4f}, "
        f"both {float(((p_port > 0.5) & (mndwi > 0))[valid].mean()):.4f}"
    )
    print(f"input height and width must be multiples of {SIZE_MULTIPLE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
