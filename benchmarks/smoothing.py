"""Cost of each smoothing mode relative to the model's time (issue #4).

The 4096 x 4096 4-band scene mirror-tiled from the real Sentinel-2 scene, a U-Net ResNet-34
(tile 512, overlap 64, the benchmark model of common.py, trained on NDWI pseudo-labels of
the scene), class water. For each mode `geoseg run --smooth MODE --report` runs end to end on
the default local cluster; the report's per-stage seconds (summed over blocks) give the model
time and the smoothing time of the same run. Goals: CRF <= 1.0x the model's time, morphology
<= 0.1x.

Usage: python benchmarks/smoothing.py [--size 4096] [--workdir DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mirror_scene, parse_args, run_geoseg, table, unet_r34

GOALS = {"none": None, "morph": 0.1, "crf": 1.0, "crf+morph": 1.1}


def main() -> None:
    args = parse_args(__doc__, size={"type": int, "default": 4096})
    scene = mirror_scene(args.workdir / f"s2_mirror_{args.size}.tif", args.size)
    model = unet_r34(args.workdir / "unet_r34.safetensors")
    rows = []
    for mode, goal in GOALS.items():
        report = args.workdir / f"smooth_{mode}.json"
        out = args.workdir / f"smooth_{mode.replace('+', '_')}.gpkg"
        m = run_geoseg(scene, model, out, "--smooth", mode, "--report", str(report))
        stages = json.loads(report.read_text())["stage_seconds"]
        ratio = stages["smooth"] / stages["predict"]
        rows.append(
            {
                "smoothing": mode,
                "wall s": m.seconds,
                "model s": stages["predict"],
                "smooth s": stages["smooth"],
                "smooth / model": ratio,
                "goal": "-" if goal is None else f"<= {goal}",
                "met": "-" if goal is None else ("yes" if ratio <= goal else "no"),
            }
        )
    print(f"scene {args.size}^2 x4 uint8 (mirror-tiled Sentinel-2), U-Net ResNet-34, tile 512/64\n")
    print(table(rows))


if __name__ == "__main__":
    main()
