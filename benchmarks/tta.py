"""Test-time augmentation: what --tta flips / d4 buy in accuracy, and what they cost.

For each model and its held-out data in ../shared/data (the roads models on Massachusetts
Roads tile 10678810_15, the Landsat 7 water model on its held-out region, the crops model on
the naip_fields test images), the scene is run through the real pipeline (in-process, each
class's default smoothing) with --tta none, flips and d4, and scored against the labels:
IoU, and for roads the relaxed F1 (3 px slack). Cost: the model's seconds per Mpx (the
run's "predict" stage) and the wall time, against --tta none in the same run.

    python benchmarks/tta.py [--cases roads,water,crops] [--modes none,flips,d4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features

from geoseg.config import run_config
from geoseg.run.pipeline import run_scene
from geoseg.training.objects import relaxed_counts

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GEOSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = REPO / "geoseg" / "models" / "weights"


@dataclass(frozen=True)
class Piece:
    """One scene (or window of it) with its labels: (truth, scored) masks on its grid."""

    scene: Path
    labels: Callable[[], tuple[np.ndarray, np.ndarray]]
    window: tuple[int, int, int, int] | None = None  # row, col, height, width


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    cls: str
    pieces: tuple[Piece, ...]
    relaxed: bool = False
    # Every class the model gives is asked for (as geoseg evaluate does and the cards record);
    # the scored class is the first.
    classes: str = ""


def _roads_labels() -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(DATA / "mass_roads" / "10678810_15_label.tif") as src:
        lab = src.read(1)
    return lab == 1, lab != 255


def _water_labels() -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(DATA / "landsat7_nc" / "strata_landcover.tif") as src:
        lab = src.read(1)
        nodata = src.nodata
    return lab == 6, lab != nodata


def _fields(image: Path) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def labels() -> tuple[np.ndarray, np.ndarray]:
        import pyogrio

        fields = pyogrio.read_dataframe(str(image).replace("_image.tif", "_fields.gpkg"))
        with rasterio.open(image) as src:
            shape, transform = (src.height, src.width), src.transform
        truth = rasterio.features.rasterize(
            ((g, 1) for g in fields.geometry), out_shape=shape, transform=transform
        ).astype(bool)
        return truth, np.ones(shape, dtype=bool)

    return labels


def _cases() -> Iterator[Case]:
    roads = DATA / "mass_roads" / "10678810_15_image.tif"
    for name in ("roads-unet-r18", "roads-unet-r18-v2"):
        if (WEIGHTS / f"{name}.safetensors").exists():
            yield Case(
                name=f"roads {name}",
                model=WEIGHTS / f"{name}.safetensors",
                cls="roads",
                pieces=(Piece(scene=roads, labels=_roads_labels),),
                relaxed=True,
            )
    yield Case(
        name="water landsat7-water-crops",
        model=WEIGHTS / "landsat7-water-crops.safetensors",
        cls="water",
        classes="water,crops",
        pieces=(
            Piece(
                scene=DATA / "landsat7_nc" / "lsat7_2000_stack.tif",
                labels=_water_labels,
                window=(336, 160, 107, 329),  # workflows/train/landsat.yaml held-out region
            ),
        ),
    )
    crops = WEIGHTS / "crops-fields-naip.safetensors"
    split = DATA / "naip_fields" / "split.csv"
    if crops.exists() and split.exists():
        rows = [line.split(",") for line in split.read_text().splitlines()[1:]]
        test = [row[0].strip() for row in rows if len(row) > 1 and row[1].strip() == "test"]
        images = [DATA / "naip_fields" / f"{stem}_image.tif" for stem in test]
        yield Case(
            name="crops crops-fields-naip",
            model=crops,
            cls="crops",
            pieces=tuple(Piece(scene=p, labels=_fields(p)) for p in images if p.exists()),
        )


def _score(case: Case, mode: str, folder: Path) -> dict[str, float]:
    inter = union = 0
    tp_p = n_p = tp_l = n_l = 0
    predict = wall = mpx = 0.0
    for i, piece in enumerate(case.pieces):
        config = run_config(classes=case.classes or case.cls, models=[str(case.model)], tta=mode,
                            centerlines=False, overwrite=True)  # fmt: skip
        t0 = time.perf_counter()
        summary = run_scene(piece.scene, folder / f"{mode}-{i}.gpkg", config)
        wall += time.perf_counter() - t0
        predict += summary.timings.get("predict", 0.0)
        mpx += summary.pixels / 1e6
        assert summary.raster is not None
        with rasterio.open(summary.raster) as src:
            classes = src.read(1)
        truth, scored = piece.labels()
        if piece.window is not None:
            r, c, h, w = piece.window
            sl = (slice(r, r + h), slice(c, c + w))
            classes, truth, scored = classes[sl], truth[sl], scored[sl]
        # Scored: labelled pixels with imagery (no-data pixels get no class, 255).
        scored = scored & (classes != 255)
        pred = classes == 1
        p, t = pred & scored, truth & scored
        inter += int((p & t).sum())
        union += int((p | t).sum())
        if case.relaxed:
            counts = relaxed_counts(truth, pred, scored=scored, slack=3)
            tp_p += counts.correct
            n_p += counts.predicted
            tp_l += counts.found
            n_l += counts.labelled
    out = {"iou": inter / union if union else float("nan"), "predict": predict, "wall": wall}
    out["s_per_mpx"] = predict / mpx if mpx else float("nan")
    if case.relaxed:
        precision, recall = tp_p / max(n_p, 1), tp_l / max(n_l, 1)
        out["relaxed_f1"] = 2 * precision * recall / max(precision + recall, 1e-12)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="roads,water,crops")
    parser.add_argument("--modes", default="none,flips,d4")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"no shared data at {DATA}", file=sys.stderr)
        return 1
    wanted = set(args.cases.split(","))
    modes = args.modes.split(",")
    print(f"{'case':<30} {'tta':<6} {'IoU':>6} {'relaxed F1':>10} {'model s/Mpx':>12} "
          f"{'x none':>7} {'wall s':>7}")  # fmt: skip
    for case in _cases():
        if case.name.split()[0] not in wanted:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            base = None
            for mode in modes:
                s = _score(case, mode, Path(tmp))
                base = base or s
                rf1 = f"{s['relaxed_f1']:.3f}" if "relaxed_f1" in s else "-"
                ratio = s["s_per_mpx"] / base["s_per_mpx"] if base["s_per_mpx"] else float("nan")
                row = f"{case.name:<30} {mode:<6} {s['iou']:>6.3f} {rf1:>10} "
                row += f"{s['s_per_mpx']:>12.2f} {ratio:>7.2f} {s['wall']:>7.1f}"
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
