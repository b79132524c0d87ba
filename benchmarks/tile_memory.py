"""Memory held by shared model tiles: who owns a tile, and how long its probabilities live.

A network's tiles lie on one grid anchored to the scene, each predicted once by an owner block
and blended by every block whose read window meets it. Two schedules, both in raster order:

- *centre owner* (the baseline): a tile is owned by the block whose core holds its centre, and
  the owner's whole prediction is kept until every block that blends any of it is done. The
  next row's owners are predicted a row early, for the halo of the row above.
- *first needer* (this tree): a tile is owned by the first block, in raster order, that needs
  it; the owner's prediction is cut at once into one selection per block that blends it (the
  same arrays), so a tile lives only until the last block needing it is done.

Part 1 replays both schedules block by block on the plans of square scenes, without running
a network: the largest number of distinct tiles held, and what it weighs in float32 for the
roads model (2 classes, tile 512, overlap 64, the halo of a default roads run). Part 2 runs
``geoseg run --classes roads`` on a NAIP mirror of ``--size`` with the baseline commit (a git
worktree of ``--baseline``, its package first on PYTHONPATH) and with this tree, and samples
the peak RSS summed over the command and its workers.

Usage: python benchmarks/tile_memory.py --baseline REV [--size 16384] [--block 2048]
[--counts-only] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geoseg_cmd, mirror_scene, run_measured, table

from geoseg.config import RunConfig
from geoseg.run.plan import RunPlan, plan_run
from geoseg.run.tiles import needed_window, tile_grid, tile_owners, tile_sources
from geoseg.tiling.grid import core_size, plan_blocks

REPO = Path(__file__).resolve().parents[1]
NAIP = REPO / "samples" / "naip_rochester_mn.tif"
Origin = tuple[int, int]


def resized(plan: RunPlan, size: int) -> RunPlan:
    """``plan`` for a ``size x size`` scene of the same kind (no file is read)."""
    scene = replace(plan.scene, height=size, width=size)
    return replace(plan, scene=scene, blocks=tuple(plan_blocks(size, size, spec=plan.tiling)))


def needs(plan: RunPlan) -> dict[int, set[Origin]]:
    """Per block index, the tiles of the (only) model that the block blends."""
    use = plan.models[0]
    grid = tile_grid(use, plan)
    out = {}
    for b in plan.blocks:
        window = needed_window(use, plan, b)
        out[b.index] = set(grid.covering(window)) if window is not None else set()
    return out


def held_centre_owner(plan: RunPlan, need: dict[int, set[Origin]]) -> int:
    """Most distinct tiles held by the baseline schedule (see the module docs)."""
    use = plan.models[0]
    core = core_size(plan.tiling)
    columns = math.ceil(plan.scene.width / core)

    def owner(origin: Origin) -> int:
        r, c = origin[0] + use.tile / 2, origin[1] + use.tile / 2
        row = min(max(math.floor(r), 0), plan.scene.height - 1) // core
        col = min(max(math.floor(c), 0), plan.scene.width - 1) // core
        return row * columns + col

    owned: dict[int, set[Origin]] = {}
    waiting: dict[int, set[int]] = {}
    for index, tiles in need.items():
        for origin in tiles:
            o = owner(origin)
            owned.setdefault(o, set()).add(origin)
            waiting.setdefault(o, set()).add(index)
    live: set[int] = set()
    most = 0
    for index in sorted(need):
        live |= {owner(o) for o in need[index]}
        most = max(most, sum(len(owned[o]) for o in live))
        for o in list(live):
            waiting[o].discard(index)
            if not waiting[o]:
                live.discard(o)
    return most


def held_first_needer(plan: RunPlan, need: dict[int, set[Origin]]) -> int:
    """Most distinct tiles held by this tree's schedule, with geoseg's own ownership."""
    owners = tile_owners(plan)
    users = Counter(origin for tiles in need.values() for origin in tiles)
    held: dict[Origin, int] = {}  # tile -> blocks still to blend it
    most = 0
    for b in sorted(plan.blocks, key=lambda b: b.index):
        for owner, per_model in tile_sources(plan, b, owners).items():
            if owner == b.index:  # predicted now: one selection per block that needs it
                for origin in per_model[0]:
                    held[origin] = users[origin]
        most = max(most, len(held))
        for origin in need[b.index]:
            held[origin] -= 1
            if not held[origin]:
                del held[origin]
    return most


def measured(tree: Path | None, scene: Path, out: Path, block: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, all processes) of one roads run of ``tree``'s code."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = geoseg_cmd("run", str(scene), "--classes", "roads", "-o", str(out), "--overwrite")
    cmd += ["-q", "--block", str(block)]
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        m = run_measured(cmd)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if m.returncode != 0:
        sys.exit(f"geoseg failed ({tree or 'this tree'}):\n{m.stderr[-3000:]}")
    return m.seconds, m.peak_rss_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", help="commit with the centre-owner schedule")
    ap.add_argument("--size", type=int, default=16384, help="side of the measured scene")
    ap.add_argument("--block", type=int, default=2048, help="--block of the measured runs")
    ap.add_argument("--counts-only", action="store_true", help="part 1 only")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    small = mirror_scene(args.workdir / "naip_4096.tif", 4096, src=NAIP, bands=(1, 2, 3))

    rows = []
    for block in (1024, 2048):
        base = plan_run(small, RunConfig(classes=("roads",), block=block))
        use = base.models[0]
        tile_mb = len(use.card.classes) * use.tile * use.tile * 4 / 2**20
        for size in (8192, 16384, 32768, 40960):
            plan = resized(base, size)
            need = needs(plan)
            old, new = held_centre_owner(plan, need), held_first_needer(plan, need)
            rows.append(
                {
                    "scene": f"{size}^2",
                    "block": block,
                    "halo px": plan.tiling.halo_px,
                    "tiles held, centre owner": old,
                    "first needer": new,
                    "MB, centre owner": old * tile_mb,
                    "MB, first needer": new * tile_mb,
                    "first / centre": new / old,
                }
            )
    print("Tiles held at most (roads model, float32), replayed from the plans:\n")
    print(table(rows), flush=True)
    if args.counts_only or not args.baseline:
        return

    scene = mirror_scene(
        args.workdir / f"naip_{args.size}.tif", args.size, src=NAIP, bands=(1, 2, 3)
    )
    worktree = Path(tempfile.mkdtemp(prefix="geoseg-bench-")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.baseline],
        check=True,
        capture_output=True,
    )
    try:
        timed = []
        for name, tree in ((args.baseline, worktree), ("this tree", None)):
            out = args.workdir / f"mem_{name[:8].replace(' ', '_')}.gpkg"
            seconds, peak = measured(tree, scene, out, args.block)
            timed.append({"code": name, "wall s": seconds, "peak RSS MB": peak})
            print(timed[-1], flush=True)
        print(f"\n{args.size}^2 NAIP mirror, roads model, --block {args.block}, this machine:\n")
        print(table(timed))
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False
        )


if __name__ == "__main__":
    main()
