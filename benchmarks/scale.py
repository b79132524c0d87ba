"""Scale: throughput and peak memory against scene size, and the model's share (issue #5).

Scenes of 4096^2, 16384^2 and 32768^2 pixels (4 bands uint8) mirror-tiled from the real
Sentinel-2 scene; U-Net ResNet-34, tile 512, overlap 64; `geoseg run` end to end on the
default local cluster with `--smooth none --no-centerlines` (the model path; smoothing costs
are measured by smoothing.py). Peak RSS is summed over the client and every worker process.
The bare model's rate is measured in the same run over each scene's own tile plan, in a fresh
process just before that scene's run (forward passes only, same batch size, precision and
threads).

Goals: RSS <= 2 GB and flat; time per Mpx within 10 % across sizes; end-to-end / bare >= 0.85.
"pipeline s/tile" is the forward passes' own time per tile inside the run and "model busy" the
share of the run's wall time they took (from the run's --report): e2e / bare is about
(bare s/tile / pipeline s/tile) x model busy, which tells a model slowed down by the work
sharing its cores from a model left waiting.

Usage: python benchmarks/scale.py [--sizes 4096,16384,32768] [--workdir DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mirror_scene, parse_args, run_geoseg, table, unet_r34
from throughput import bare_model


def main() -> None:
    args = parse_args(
        __doc__,
        sizes={"default": "4096,16384,32768"},
        precision={"default": "auto"},
    )
    model = unet_r34(args.workdir / "unet_r34.safetensors")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    base = None
    for size in sizes:
        scene = mirror_scene(args.workdir / f"s2_mirror_{size}.tif", size)
        # The bare model over exactly this scene's tiles, just before its run: a sustained
        # run is slower per tile than a short burst on this machine (0.103 s/tile over the
        # 1444 tiles of 16384^2 against 0.098 over the 100 of 4096^2).
        bare_s, tiles = bare_model(scene, model, precision=args.precision, block=2048)
        report = args.workdir / f"scale_{size}.json"
        m = run_geoseg(
            scene,
            model,
            args.workdir / f"scale_{size}.gpkg",
            "--smooth",
            "none",
            "--no-centerlines",
            "--precision",
            args.precision,
            "--report",
            str(report),
        )
        body = json.loads(report.read_text())
        mpx = size * size / 1e6
        bare_rate = mpx / bare_s
        s_per_mpx = m.seconds / mpx
        base = base or s_per_mpx
        rows.append(
            {
                "scene": f"{size}^2",
                "Mpx": mpx,
                "blocks": body["blocks"],
                "tiles": tiles,
                "wall s": m.seconds,
                "Mpx/s": mpx / m.seconds,
                "s/Mpx vs smallest": s_per_mpx / base,
                "peak RSS MB (all procs)": m.peak_rss_mb,
                "bare Mpx/s": bare_rate,
                "e2e / bare model": (mpx / m.seconds) / bare_rate,
                # The split of that ratio: the model's own pace in the pipeline (forward
                # passes slowed by the other work sharing the cores) and its idle share.
                "bare s/tile": bare_s / tiles,
                "pipeline s/tile": body["stage_seconds"]["predict"] / tiles,
                "model busy": body["model_busy"],
                "device": ",".join(body["devices"]) + "/" + ",".join(body["precisions"]),
            }
        )
    print(table(rows))


if __name__ == "__main__":
    main()
