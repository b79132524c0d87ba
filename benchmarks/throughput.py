"""Throughput of `geoseg run` against the bare model on the same tiles (issue #2).

A 4096 x 4096 4-band uint8 scene mirror-tiled from the real Sentinel-2 scene in
../shared/data, a U-Net ResNet-34 (tile 512, overlap 64). Measured in the same run:

- geoseg end to end (the CLI on a local Dask cluster, class raster + GeoPackage): wall time,
  Mpx/s, peak RSS summed over the client and worker processes;
- the bare model: the same tiles the pipeline predicts (same tile plan, batch size, precision,
  torch threads and concurrent forward passes), forward passes only, no reading, blending or
  writing.

Usage: python benchmarks/throughput.py [--size 4096] [--precision auto] [--workdir DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mirror_scene, parse_args, run_geoseg, table, unet_r34


def bare_model(scene: Path, model: Path, *, precision: str, block: int) -> tuple[float, int]:
    """Seconds to run the model over exactly the pipeline's tiles; and the tile count.

    Measured in a fresh process, as geoseg runs in one: the benchmark process itself has
    trained or loaded models and mirrored scenes, which slowed the same forward passes by up
    to 20 % when measured in it.
    """
    out = subprocess.run(
        [sys.executable, __file__, "--bare", str(scene), str(model), precision, str(block)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"bare model measurement failed:\n{out.stderr[-3000:]}")
    body = json.loads(out.stdout.strip().splitlines()[-1])
    return float(body["seconds"]), int(body["tiles"])


def plan_tiles(height: int, width: int, *, spec: Any) -> int:
    """Tiles the pipeline predicts for a scene: every tile of every block's read window
    (the part of a window beyond the scene is reflect-padded and predicted too)."""
    from geoseg.tiling.grid import plan_blocks, tile_origins

    n_tiles = 0
    for b in plan_blocks(height, width, spec=spec):
        rows = tile_origins(b.read.height, tile=spec.tile, stride=spec.stride)
        cols = tile_origins(b.read.width, tile=spec.tile, stride=spec.stride)
        n_tiles += len(rows) * len(cols)
    return n_tiles


def _bare_model(scene: Path, model: Path, *, precision: str, block: int) -> tuple[float, int]:
    import threading

    import torch

    from geoseg.config import InferenceOptions
    from geoseg.models.predictor import load_segmenter
    from geoseg.scheduler import cpu_cluster_shape
    from geoseg.tiling.grid import TilingSpec
    from geoseg.tiling.io import read_scene_info

    info = read_scene_info(scene)
    # One worker of the default local cluster on this machine: its torch threads split
    # between as many single-threaded forward passes as its Dask threads can feed.
    shape = cpu_cluster_shape(os.cpu_count() or 1)
    torch_threads, slots = shape.torch_threads, shape.model_slots
    seg = load_segmenter(
        model,
        options=InferenceOptions(
            precision=precision, threads=torch_threads, concurrent_batches=slots
        ),
    )
    spec = TilingSpec(tile=seg.tile, overlap=seg.overlap, block=block)  # type: ignore[attr-defined]
    n_tiles = plan_tiles(info.height, info.width, spec=spec)
    rng = np.random.default_rng(0)
    bs = seg.batch_size  # type: ignore[attr-defined]
    batch = rng.standard_normal((bs, 4, spec.tile, spec.tile)).astype(np.float32)
    seg.forward(batch)  # type: ignore[attr-defined]  # warm-up
    per_pass = max(1, torch_threads // slots)
    if torch.get_num_threads() != per_pass:
        sys.exit(f"expected {per_pass} torch threads per pass, got {torch.get_num_threads()}")
    batches = [min(bs, n_tiles - i) for i in range(0, n_tiles, bs)]

    def feed(mine: list[int]) -> None:
        for n in mine:
            seg.forward(batch[:n])  # type: ignore[attr-defined]

    feeders = [threading.Thread(target=feed, args=(batches[i::slots],)) for i in range(slots)]
    start = time.perf_counter()
    for t in feeders:
        t.start()
    for t in feeders:
        t.join()
    return time.perf_counter() - start, n_tiles


def main() -> None:
    args = parse_args(
        __doc__,
        size={"type": int, "default": 4096},
        precision={"default": "auto"},
        block={"type": int, "default": 2048},
    )
    scene = mirror_scene(args.workdir / f"s2_mirror_{args.size}.tif", args.size)
    model = unet_r34(args.workdir / "unet_r34.safetensors")
    common = ("--block", str(args.block), "--precision", args.precision)
    runs = {
        "geoseg run, model path (--smooth none)": ("--smooth", "none", *common),
        "geoseg run, defaults (water: crf+morph)": common,
    }
    measured = {
        name: run_geoseg(scene, model, args.workdir / f"out_{args.size}_{i}.gpkg", *extra)
        for i, (name, extra) in enumerate(runs.items())
    }
    bare_s, tiles = bare_model(scene, model, precision=args.precision, block=args.block)
    mpx = args.size * args.size / 1e6
    rows = [
        {
            "what": name,
            "tiles": tiles,
            "wall s": m.seconds,
            "Mpx/s": mpx / m.seconds,
            "peak RSS MB (all procs)": m.peak_rss_mb,
            "vs bare model": bare_s / m.seconds,
        }
        for name, m in measured.items()
    ]
    rows.append(
        {
            "what": "bare model, same tiles (forward only)",
            "tiles": tiles,
            "wall s": bare_s,
            "Mpx/s": mpx / bare_s,
            "peak RSS MB (all procs)": float("nan"),
            "vs bare model": 1.0,
        }
    )
    print(
        f"scene {args.size}^2 x4 uint8 mirror-tiled from the real Sentinel-2 scene; "
        f"U-Net ResNet-34, tile 512, overlap 64, precision {args.precision}\n"
    )
    print(table(rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        _scene, _model, _precision, _block = sys.argv[2:6]
        secs, n = _bare_model(Path(_scene), Path(_model), precision=_precision, block=int(_block))
        print(json.dumps({"seconds": secs, "tiles": n}))
    else:
        main()
