"""Shared pieces of the benchmarks: real scenes at any size, models, RSS sampling."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
S2_SCENE = SHARED / "sentinel2_beaufort" / "s2b_l1c_2018-10-13_B01-B08.tif"
S2_BANDS = (2, 3, 4, 8)  # blue, green, red, nir


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric reflection of indices into [0, n): period 2n."""
    m = np.mod(idx, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def mirror_scene(
    out: Path, size: int, *, src: Path = S2_SCENE, bands: tuple[int, ...] = S2_BANDS
) -> Path:
    """A ``size x size`` scene made by mirror-tiling a real scene, written strip by strip.

    Reflection keeps the content real and seam-free; the georeference continues the source
    grid. Reuses an existing file of the right size.
    """
    if out.exists():
        with rasterio.open(out) as ds:
            fits = ds.width == size and ds.height == size and ds.count == len(bands)
            if fits and ds.colorinterp[-1] != ColorInterp.alpha:
                return out
    with rasterio.open(src) as ds:
        data = ds.read(list(bands))
        profile = ds.profile
        descriptions = [ds.descriptions[b - 1] for b in bands]
    _, h, w = data.shape
    profile.update(
        width=size,
        height=size,
        count=len(bands),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        predictor=2,
        BIGTIFF="IF_SAFER",
        # Without it GDAL writes 3-4 band 8-bit files as RGB(A): NIR would become an alpha
        # mask and every pixel with NIR 0 no-data.
        photometric="MINISBLACK",
    )
    cols = _mirror(np.arange(size), w)
    tmp = out.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = tuple(descriptions)
        for r0 in range(0, size, 1024):
            rows = _mirror(np.arange(r0, min(size, r0 + 1024)), h)
            strip = data[:, rows][:, :, cols]
            dst.write(strip, window=Window(0, r0, size, len(rows)))
    tmp.replace(out)
    return out


def unet_r34(path: Path, *, steps: int = 150, seed: int = 0) -> Path:
    """A U-Net ResNet-34 (tile 512, overlap 64) trained briefly to map water on the real scene.

    Random weights would make every benchmark measure noise (a percolating maze of tens of
    thousands of polygons); this model is trained for ``steps`` batches on NDWI > 0.35
    pseudo-labels of the Sentinel-2 scene, so its output has the structure of a real water
    map. Its input normalisation is fixed to ``x / 255`` (mean 0, std 255), geoai-py's, so the
    same weights mean the same thing in both tools. Reused when ``path`` exists.
    """
    if path.exists():
        return path
    from geoseg.models.card import ClassInfo
    from geoseg.models.spectral import normalized_difference
    from geoseg.tiling.io import write_array
    from geoseg.training.chips import ValidationSplit
    from geoseg.training.config import TrainConfig, TrainingInput
    from geoseg.training.labels import ClassMap, LabelSource
    from geoseg.training.loop import train

    with rasterio.open(S2_SCENE) as ds:
        green, nir = ds.read(3), ds.read(8)
        fill = (ds.read() == 255).all(axis=0)
        crs, transform = ds.crs, ds.transform
    labels = (normalized_difference(green, nir) > 0.35).astype(np.uint8)
    labels[fill] = 255
    label_path = path.with_name("s2_ndwi_labels.tif")
    write_array(label_path, labels, crs=crs, transform=transform, nodata=255)
    config = TrainConfig(
        name="bench-unet-r34",
        inputs=(TrainingInput(image=str(S2_SCENE), labels=LabelSource(path=str(label_path))),),
        class_map=ClassMap(
            classes=(
                ClassInfo(name="background", color="#000000"),
                ClassInfo(name="water", color="#1f78b4"),
            )
        ),
        bands=("blue", "green", "red", "nir"),
        band_numbers=S2_BANDS,
        architecture="unet",
        encoder="resnet34",
        chip_size=256,
        batch_size=8,
        epochs=1,
        steps_per_epoch=steps,
        validation=ValidationSplit(kind="none"),
        mean=(0.0, 0.0, 0.0, 0.0),
        std=(255.0, 255.0, 255.0, 255.0),
        tile_size=512,
        overlap=64,
        seed=seed,
        output=str(path),
        description="benchmark model: NDWI>0.35 pseudo-labels of the Sentinel-2 scene",
    )
    train(config)
    return path


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def run_measured(cmd: list[str], *, interval: float = 0.1) -> Measured:
    """Run a command; sample the summed RSS of it and all its descendants."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                peak = max(peak, total / 2**20)
            except psutil.Error:
                pass
            stop.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    stop.set()
    t.join()
    return Measured(time.perf_counter() - start, peak, proc.returncode, err)


def geoseg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "geoseg.cli", *args]


def table(rows: list[dict[str, object]]) -> str:
    """A plain Markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def parse_args(doc: str | None, **options: dict[str, object]) -> argparse.Namespace:
    """The benchmarks' command line: ``--workdir`` plus ``options`` (name -> argparse kwargs).

    Exits when ../shared/data is missing; creates the work folder.
    """
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, kwargs in options.items():
        ap.add_argument(f"--{name.replace('_', '-')}", **kwargs)  # type: ignore[arg-type]
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-bench")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"shared data not found at {SHARED}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def run_cmd(scene: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """`geoseg run SCENE --classes water -m MODEL -o OUT --overwrite -q EXTRA...`."""
    return geoseg_cmd(
        "run",
        str(scene),
        "--classes",
        "water",
        "-m",
        str(model),
        "-o",
        str(out),
        "--overwrite",
        "-q",
        *extra,
    )


def run_geoseg(scene: Path, model: Path, out: Path, *extra: str) -> Measured:
    """:func:`run_cmd`, measured; exits with its stderr if it fails."""
    m = run_measured(run_cmd(scene, model, out, *extra))
    if m.returncode != 0:
        sys.exit(f"geoseg failed ({' '.join(extra)}):\n{m.stderr[-3000:]}")
    return m
