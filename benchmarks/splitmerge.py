"""Split-and-merge against the per-pixel threshold of the same index (issue #20).

The labelled water of ``landsat7_nc`` (Landsat 7, 28.5 m, 489 x 443; water = land-cover class 6,
labels from 1996, imagery from 2000). For NDWI (green, NIR) and MNDWI (green, SWIR1), each with
two thresholds, Otsu's over the scene (what ``--model ndwi`` uses) and the per-pixel rule's best
on these labels (a sweep in steps of 0.05: optimistic, but the same for both methods): the
per-pixel rule (``index > t``) and split-and-merge with a few settings, no smoothing after
either. Columns: water IoU and F1 against the labels, boundary F1 (a predicted boundary pixel
counts when a labelled one lies within 2 px, and the other way round), water objects
(4-connected) and specks among them (at most 4 px), milliseconds for the scene (the rule
alone: the index is computed before).

Usage: python benchmarks/splitmerge.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, table

from geoseg.models.spectral import index_histogram, normalized_difference, otsu_threshold
from geoseg.models.splitmerge import SplitMergeParams, split_merge
from geoseg.training.metrics import boundary_f1

SCENE = SHARED / "landsat7_nc" / "lsat7_2000_stack.tif"
LABELS = SHARED / "landsat7_nc" / "strata_landcover.tif"
WATER = 6
INDICES = {"ndwi": (2, 4), "mndwi": (2, 5)}  # 1-based bands: green, NIR / SWIR1
SETTINGS = {
    "split-merge 2..256": SplitMergeParams(min_region=2),
    "split-merge 4..256": SplitMergeParams(min_region=4),
    "split-merge 8..256": SplitMergeParams(min_region=8),
    "split-merge 2..256, 90 %": SplitMergeParams(min_region=2, agreement=0.9),
}
TOLERANCE_PX = 2


def scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> dict[str, object]:
    p, t = pred & valid, truth & valid
    inter, union = (p & t).sum(), (p | t).sum()
    objects, n = ndi.label(p)
    sizes = np.bincount(objects.ravel())[1:]
    return {
        "IoU": inter / union,
        "F1": 2 * inter / (p.sum() + t.sum()),
        "boundary F1": boundary_f1(p, t, tolerance_px=TOLERANCE_PX, valid=valid),
        "objects": n,
        "specks <= 4 px": int((sizes <= 4).sum()),
    }


def main() -> None:
    if not SCENE.is_file():
        sys.exit(f"shared data not found at {SCENE}")
    with rasterio.open(SCENE) as src:
        stack = src.read()
        valid = np.all(stack != src.nodata, axis=0)
    with rasterio.open(LABELS) as src:
        labels = src.read(1)
        valid &= labels != src.nodata
    truth = labels == WATER
    rows = []
    for name, (a, b) in INDICES.items():
        index = normalized_difference(stack[a - 1], stack[b - 1])
        ok = valid & np.isfinite(index)
        otsu = otsu_threshold(index_histogram(index, valid))
        sweep = np.round(np.arange(-0.5, 0.75, 0.05), 2)
        best = max(sweep, key=lambda t: scores(ok & (index > t), truth, ok)["IoU"])
        for kind, threshold in (("Otsu", otsu), ("best", float(best))):
            t0 = time.perf_counter()
            pixel = ok & (index > threshold)
            ms = (time.perf_counter() - t0) * 1e3
            rows.append({"index": f"{name} > {threshold:.3f} ({kind})", "method": "per pixel"})
            rows[-1].update(scores(pixel, truth, ok))
            rows[-1]["ms"] = ms
            for label, params in SETTINGS.items():
                t0 = time.perf_counter()
                result = split_merge(index, ok, threshold=threshold, params=params, merge=False)
                ms = (time.perf_counter() - t0) * 1e3
                rows.append({"index": "", "method": label})
                rows[-1].update(scores(result.labels == 1, truth, ok))
                rows[-1]["ms"] = ms
    print(
        f"{SCENE.name}: {valid.shape[1]} x {valid.shape[0]} px, {int(truth[valid].sum())} "
        f"labelled water px; boundary tolerance {TOLERANCE_PX} px; no smoothing\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
