"""What the ported published networks give on the real labelled and unlabelled imagery here.

WatNet-L578 (Landsat surface reflectance) against the shipped Landsat 7 model and NDWI on the
labelled Landsat 7 scene (``landsat7_nc``), and Dynamic World on the Sentinel-2 L1C chip
(``sen1floods11_s2``: no labels; water fractions and agreement with WatNet). Every model runs
through ``geoseg.run.evaluate.evaluate`` / ``run_scene``: the real pipeline (tiles, blending,
default smoothing unless ``--smooth`` says otherwise).

Units. The Landsat 7 stack holds 8-bit ETM+ digital numbers (medians 55-86, 255 = saturated),
not reflectance; WatNet takes surface reflectance 0-1. The scene came without its metadata
(acquisition date, gains), so its DNs are converted to top-of-atmosphere reflectance with the
published ETM+ calibration (Chander, Markham & Helder 2009: LMIN/LMAX, ESUN; bands 1, 2, 3, 5, 7
high gain and band 4 low gain, ETM+'s usual setting over vegetated land, consistent with the
stack: every band but 4 saturates at 255) and an assumed sun elevation (``--sun-elevation``,
default 50 degrees: mid-morning at 35.8 N in spring). No atmospheric correction: WatNet sees TOA,
which is brighter than the surface reflectance it was trained on, in blue most. The table also
shows the sun elevation at 40 and 60 degrees, to show how much the unknown scaling matters.

The shipped Landsat 7 model and NDWI read the DNs as they are (what they were made for). The
Landsat 7 model trained on this scene outside its held-out region (its card's
``training.data[0].held_out``): only the held-out region is a fair comparison with it; WatNet and
NDWI never saw the scene, so the whole scene and the labelled polygons score them too.

Run from the repo root (about a minute on 2 cores)::

    .venv/bin/python benchmarks/pretrained_accuracy.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402
from geoseg.config import InferenceOptions, RunConfig  # noqa: E402
from geoseg.models.card import ClassInfo, read_card  # noqa: E402
from geoseg.models.defaults import DYNAMIC_WORLD, WATNET, WEIGHTS_DIR  # noqa: E402
from geoseg.run.evaluate import evaluate, evaluation_labels  # noqa: E402
from geoseg.tiling.grid import PixelWindow  # noqa: E402
from geoseg.training.labels import ClassMap  # noqa: E402

L7 = SHARED / "landsat7_nc"
STACK = L7 / "lsat7_2000_stack.tif"
STRATA = L7 / "strata_landcover.tif"
POLYGONS = L7 / "landsat96_polygons.shp"
CHIP = SHARED / "sen1floods11_s2" / "Spain_7370579_S2Hand.tif"
LANDSAT_MODEL = WEIGHTS_DIR / "landsat7-water-crops.safetensors"

# ETM+ (Chander et al. 2009, tables 2 and 11): band -> (LMIN, LMAX) W/(m2 sr um) at the gain
# used, and ESUN W/(m2 um). QCAL runs 1-255.
ETM_BANDS = {
    "B1": (-6.2, 191.6, 1997.0),  # high gain
    "B2": (-6.4, 196.5, 1812.0),  # high gain
    "B3": (-5.0, 152.9, 1533.0),  # high gain
    "B4": (-5.1, 241.1, 1039.0),  # low gain
    "B5": (-1.0, 31.06, 230.8),  # high gain
    "B7": (-0.35, 10.80, 84.90),  # high gain
}


def etm_toa_reflectance(dn: np.ndarray, band: str, *, sun_elevation: float) -> np.ndarray:
    """TOA reflectance of ETM+ 8-bit DNs (Earth-Sun distance taken as 1 AU)."""
    lmin, lmax, esun = ETM_BANDS[band]
    radiance = (lmax - lmin) / 254.0 * (dn - 1.0) + lmin
    return math.pi * radiance / (esun * math.sin(math.radians(sun_elevation)))


def reflectance_stack(out: Path, *, sun_elevation: float, dark_object: bool = False) -> Path:
    """The Landsat 7 stack as TOA reflectance (float32, same grid, descriptions, nodata).

    With ``dark_object``, a dark-object subtraction (Chavez 1988, DOS1) approximates surface
    reflectance: each band loses its haze, the 0.01th percentile of the scene's reflectance
    less the 1 % a dark object is assumed to reflect (never below 0).
    """
    with rasterio.open(STACK) as src:
        profile = src.profile
        data = src.read()
        descriptions = src.descriptions
        nodata = src.nodata
    refl = np.empty(data.shape, dtype=np.float32)
    for i, desc in enumerate(descriptions):
        band = desc.split()[0]
        refl[i] = etm_toa_reflectance(data[i].astype(np.float64), band, sun_elevation=sun_elevation)
        valid = data[i] != nodata
        if dark_object:
            haze = max(0.0, float(np.percentile(refl[i][valid], 0.01)) - 0.01)
            refl[i] -= haze
        refl[i][~valid] = nodata
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(refl)
        dst.descriptions = descriptions
    return out


def common_labels(out: Path) -> Path:
    """The land-cover labels with nodata wherever a band of the stack is nodata.

    The stack's SWIR2 band (B7) is nodata over 38 % of the scene where the other bands have
    data: WatNet (which reads B7) is scored on fewer pixels than the Landsat 7 model and NDWI
    (which do not). Scoring every model on these labels compares them on the same pixels.
    """
    with rasterio.open(STACK) as src:
        masks = src.read_masks()
    with rasterio.open(STRATA) as src:
        profile = src.profile
        labels = src.read(1)
        nodata = src.nodata
    labels[np.any(masks == 0, axis=0)] = nodata
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(labels, 1)
    return out


def _score(
    model: str, image: Path, labels: Any, *, cmap: ClassMap, region: PixelWindow | None,
    smooth: str | None, precision: str,
) -> dict[str, float]:  # fmt: skip
    result = evaluate(
        model,
        image,
        labels,
        class_map=cmap,
        classes=("water",),
        region=region,
        smooth=smooth,
        inference=InferenceOptions(precision=precision, device="cpu"),
    )
    water = result.metrics.to_dict()["classes"]["water"]
    scores: dict[str, Any] = {
        k: None if water[k] is None else round(water[k], 3) for k in ("iou", "precision", "recall")
    }
    return {**scores, "pixels": result.labelled_pixels}


def landsat(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    card = read_card(LANDSAT_MODEL)
    row, col, height, width = card.training["data"][0]["held_out"]
    held_out = PixelWindow(row_off=row, col_off=col, height=height, width=width)
    strata = evaluation_labels(STRATA)
    common = evaluation_labels(common_labels(tmp / "strata_common.tif"))
    strata_map = ClassMap(
        classes=(ClassInfo(name="background"), ClassInfo(name="water")), values={6: "water"}
    )
    polygons = evaluation_labels(POLYGONS, attribute="id")
    smooths = [None, "none"] if args.smooth_both else [args.smooth]
    refl = {
        f"TOA, sun {e:g} deg": reflectance_stack(tmp / f"l7_toa_{e:g}.tif", sun_elevation=e)
        for e in args.elevations
    }
    e = args.elevations[0]
    refl[f"TOA - dark object, sun {e:g} deg"] = reflectance_stack(
        tmp / f"l7_dos_{e:g}.tif", sun_elevation=e, dark_object=True
    )
    candidates = [
        (f"watnet ({what})", str(WEIGHTS_DIR / WATNET), path, True) for what, path in refl.items()
    ] + [
        ("landsat7-water-crops (DN)", str(LANDSAT_MODEL), STACK, False),
        ("ndwi:0.35 (DN)", "ndwi:0.35", STACK, True),
    ]
    rows: dict[str, Any] = {}
    for name, model, image, unseen in candidates:
        for smooth in smooths:
            key = f"{name}, smooth {smooth or 'default'}"
            row_: dict[str, Any] = {
                "held_out_common": _score(
                    model, image, common, cmap=strata_map, region=held_out, smooth=smooth,
                    precision=args.precision,
                ),
                "held_out_strata": _score(
                    model, image, strata, cmap=strata_map, region=held_out, smooth=smooth,
                    precision=args.precision,
                ),
            }  # fmt: skip
            if unseen:
                row_["scene_common"] = _score(
                    model, image, common, cmap=strata_map, region=None, smooth=smooth,
                    precision=args.precision,
                )  # fmt: skip
                row_["polygons"] = _score(
                    model, image, polygons, cmap=strata_map, region=None, smooth=smooth,
                    precision=args.precision,
                )  # fmt: skip
            rows[key] = row_
            print(key, json.dumps(row_), flush=True)
    return {"held_out": [row, col, height, width], "results": rows}


def _water(classes_tif: Path, names: tuple[str, ...]) -> np.ndarray:
    with rasterio.open(classes_tif) as ds:
        return ds.read(1) == names.index("water") + 1


def chip(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from geoseg.run.pipeline import run_scene

    out: dict[str, Any] = {}
    water: dict[str, np.ndarray] = {}
    # WatNet needs reflectance: the chip's DNs / 10000 (L1C TOA, not surface reflectance).
    refl = tmp / "chip_reflectance.tif"
    with rasterio.open(CHIP) as src:
        profile = src.profile
        data = src.read().astype(np.float32) / 10000.0
        descriptions = src.descriptions
    profile.update(dtype="float32", nodata=0.0)
    with rasterio.open(refl, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    runs = [
        ("dynamicworld fp32", str(WEIGHTS_DIR / DYNAMIC_WORLD), CHIP, "fp32", None),
        ("dynamicworld bf16", str(WEIGHTS_DIR / DYNAMIC_WORLD), CHIP, "bf16", None),
        ("dynamicworld fp32 unsmoothed", str(WEIGHTS_DIR / DYNAMIC_WORLD), CHIP, "fp32", "none"),
        ("watnet fp32", str(WEIGHTS_DIR / WATNET), refl, "fp32", None),
        ("watnet fp32 unsmoothed", str(WEIGHTS_DIR / WATNET), refl, "fp32", "none"),
        ("mndwi:0 unsmoothed", "mndwi:0", CHIP, "fp32", "none"),
    ]
    for name, model, image, precision, smooth in runs:
        config = RunConfig(
            classes=("water",),
            models=(model,),
            smooth=smooth,
            inference=InferenceOptions(precision=precision, device="cpu"),
        )
        folder = tmp / name.replace(" ", "_").replace(":", "")
        folder.mkdir()
        summary = run_scene(image, folder / "out.gpkg", config)
        water[name] = _water(Path(summary.raster), ("water",))
        out[name] = {"water_fraction": round(float(water[name].mean()), 4)}
        print(name, out[name], flush=True)

    def agree(a: str, b: str) -> dict[str, float]:
        x, y = water[a], water[b]
        return {
            "agreement": round(float((x == y).mean()), 4),
            "iou": round(float((x & y).sum() / max(1, (x | y).sum())), 4),
        }

    out["dynamicworld vs watnet (fp32, default smoothing)"] = agree(
        "dynamicworld fp32", "watnet fp32"
    )
    out["dynamicworld vs watnet (fp32, unsmoothed)"] = agree(
        "dynamicworld fp32 unsmoothed", "watnet fp32 unsmoothed"
    )
    out["dynamicworld bf16 vs fp32"] = agree("dynamicworld bf16", "dynamicworld fp32")
    for key in list(out)[-3:]:
        print(key, out[key], flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sun-elevation", dest="elevations", type=float, action="append")
    parser.add_argument("--smooth", help="smoothing for every run (default: each class's own)")
    parser.add_argument("--smooth-both", action="store_true", help="default smoothing and none")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-chip", action="store_true")
    args = parser.parse_args()
    args.elevations = args.elevations or [50.0, 40.0, 60.0]  # the first is the headline
    for path in (STACK, STRATA, POLYGONS, CHIP):
        if not path.exists():
            print(f"missing {path}: needs ../shared/data", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="geoseg-pretrained-") as tmp:
        report = {"landsat7_nc": landsat(args, Path(tmp))}
        if not args.skip_chip:
            report["chip"] = chip(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
