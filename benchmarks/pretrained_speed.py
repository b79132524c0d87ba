"""Seconds per megapixel of the ported published networks, through the predictor, on the CPU.

Dynamic World (Sentinel-2, 9 bands), WatNet-L578 (Landsat, 6 bands) and, as the baseline, a
U-Net with a ResNet-34 encoder (4 bands, random weights: speed does not depend on them) each
predict the same real block: the Sentinel-2 L1C chip of ``sen1floods11_s2`` mirrored to
``--size`` (default 1024 x 1024), bands as each model reads them (WatNet's as reflectance).
Tiles of 512 px with 64 px overlap, the predictor as ``geoseg run`` configures it here: the
card's normalisation, every forward pass on one of two single-threaded model slots, blending.
One warm-up tile, then the median of ``--repeats`` timed blocks, in fp32 and under bf16
autocast (when the CPU runs bf16 natively). The ratio column is against the U-Net in the same
precision. The machine's load average is printed: on a shared machine every time is stretched.

    .venv/bin/python benchmarks/pretrained_speed.py [--size 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402
from geoseg.config import InferenceOptions  # noqa: E402
from geoseg.models.card import ClassInfo, ModelCard  # noqa: E402
from geoseg.models.defaults import DYNAMIC_WORLD, WATNET, WEIGHTS_DIR  # noqa: E402
from geoseg.models.predictor import TorchSegmenter, cpu_supports_bf16  # noqa: E402
from geoseg.models.registry import build_network, load_network  # noqa: E402

CHIP = SHARED / "sen1floods11_s2" / "Spain_7370579_S2Hand.tif"
DW_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")
WATNET_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12")
UNET_BANDS = ("B2", "B3", "B4", "B8")


def _mirrored(bands: tuple[str, ...], size: int) -> np.ndarray:
    with rasterio.open(CHIP) as src:
        data = src.read([src.descriptions.index(b) + 1 for b in bands])
    reps = -(-size // data.shape[1])
    tiled = np.concatenate([data, data[:, ::-1]] * reps, axis=1)[:, :size]
    tiled = np.concatenate([tiled, tiled[:, :, ::-1]] * reps, axis=2)[:, :, :size]
    return np.ascontiguousarray(tiled)


def _unet_r34() -> tuple[ModelCard, Any]:
    card = ModelCard(
        name="unet-r34",
        architecture="unet",
        encoder="resnet34",
        bands=("blue", "green", "red", "nir"),
        mean=(1200.0, 1200.0, 1200.0, 2000.0),
        std=(400.0, 400.0, 500.0, 900.0),
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
    )
    return card, build_network(card).eval()


def _time(
    card: ModelCard, net: Any, image: np.ndarray, *, precision: str, repeats: int
) -> tuple[float, str]:
    options = InferenceOptions(
        device="cpu", precision=precision, threads=2, concurrent_batches=2, tile=512, overlap=64
    )
    seg = TorchSegmenter(card, net, options=options)
    valid = np.ones(image.shape[1:], dtype=bool)
    # Warm-up on one tile: first-call allocations, oneDNN kernel choice.
    seg.predict(image[:, :512, :512], valid[:512, :512])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        seg.predict(image, valid)
        times.append(time.perf_counter() - start)
    return statistics.median(times), seg.precision


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not CHIP.is_file():
        print(f"missing {CHIP}: needs ../shared/data", file=sys.stderr)
        return 1
    import torch

    torch.manual_seed(0)
    models = {
        "U-Net R34 (4 bands)": (*_unet_r34(), _mirrored(UNET_BANDS, args.size)),
        "Dynamic World (9 bands)": (
            *load_network(WEIGHTS_DIR / DYNAMIC_WORLD),
            _mirrored(DW_BANDS, args.size),
        ),
        "WatNet-L578 (6 bands)": (
            *load_network(WEIGHTS_DIR / WATNET),
            (_mirrored(WATNET_BANDS, args.size) / 10000).astype(np.float32),
        ),
    }
    precisions = ["fp32"] + (["bf16"] if cpu_supports_bf16() else [])
    mpx = args.size * args.size / 1e6
    print(f"{args.size} x {args.size} block ({mpx:.2f} Mpx) of real Sentinel-2 L1C, 512 px tiles")
    print(f"torch {torch.__version__}, 2 model slots x 1 thread; load {os.getloadavg()[0]:.1f}")
    print("| model | precision | s/Mpx | x U-Net R34 | parameters |")
    print("|---|---|---|---|---|")
    baseline: dict[str, float] = {}
    for precision in precisions:
        for name, (card, net, image) in models.items():
            seconds, used = _time(card, net, image, precision=precision, repeats=args.repeats)
            per_mpx = seconds / mpx
            baseline.setdefault(precision, per_mpx)
            params = sum(p.numel() for p in net.parameters())
            print(
                f"| {name} | {used} | {per_mpx:.2f} | {per_mpx / baseline[precision]:.2f} "
                f"| {params / 1e6:.2f} M |",
                flush=True,
            )
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
