"""Cost of each architecture per 512 x 512 tile on this CPU (issue #20).

U-Net, FCN-8s, PSPNet and DeepLabV3+ over ResNet-34, and FC-DenseNet56/67/103 (Tiramisu),
3 bands, 2 classes, untrained weights (cost does not depend on them), batch 1, torch
threads = 2. Each network is prepared as geoseg's predictor prepares it (batch norms folded
where they follow a convolution, channels_last) and run in fp32, then in bf16 (weights
pre-cast, autocast).

Columns:

- ``s/tile``: median wall time of a forward pass after one warm-up pass.
- ``peak MB``: the process's peak resident memory (``VmHWM``) minus its resident memory
  just before the first pass, with the network and input already in memory: what one tile's
  forward pass adds. Each architecture and precision runs in its own process, so one's peak
  does not hide another's.
- ``act MB``: the peak of the bytes held by tensors allocated during a bf16 pass (fp16 has
  the same sizes), tracked op by op with a torch dispatch mode
  (:func:`geoseg.models.batch_size.peak_live_bytes`): the activation memory a GPU
  needs per tile beyond the weights, without allocator overheads; ``x U-Net`` is its ratio
  to the U-Net's; ``512/256`` the ratio between a 512 and a 256 px tile (4.0 when
  activation memory is proportional to the pixels, so a small probe pass predicts a tile).

The machine's load average is printed with the table: on a shared machine every time in it
is stretched by the other processes.

Usage: python benchmarks/architectures.py [--repeats 2] [--tile 512] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table

THREADS = 2
ARCHITECTURES = {
    "U-Net R34": ("smp", "Unet", {"encoder_name": "resnet34"}),
    "FCN-8s R34": ("geoseg", "fcn.FCN", {"encoder_name": "resnet34", "variant": "fcn8s"}),
    "FC-DenseNet56": ("geoseg", "tiramisu.Tiramisu", {"variant": "fc-densenet56"}),
    "FC-DenseNet67": ("geoseg", "tiramisu.Tiramisu", {"variant": "fc-densenet67"}),
    "FC-DenseNet103": ("geoseg", "tiramisu.Tiramisu", {"variant": "fc-densenet103"}),
    "PSPNet R34": ("smp", "PSPNet", {"encoder_name": "resnet34"}),
    "DeepLabV3+ R34": ("smp", "DeepLabV3Plus", {"encoder_name": "resnet34"}),
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _build(name: str) -> Any:
    import importlib

    kind, cls, kwargs = ARCHITECTURES[name]
    if kind == "smp":
        import segmentation_models_pytorch as smp

        return getattr(smp, cls)(encoder_weights=None, in_channels=3, classes=2, **kwargs)
    module, cls_name = cls.split(".")
    mod = importlib.import_module(f"geoseg.models.architectures.{module}")
    return getattr(mod, cls_name)(in_channels=3, classes=2, **kwargs)


def child(name: str, precision: str, *, repeats: int, tile: int) -> dict[str, Any]:
    """One architecture at one precision, in this (fresh) process."""
    import torch

    from geoseg.models.batch_size import peak_live_bytes
    from geoseg.models.bn_folding import cast_weights, fold_batchnorm

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    net = _build(name).eval()
    params = sum(p.numel() for p in net.parameters())
    fold_batchnorm(net)
    bf16 = precision == "bf16"
    if bf16:
        cast_weights(net, torch.bfloat16)
    net = net.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, tile, tile).contiguous(memory_format=torch.channels_last)

    def forward() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    net(x)
            else:
                net(x)
        return time.perf_counter() - t0

    rss0 = _status_kb("VmRSS")
    out: dict[str, Any] = {"params": params}
    # The warm-up pass (oneDNN primitives, allocator); in bf16 it also tracks the tensors
    # (the dispatch mode holds no tensor, so the peak below is unchanged).
    if bf16:
        out["act_mb"] = peak_live_bytes(net, x, dtype=torch.bfloat16) / 2**20
    else:
        forward()
    times = [forward() for _ in range(repeats)]
    out["s_per_tile"] = statistics.median(times)
    out["peak_mb"] = (_status_kb("VmHWM") - rss0) / 1024
    if bf16:
        half = torch.rand(1, 3, tile // 2, tile // 2).contiguous(memory_format=torch.channels_last)
        out["act_half_mb"] = peak_live_bytes(net, half, dtype=torch.bfloat16) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--only", default="", help="comma-separated architecture names")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(args.child[0], args.child[1], repeats=args.repeats, tile=args.tile)
        print(json.dumps(result))
        return
    names = [n for n in ARCHITECTURES if not args.only or n in args.only.split(",")]
    rows = []
    started = time.perf_counter()
    for name in names:
        runs = {}
        for precision in ("fp32", "bf16"):
            cmd = [sys.executable, __file__, "--child", name, precision]
            cmd += ["--repeats", str(args.repeats), "--tile", str(args.tile)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[precision] = json.loads(done.stdout.strip().splitlines()[-1])
        fp32, bf16 = runs["fp32"], runs["bf16"]
        rows.append(
            {
                "architecture": name,
                "params M": fp32["params"] / 1e6,
                "fp32 s/tile": fp32["s_per_tile"],
                "bf16 s/tile": bf16["s_per_tile"],
                "fp32 peak MB": fp32["peak_mb"],
                "bf16 peak MB": bf16["peak_mb"],
                "act MB": bf16["act_mb"],
                "512/256": bf16["act_mb"] / bf16["act_half_mb"],
            }
        )
    unet = next((r["act MB"] for r in rows if r["architecture"] == "U-Net R34"), None)
    for r in rows:
        r["x U-Net"] = r["act MB"] / unet if unet else float("nan")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.tile}^2 x 3 bands, 2 classes, batch 1, torch threads {THREADS}, "
        f"median of {args.repeats} after a warm-up; {time.perf_counter() - started:.0f} s; "
        f"load average at the end {load} on {os.cpu_count()} cores\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
