"""Tiles on one scene-anchored grid (issue #21): model work, wall time and layout invariance
against the per-block tiling it replaced, measured in the same run.

Tile counts per Mpx come from the plans, without running a network (so the 16384 x 16384
case costs nothing): *per-block* is what the baseline predicted (tiles laid over each block's
read window, halo and reflect-padded margin included); *anchored, each block its own* is what
blocks would predict if each predicted every tile of the scene's grid that meets its read
window (before tiles were shared); *anchored, shared* is the grid's own tile count: each
tile predicted once by the block that owns it, as a run does, and what whole-image inference
predicts. Two halos: the tile overlap alone (``--smooth none --no-centerlines``) and that of a
default roads run (morphology and centrelines).

Wall time and invariance: ``geoseg run`` of the shipped roads model (U-Net ResNet-18, tile
512, overlap 64) on a 4096 x 4096 scene mirror-tiled from samples/naip_rochester_mn.tif, at
``--block 1024`` and ``--block 2048``, with this tree and with the baseline commit (a git
worktree of ``--baseline``, run with its package first on PYTHONPATH); and the share of
class-raster pixels and the polygon counts that differ between the two block sizes.

Usage: python benchmarks/anchored_tiles.py --baseline REV [--candidate REV ...] [--size 4096]
[--workdir DIR]  (the timed runs: the baseline, each candidate commit, then this tree)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyogrio
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mirror_scene, table

from geoseg.config import RunConfig
from geoseg.run.plan import plan_run
from geoseg.tiling.grid import PixelWindow, TileGrid, TilingSpec, plan_blocks, tile_origins

REPO = Path(__file__).resolve().parents[1]
NAIP = REPO / "samples" / "naip_rochester_mn.tif"


def tile_counts(size: int, *, spec: TilingSpec, tile: int, overlap: int) -> dict[str, int]:
    """Tiles predicted for a ``size x size`` scene by each layout (see the module docs)."""
    grid = TileGrid(height=size, width=size, tile=tile, stride=tile - overlap, margin=overlap)
    scene = PixelWindow(row_off=0, col_off=0, height=size, width=size)
    per_block = anchored = 0
    for b in plan_blocks(size, size, spec=spec):
        rows = tile_origins(b.read.height, tile=tile, stride=tile - overlap)
        cols = tile_origins(b.read.width, tile=tile, stride=tile - overlap)
        per_block += len(rows) * len(cols)
        inside = b.read.intersection(scene)
        assert inside is not None
        anchored += len(grid.covering(inside))
    return {"per_block": per_block, "anchored": anchored, "scene_grid": len(grid.covering(scene))}


def run(tree: Path | None, scene: Path, out: Path, block: int) -> tuple[float, np.ndarray, int]:
    """Wall seconds, class raster and polygon count of one ``geoseg run`` of ``tree``'s code
    (``None``: this tree)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, "-m", "geoseg.cli", "run", str(scene), "--classes", "roads"]
    cmd += ["-o", str(out), "--overwrite", "-q", "--block", str(block)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree or REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"geoseg failed ({tree or 'this tree'}, block {block}):\n{done.stderr[-3000:]}")
    raster = out.with_name(f"{out.stem}_classes.tif")
    with rasterio.open(raster) as src:
        classes = src.read(1)
    return seconds, classes, len(pyogrio.read_dataframe(out, layer="roads"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", required=True, help="commit with per-block tiling")
    ap.add_argument(
        "--candidate", action="append", default=[], help="a commit to compare too (repeatable)"
    )
    ap.add_argument("--size", type=int, default=4096, help="side of the timed scene")
    ap.add_argument("--counts-only", action="store_true", help="tile counts, no timed runs")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene = mirror_scene(
        args.workdir / f"naip_{args.size}.tif", args.size, src=NAIP, bands=(1, 2, 3)
    )

    rows = []
    for halo_name, extra in (("overlap", {"smooth": "none", "centerlines": False}), ("roads", {})):
        for block in (512, 1024, 2048):
            plan = plan_run(scene, RunConfig(classes=("roads",), block=block, **extra))  # type: ignore[arg-type]
            use = plan.models[0]
            for size in (4096, 16384):
                n = tile_counts(size, spec=plan.tiling, tile=use.tile, overlap=use.overlap)
                mpx = size * size / 1e6
                rows.append(
                    {
                        "scene": f"{size}^2",
                        "halo": f"{halo_name} ({plan.tiling.halo_px} px)",
                        "block": block,
                        "per-block tiles/Mpx": n["per_block"] / mpx,
                        "anchored, each block its own": n["anchored"] / mpx,
                        "anchored, shared (once)": n["scene_grid"] / mpx,
                        "shared / per-block": n["scene_grid"] / n["per_block"],
                    }
                )
    print(table(rows), flush=True)
    if args.counts_only:
        return

    trees: list[tuple[str, Path | None]] = []
    for rev in (args.baseline, *args.candidate):
        worktree = Path(tempfile.mkdtemp(prefix="geoseg-bench-")) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), rev],
            check=True,
            capture_output=True,
        )
        trees.append((rev, worktree))
    trees.append(("this tree", None))
    try:
        timed = []
        for name, tree in trees:
            results = {
                b: run(tree, scene, args.workdir / f"{name[:8].replace(' ', '_')}_{b}.gpkg", b)
                for b in (1024, 2048)
            }
            (s1, c1, p1), (s2, c2, p2) = results[1024], results[2048]
            timed.append(
                {
                    "code": name,
                    "wall s, block 1024": s1,
                    "wall s, block 2048": s2,
                    "pixels differing 1024 vs 2048 %": 100 * float((c1 != c2).mean()),
                    "polygons 1024 / 2048": f"{p1} / {p2}",
                }
            )
            print(timed[-1], flush=True)
        print(f"\n{args.size}^2 NAIP mirror, roads model, this machine:\n")
        print(table(timed))
    finally:
        for _, tree in trees:
            if tree is not None:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )


if __name__ == "__main__":
    main()
