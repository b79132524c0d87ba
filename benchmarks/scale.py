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

Small scenes in a batch (``--batch K``, default 5): K and then 2K copies of the smallest scene
through one `geoseg batch run` each (one cluster, the model loaded once per worker). The
difference of the two runs over K is the marginal cost of one more scene, start-up excluded:
its time per Mpx is compared with the largest one-shot scene's and with the bare model's.

Usage: python benchmarks/scale.py [--sizes 4096,16384,32768] [--batch K] [--workdir DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    geoseg_cmd,
    mirror_scene,
    parse_args,
    run_geoseg,
    run_measured,
    table,
    unet_r34,
)
from throughput import bare_model


def main() -> None:
    args = parse_args(
        __doc__,
        sizes={"default": "4096,16384,32768"},
        precision={"default": "auto"},
        batch={"type": int, "default": 5, "help": "copies of the smallest scene (0: skip)"},
    )
    model = unet_r34(args.workdir / "unet_r34.safetensors")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    base = None
    bare_rates = {}
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
        bare_rates[size] = bare_rate
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
    if args.batch > 0:
        small, large = min(sizes), max(sizes)
        large_s_per_mpx = next(r["wall s"] / r["Mpx"] for r in rows if r["scene"] == f"{large}^2")
        scene = args.workdir / f"s2_mirror_{small}.tif"
        print()
        print(
            table(
                batch_rows(
                    scene,
                    model,
                    args.workdir / "batch_scale",
                    copies=args.batch,
                    precision=args.precision,
                    mpx=small * small / 1e6,
                    bare_rate=bare_rates[small],
                    reference=(f"{large}^2", large_s_per_mpx),
                )
            )
        )


def batch_rows(
    scene: Path,
    model: Path,
    folder: Path,
    *,
    copies: int,
    precision: str,
    mpx: float,
    bare_rate: float,
    reference: tuple[str, float],
) -> list[dict[str, object]]:
    """``copies`` and ``2 * copies`` copies of ``scene`` in one `geoseg batch run` each, and
    the marginal scene (their difference over ``copies``)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "scenes").mkdir(parents=True)
    runs = []
    for n in (copies, 2 * copies):
        names = []
        for i in range(n):
            link = folder / "scenes" / f"s{i:03d}.tif"
            if not link.exists():
                try:
                    os.link(scene, link)  # distinct paths: the batch sees distinct scenes
                except OSError:
                    shutil.copyfile(scene, link)
            names.append(str(link))
        workflow = folder / f"batch_{n}.yaml"
        workflow.write_text(
            json.dumps(  # JSON is YAML
                {
                    "version": 1,
                    "inputs": {"files": names},
                    "classes": ["water"],
                    "models": {"water": str(model)},
                    "smoothing": {"method": "none"},
                    "inference": {"precision": precision},
                    "output": {"folder": str(folder / f"out_{n}")},
                }
            )
        )
        shutil.rmtree(folder / f"out_{n}", ignore_errors=True)
        m = run_measured(geoseg_cmd("batch", "run", str(workflow), "-q"))
        if m.returncode != 0:
            sys.exit(f"geoseg batch failed:\n{m.stderr[-3000:]}")
        runs.append((n, m))
    (n1, m1), (n2, m2) = runs
    ref_name, ref_s_per_mpx = reference
    rows: list[dict[str, object]] = []
    for label, n, seconds, rss in (
        (f"{n1} scenes, one batch", n1, m1.seconds, m1.peak_rss_mb),
        (f"{n2} scenes, one batch", n2, m2.seconds, m2.peak_rss_mb),
        ("one more scene (marginal)", 1, (m2.seconds - m1.seconds) / (n2 - n1), None),
    ):
        rate = n * mpx / seconds
        rows.append(
            {
                "run": label,
                "wall s": seconds,
                "Mpx/s": rate,
                f"s/Mpx vs {ref_name} one-shot": (seconds / (n * mpx)) / ref_s_per_mpx,
                "e2e / bare model": rate / bare_rate,
                "peak RSS MB (all procs)": "" if rss is None else rss,
            }
        )
    return rows


if __name__ == "__main__":
    main()
