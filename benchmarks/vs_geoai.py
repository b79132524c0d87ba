"""geoseg against geoai-py's `semantic_segmentation`, same weights, scene and tile plan (#5).

geoai-py lives in its own virtual environment, never in geoseg's dependencies:

    python3 -m venv /tmp/geoai/venv
    /tmp/geoai/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 geoai-py

The same U-Net ResNet-34 weights (the benchmark model of common.py, trained with geoai's
`x / 255` normalisation; 4 input bands, 2 classes) are given to geoai as a plain smp state
dict (.pth) and to geoseg through `geoseg models import` with mean 0 / std 255. Tile 512,
overlap 64, CPU, for both. Each tool runs as its own process; wall time and peak RSS
(process tree) are measured alike.
geoseg runs twice: with geoai's settings (fp32, batch 4) and with its defaults (bf16
autocast on this CPU, batch size chosen for the device: 1 tile on a CPU).

Usage: python benchmarks/vs_geoai.py [--sizes 4096,8192] [--geoai-python /tmp/geoai/venv/bin/python]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geoseg_cmd, mirror_scene, parse_args, run_cmd, run_measured, table, unet_r34

GEOAI_SCRIPT = """
import sys, torch
torch.set_num_threads({threads})
from geoai.train import semantic_segmentation
semantic_segmentation(sys.argv[1], sys.argv[2], sys.argv[3], architecture="unet",
    encoder_name="resnet34", num_channels=4, num_classes=2, window_size=512, overlap=64,
    batch_size=4, device=torch.device("cpu"), quiet=True)
"""


def make_weights(workdir: Path) -> tuple[Path, Path]:
    """The benchmark U-Net ResNet-34 as a plain smp state dict (.pth) for geoai, and the
    geoseg model file imported back from that .pth with `geoseg models import`."""
    import torch

    from geoseg.models.registry import load_network

    _, net = load_network(unet_r34(workdir / "unet_r34.safetensors"))
    pth = workdir / "unet_r34_plain.pth"
    torch.save(net.state_dict(), pth)
    model = workdir / "unet_r34_imported.safetensors"
    m = run_measured(
        geoseg_cmd(
            "models",
            "import",
            str(pth),
            "--arch",
            "unet",
            "--encoder",
            "resnet34",
            "--bands",
            "blue,green,red,nir",
            "--classes",
            "background,water",
            "--mean",
            "0,0,0,0",
            "--std",
            "255,255,255,255",
            "--tile",
            "512",
            "--overlap",
            "64",
            "-o",
            str(model),
            "--overwrite",
            "-q",
        )
    )
    if m.returncode != 0:
        sys.exit(f"geoseg models import failed:\n{m.stderr}")
    return pth, model


def main() -> None:
    import os

    args = parse_args(
        __doc__,
        sizes={"default": "4096,8192"},
        geoai_python={"default": "/tmp/geoai/venv/bin/python"},
    )
    if not Path(args.geoai_python).exists():
        sys.exit(f"no geoai environment at {args.geoai_python}; see this script's docstring")
    pth, model = make_weights(args.workdir)
    threads = os.cpu_count() or 1
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        scene = mirror_scene(args.workdir / f"s2_mirror_{size}.tif", size)
        mpx = size * size / 1e6
        runs = {
            "geoai-py semantic_segmentation (fp32)": [
                args.geoai_python,
                "-c",
                GEOAI_SCRIPT.format(threads=threads),
                str(scene),
                str(args.workdir / f"geoai_{size}.tif"),
                str(pth),
            ],
        }
        # fp32 with geoai's batch of 4: the same settings; then geoseg's defaults (bf16 on
        # this CPU, a batch of 1 tile: as fast per tile on a CPU, less memory).
        for precision, batch in (("fp32", "4"), ("auto", "0")):
            runs[f"geoseg run ({precision}, batch {batch if batch != '0' else 'auto'})"] = run_cmd(
                scene,
                model,
                args.workdir / f"vs_{size}_{precision}.gpkg",
                "--smooth",
                "none",
                "--no-centerlines",
                "--batch-size",
                batch,
                "--precision",
                precision,
            )
        measured = {name: run_measured(cmd) for name, cmd in runs.items()}
        for name, m in measured.items():
            if m.returncode != 0:
                sys.exit(f"{name} failed at {size}:\n{m.stderr[-3000:]}")
        geoai = measured["geoai-py semantic_segmentation (fp32)"]
        for name, m in measured.items():
            rows.append(
                {
                    "scene": f"{size}^2 x4 uint8",
                    "tool": name,
                    "wall s": m.seconds,
                    "Mpx/s": mpx / m.seconds,
                    "peak RSS MB": m.peak_rss_mb,
                    "speed-up vs geoai": geoai.seconds / m.seconds,
                }
            )
    print(table(rows))
    print("\ngeoai writes a class raster only; geoseg also writes the GeoPackage of polygons.")


if __name__ == "__main__":
    main()
