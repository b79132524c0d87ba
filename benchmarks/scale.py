"""Scale: throughput and peak memory against scene size, and the model's share (issue #5).

Scenes of 4096^2, 16384^2 and 32768^2 pixels (4 bands uint8) mirror-tiled from the real
Sentinel-2 scene; U-Net ResNet-34, tile 512, overlap 64; `geoseg run` end to end on the
default local cluster with `--smooth none --no-centerlines` (the model path; smoothing costs
are measured by smoothing.py). Peak RSS is summed over the client and every worker process.
The bare model's rate is measured in the same run on the pipeline's own tile plan (forward
passes only, same batch size, precision and threads).

Goals: RSS <= 2 GB and flat; time per Mpx within 10 % across sizes; end-to-end / bare >= 0.85.

Usage: python benchmarks/scale.py [--sizes 4096,16384,32768] [--workdir DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mirror_scene, parse_args, run_geoseg, table, unet_r34
from throughput import bare_model, plan_tiles

from geoseg.models.card import read_card
from geoseg.tiling.grid import TilingSpec


def main() -> None:
    args = parse_args(
        __doc__,
        sizes={"default": "4096,16384,32768"},
        precision={"default": "auto"},
    )
    model = unet_r34(args.workdir / "unet_r34.safetensors")
    sizes = [int(s) for s in args.sizes.split(",")]
    small = mirror_scene(args.workdir / f"s2_mirror_{sizes[0]}.tif", sizes[0])
    bare_s, bare_tiles = bare_model(small, model, precision=args.precision, block=2048)
    s_per_tile = bare_s / bare_tiles
    card = read_card(model)
    spec = TilingSpec(tile=card.tile_size, overlap=card.overlap, block=2048)
    rows = []
    base = None
    for size in sizes:
        scene = mirror_scene(args.workdir / f"s2_mirror_{size}.tif", size)
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
        tiles = plan_tiles(size, size, spec=spec)
        # The bare model on this scene's own tile plan: a bigger scene has more halo tiles
        # per pixel (its blocks have neighbours on every side).
        bare_rate = mpx / (tiles * s_per_tile)
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
                "device": ",".join(body["devices"]) + "/" + ",".join(body["precisions"]),
            }
        )
    print(
        f"bare model: {bare_tiles} tiles of the {sizes[0]}^2 plan in {bare_s:.1f} s "
        f"= {s_per_tile:.4f} s/tile; each scene's bare rate is over its own tile plan\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
