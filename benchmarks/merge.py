"""Seam merging of a scene-spanning object: time and memory of the join (issue #5).

The water of the Sentinel-2 scene mirror-tiled to SIZE^2 (NDWI > 0.35: the mask the
benchmark U-Net produces, within a percent, without running it) is one object covering
65 % of the scene. Blocks of 2048^2 are polygonized and fed to geoseg's SeamMerger in row
order, as the client does; the object is joined when its last block closes. Each join
method runs in a fresh process:

- ``lattice``: geoseg's edge cancellation on the pixel lattice (geoseg.vectorize.lattice);
- ``coverage``: the previous method, GEOS's coverage union of the border-noded pieces;
- ``union_all``: GEOS's general overlay union, what most tools do.

Reported: seconds inside joins, the largest join's peak memory above what the process held
when it started (VmHWM reset through /proc/self/clear_refs), and the process's peak RSS.

Usage: python benchmarks/merge.py [--size 16384] [--methods lattice,coverage,union_all]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mirror_scene, parse_args, table

BLOCK = 2048


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _join_with(method: str):  # type: ignore[no-untyped-def]
    import shapely

    from geoseg.vectorize import lattice

    def geos(pieces: list[lattice.Rings], *, xs: np.ndarray, ys: np.ndarray):  # type: ignore[no-untyped-def]
        geoms = list(lattice.unpack(pieces))  # the GEOS methods held GEOS pieces
        pieces.clear()
        if method == "union_all":
            joined = shapely.union_all(np.asarray(geoms, dtype=object))
            geoms.clear()
            return lattice.drop_collinear(joined)
        return lattice.union_noded(geoms, xs=xs, ys=ys)

    return lattice.join_pieces if method == "lattice" else geos


def child(scene: Path, method: str) -> dict[str, float]:
    """Merge the scene's water in this process with ``method``; figures as a dict."""
    import rasterio
    import shapely
    from rasterio.windows import Window

    import geoseg.vectorize.merge as merge
    from geoseg.tiling.grid import TilingSpec, plan_blocks
    from geoseg.vectorize.polygons import polygonize_block

    join = _join_with(method)
    stats = {"join_s": 0.0, "join_peak_mb": 0.0, "vertices": 0.0}

    def timed(pieces, *, xs, ys):  # type: ignore[no-untyped-def]
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
        t = time.perf_counter()
        out = join(pieces, xs=xs, ys=ys)
        stats["join_s"] += time.perf_counter() - t
        stats["join_peak_mb"] = max(stats["join_peak_mb"], _status("VmHWM") - before)
        stats["vertices"] = max(stats["vertices"], float(shapely.get_num_coordinates(out)))
        return out

    merge.join_pieces = timed
    with rasterio.open(scene) as ds:
        blocks = plan_blocks(
            ds.height, ds.width, spec=TilingSpec(tile=512, overlap=64, block=BLOCK)
        )
        merger = merge.SeamMerger.for_blocks(blocks)
        t0 = time.perf_counter()
        for b in blocks:
            c = b.core
            win = Window(c.col_off, c.row_off, c.width, c.height)
            g, n = (ds.read(i, window=win).astype(np.float32) for i in (2, 4))
            mask = (g - n) > 0.35 * np.maximum(g + n, 1)
            polys = polygonize_block(
                mask,
                confidence=mask.astype(np.float32),
                row_off=c.row_off,
                col_off=c.col_off,
                open_sides=b.open_sides,
            )
            merger.add(
                "water", block=b.index, row=b.row, col=b.col, polygons=polys.select(polys.seam)
            )
            merger.block_done(b.row, b.col)
            merger.pop_finished()
        merger.finish("water")
    stats["total_s"] = time.perf_counter() - t0
    return stats


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(Path(sys.argv[2]), sys.argv[3])))
        return
    args = parse_args(
        __doc__,
        size={"type": int, "default": 16384},
        methods={"default": "lattice,coverage,union_all"},
    )
    scene = mirror_scene(args.workdir / f"s2_mirror_{args.size}.tif", args.size)
    rows = []
    base = None
    for method in args.methods.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(scene), method],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
        s = json.loads(out.stdout)
        base = base or s
        rows.append(
            {
                "method": method,
                "largest object vertices": int(s["vertices"]),
                "join s": s["join_s"],
                "join s / lattice": s["join_s"] / base["join_s"],
                "largest join peak MB": s["join_peak_mb"],
                "peak MB / lattice": s["join_peak_mb"] / base["join_peak_mb"],
                "polygonize+merge s": s["total_s"],
            }
        )
    print(f"scene {args.size}^2, blocks {BLOCK}^2, water = NDWI > 0.35\n")
    print(table(rows))


if __name__ == "__main__":
    main()
