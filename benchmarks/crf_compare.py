"""Grid CRF against dense CRF on real labelled data: IoU, boundary F1 and cost (issue #20).

The survey geoseg was designed from says a grid (4/8-connected Potts) CRF over-smooths
boundaries and a dense CRF recovers fine ones. Each case below runs through the real
``geoseg run`` pipeline in this process (no Dask: ``--scheduler sync``), once per smoothing
setting, and its class raster is scored against the labels of a held-out area:

* water: the shipped Landsat 7 model on ``landsat7_nc`` (28.5 m), water = land-cover class 6,
  inside the region ``workflows/train/landsat.yaml`` holds out (the model never trained on it
  and the last epoch is kept, so nothing was chosen on it);
* water, NDWI: ``ndwi:0.35`` (the threshold the training area chose, see the model's card)
  on the same region, and on the whole scene (no weights to hold out; 6x the labelled water);
* roads: the shipped roads model on Massachusetts Roads tile 10678810_15, held out whole
  (labels 0/1, 255 ignored; the model's epoch was chosen on this tile);
* any newer ``roads-*v2*`` model whose card holds out the same tile.

Settings: none, morph (the class's recipe), the dense CRF (``crf``) at its defaults, with the
bilateral message at full resolution, without the Gaussian (smoothness) kernel, with a weaker
bilateral kernel and with both, ``crf+morph``, the grid CRF at 4- and 8-connectivity and
Potts weights 0.5 / 1 / 2 (5 mean-field sweeps, the default), and ``gridcrf+morph`` at its
defaults. The sweeps were fixed before the run and are all reported: nothing is chosen on
these labels.

Columns: water/road IoU, precision and recall; boundary F1 (a predicted boundary pixel counts
when a labelled one lies within 2 px, and the other way round;
:func:`geoseg.training.metrics.boundary_f1`); seconds of the run's ``smooth`` stage (all of
the scene's smoothing: one block each) and the scene's megapixels. The model's seconds
(``predict`` stage, median over the case's runs) are in each case's heading.

Usage: python benchmarks/crf_compare.py [--repeats 2] [--cases water,ndwi,roads]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, table

from geoseg.config import RunConfig
from geoseg.models.card import read_card
from geoseg.models.spectral import is_spectral, spectral_card
from geoseg.run.pipeline import NODATA_CLASS, plan_run, run_scene
from geoseg.training.metrics import boundary_f1

WEIGHTS = REPO / "geoseg" / "models" / "weights"
LANDSAT = SHARED / "landsat7_nc" / "lsat7_2000_stack.tif"
STRATA = SHARED / "landsat7_nc" / "strata_landcover.tif"
ROADS_TILE = "10678810_15"
ROADS_IMAGE = SHARED / "mass_roads" / f"{ROADS_TILE}_image.tif"
ROADS_LABELS = SHARED / "mass_roads" / f"{ROADS_TILE}_label.tif"
TOLERANCE_PX = 2

# (method, smoothing overrides, what the params column says)
SETTINGS: list[tuple[str, tuple[str, ...], str]] = [
    ("none", (), "-"),
    ("morph", (), "class recipe"),
    ("crf", (), "defaults: gaussian 3, bilateral 10"),
    ("crf", ("crf.bilateral_downsample=1",), "bilateral per pixel"),
    ("crf", ("crf.gaussian_compat=0",), "gaussian 0 (appearance only)"),
    ("crf", ("crf.bilateral_compat=3",), "bilateral 3"),
    ("crf", ("crf.gaussian_compat=0", "crf.bilateral_compat=3"), "gaussian 0, bilateral 3"),
    ("crf+morph", (), "defaults + class recipe"),
    *(
        ("gridcrf", (f"gridcrf.connectivity={c}", f"gridcrf.weight={w:g}"), f"{c}-conn, w {w:g}")
        for c in (4, 8)
        for w in (0.5, 1.0, 2.0)
    ),
    ("gridcrf+morph", (), "8-conn, w 1 + class recipe"),
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    name: str
    model: str
    image: Path
    cls: str  # the class scored
    truth: Path
    truth_values: tuple[float, ...]  # label values of the class
    region: tuple[int, int, int, int] | None  # row, col, height, width; None: whole image
    where: str  # what the scored area is
    short: str  # the same, in a few words


def landsat_region() -> tuple[int, int, int, int]:
    """The held-out region of the Landsat 7 model's training file."""
    spec = yaml.safe_load((REPO / "workflows" / "train" / "landsat.yaml").read_text())
    row, col, height, width = spec["validation"]["region"]
    return int(row), int(col), int(height), int(width)


def roads_v2_models() -> list[Path]:
    """Newer roads models whose card says the same tile was held out whole."""
    found = []
    for path in sorted(WEIGHTS.glob("roads*v2*.safetensors")):
        data = (read_card(path).training or {}).get("data", [])
        held = [d for d in data if "validation" in str(d.get("use", ""))]
        if held and all(ROADS_TILE in str(d.get("image", "")) for d in held):
            found.append(path)
    return found


def cases(names: list[str]) -> list[Case]:
    region = landsat_region()
    held = f"held-out region rows/cols/height/width {region}"
    water = {"image": LANDSAT, "cls": "water", "truth": STRATA, "truth_values": (6.0,)}
    roads = {"image": ROADS_IMAGE, "cls": "roads", "truth": ROADS_LABELS, "truth_values": (1.0,)}
    out = []
    if "water" in names:
        model = str(WEIGHTS / "landsat7-water-crops.safetensors")
        out.append(
            Case(
                name="water, Landsat 7 model",
                model=model,
                region=region,
                where=held,
                short="held out",
                **water,
            )
        )
    if "ndwi" in names:
        out.append(
            Case(
                name="water, ndwi:0.35",
                model="ndwi:0.35",
                region=region,
                where=held,
                short="held out",
                **water,
            )
        )
        # No weights to hold out: the whole scene has ~6x the held-out region's labelled water
        # (its threshold was chosen on the training area: slightly optimistic there).
        out.append(
            Case(
                name="water, ndwi:0.35",
                model="ndwi:0.35",
                region=None,
                where="whole scene",
                short="scene",
                **water,
            )
        )
    if "roads" in names:
        for path in [WEIGHTS / "roads-unet-r18.safetensors", *roads_v2_models()]:
            out.append(
                Case(
                    name=f"roads, {path.stem}",
                    model=str(path),
                    region=None,
                    where="whole held-out tile",
                    short="held-out tile",
                    **roads,
                )
            )
    return out


def read_truth(case: Case, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(class mask, labelled mask) of the case's labels inside ``window``."""
    with rasterio.open(case.truth) as src:
        labels = src.read(1, window=window)
        nodata = src.nodata
    labelled = np.ones(labels.shape, dtype=bool) if nodata is None else labels != nodata
    return np.isin(labels, case.truth_values), labelled


def run_case(case: Case, *, repeats: int, workdir: Path) -> tuple[list[dict[str, object]], str]:
    card = spectral_card(case.model) if is_spectral(case.model) else read_card(case.model)
    classes = tuple(card.class_names[1:])  # as geoseg evaluate runs it: every model class
    with rasterio.open(case.image) as src:
        full = (0, 0, src.height, src.width)
    row, col, height, width = case.region or full
    window = Window(col, row, width, height)
    truth, labelled = read_truth(case, window)
    rows: list[dict[str, object]] = []
    predict: list[float] = []
    mpx = 0.0
    for method, params, shown in SETTINGS:
        config = RunConfig(
            classes=classes,
            models=(case.model,),
            smooth=method,
            smooth_params=params,
            centerlines=False,
            overwrite=True,
        )
        plan = plan_run(case.image, config)
        value = 1 + plan.classes.index(case.cls)
        smooth_s = []
        for _ in range(repeats):
            summary = run_scene(case.image, workdir / "out.gpkg", config, plan=plan)
            smooth_s.append(summary.timings.get("smooth", 0.0))
            predict.append(summary.timings.get("predict", 0.0))
            mpx = summary.pixels / 1e6
        with rasterio.open(summary.raster) as src:
            classes_raster = src.read(1, window=window)
        # Scored: labelled pixels with valid imagery (the same in every run).
        valid = labelled & (classes_raster != NODATA_CLASS)
        pred = (classes_raster == value) & valid
        t = truth & valid
        tp, n_pred, n_true = int((pred & t).sum()), int(pred.sum()), int(t.sum())
        rows.append(
            {
                "method": method,
                "params": shown,
                "IoU": tp / max(1, n_pred + n_true - tp),
                "precision": tp / n_pred if n_pred else float("nan"),
                "recall": tp / n_true if n_true else float("nan"),
                f"boundary F1 ({TOLERANCE_PX} px)": boundary_f1(
                    pred, t, tolerance_px=TOLERANCE_PX, valid=valid
                ),
                "smooth s": min(smooth_s),
                "Mpx": mpx,
            }
        )
        print(f"  {case.name}: {method} {shown} done", file=sys.stderr, flush=True)
    heading = (
        f"{case.name} ({Path(case.image).name}, {case.where}): {int(valid.sum())} scored px "
        f"(labelled, valid imagery), {n_true} {case.cls} px; model "
        f"{statistics.median(predict):.2f} s per run for {mpx:.2f} Mpx"
    )
    return rows, heading


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting (min smooth s)")
    ap.add_argument("--cases", default="water,ndwi,roads", help="water, ndwi, roads")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"shared data not found at {SHARED}")
    start = time.perf_counter()
    results: list[tuple[Case, list[dict[str, object]]]] = []
    with tempfile.TemporaryDirectory(prefix="geoseg-crf-") as tmp:
        for case in cases(args.cases.split(",")):
            rows, heading = run_case(case, repeats=args.repeats, workdir=Path(tmp))
            results.append((case, rows))
            print(f"\n{heading}\n")
            print(table(rows), flush=True)
    print("\nSummary: IoU / boundary F1 per case; smoothing seconds per scene\n")
    print(table(summary(results)))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def summary(results: list[tuple[Case, list[dict[str, object]]]]) -> list[dict[str, object]]:
    """One row per setting: each case's IoU / boundary F1, then the smoothing seconds of the
    first case on each image (the model's unaries, where there is one)."""
    bf1 = f"boundary F1 ({TOLERANCE_PX} px)"
    timed: dict[Path, tuple[Case, list[dict[str, object]]]] = {}
    for case, rows in results:
        timed.setdefault(case.image, (case, rows))
    out: list[dict[str, object]] = []
    for i, (method, _, shown) in enumerate(SETTINGS):
        row: dict[str, object] = {"method": method, "params": shown}
        for case, rows in results:
            row[f"{case.name}, {case.short}"] = f"{rows[i]['IoU']:.3f} / {rows[i][bf1]:.3f}"
        for case, rows in timed.values():
            row[f"smooth s, {case.name} ({rows[i]['Mpx']:.2f} Mpx)"] = rows[i]["smooth s"]
        out.append(row)
    return out


if __name__ == "__main__":
    main()
