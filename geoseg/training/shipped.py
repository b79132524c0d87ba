"""Train the default models shipped in ``geoseg/models/weights/`` from ``../shared/data``.

::

    python -m geoseg.training.shipped [roads|landsat|all] [--data DIR] [--out DIR]
        [--work DIR] [--steps N] [--threads N]

``--data`` defaults to ``$GEOSEG_SHARED_DATA`` or ``../shared/data`` next to the repository;
``--out`` to ``geoseg/models/weights``. Per-epoch checkpoints go to ``--work`` (default
``.train-defaults/`` in the current directory), so an interrupted run resumes where it
stopped when started again with the same options (a finished run only rewrites the file).
``--threads`` defaults to the torch CPU thread count each shipped model was trained with
(roads: torch's default, landsat: 1); a card's recorded command names it when it is set,
since the weights depend on it.

- ``roads``: RGB aerial roads from the 7 Massachusetts Roads tiles; tile ``10678810_15`` is
  held out whole for validation (the best of the per-epoch validations is kept).
- ``landsat``: water and crops (classes background, water, crops) from bands B1-B5 of the
  Landsat 7 stack and the 1996 strata land cover; a rectangle of the scene is held out, with
  a gap of one chip that no training chip touches, and the last epoch is kept. Then the
  model and the NDWI / MNDWI methods are scored for water on the held-out region through
  the real ``geoseg run`` pipeline (:func:`geoseg.run.evaluate.evaluate`), with fixed index
  thresholds chosen on the training area only; the comparison goes into the card.

Both record in the card what they were trained on, for how long, and the validation scores,
also as measured by :func:`~geoseg.run.evaluate.evaluate` without smoothing and with each class's
default smoothing recipe. :mod:`geoseg.models.defaults` maps classes to these files.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import ConfigError
from geoseg.models.card import ClassInfo, ModelCard, read_card
from geoseg.tiling.grid import PixelWindow
from geoseg.training.chips import Augment, ValidationSplit
from geoseg.training.config import data_relative, shared_data_dir
from geoseg.training.labels import IGNORE_INDEX, ClassMap, LabelReader, LabelSource
from geoseg.training.loop import TrainConfig, TrainingInput, TrainProgress, train

__all__ = [
    "LANDSAT_FILE",
    "LANDSAT_REGION",
    "ROADS_FILE",
    "ROADS_HELD_OUT",
    "ROADS_TILES",
    "WATER_THRESHOLDS",
    "landsat_class_map",
    "landsat_config",
    "main",
    "roads_class_map",
    "roads_config",
    "shared_data_dir",
]

WEIGHTS = Path(__file__).resolve().parent / "weights"

ROADS_FILE = "roads-unet-r18.safetensors"
LANDSAT_FILE = "landsat7-water-crops.safetensors"

ROADS_TILES = (
    "10078660_15",
    "10078720_15",
    "10078735_15",
    "10078750_15",
    "10228660_15",
    "10228795_15",
    "10678810_15",
)
ROADS_HELD_OUT = "10678810_15"  # the tile with the most roads (3.3 % of its pixels)

# Landsat 7 scene (443 rows x 489 columns). Its B7 (SWIR2) band has a much wider no-data
# frame than B1-B5 and would hide 60 % of the crop pixels, so the model uses B1-B5. Crops
# (strata class 2) lie only in rows >= 300, columns < 340. The held-out rectangle (rows
# 336-442, columns 160-488, 16 % of the scene) holds 375 crop and 479 water pixels with
# valid imagery; with a one-chip (64 px) gap, 597 crop and 1614 water pixels are left to
# train on.
LANDSAT_REGION = PixelWindow(row_off=336, col_off=160, height=107, width=329)
LANDSAT_CHIP = 64

# Torch CPU threads of each recipe (0: torch's default, one per core). Float sums, hence
# the weights, depend on the thread count; the shipped Landsat model was trained with one.
ROADS_THREADS = 0
LANDSAT_THREADS = 1

# Fixed thresholds tried for the spectral water methods, chosen on the training area.
WATER_THRESHOLDS = tuple(round(t, 2) for t in np.arange(-0.2, 0.61, 0.05))


def _command(
    target: str, *, steps: int | None = None, default: int | None = None, threads: int = 0
) -> str:
    """The command line that reproduces a run.

    ``--steps`` only when not the default; ``--threads`` whenever it is set, so the command
    pins what was run even if a recipe's default thread count changes.
    """
    extra = f" --steps {steps}" if steps is not None and steps != default else ""
    if threads:
        extra += f" --threads {threads}"
    return f"python -m geoseg.training.shipped {target}{extra}"


# --- configurations ------------------------------------------------------------------------


def roads_class_map() -> ClassMap:
    """Massachusetts Roads labels: 0 background, 1 road, 255 no-data."""
    return ClassMap(
        classes=(
            ClassInfo(name="background", color="#000000"),
            ClassInfo(name="roads", color="#e31a1c"),
        ),
        values={0: "background", 1: "roads"},
        unmapped="ignore",
    )


def roads_config(
    data: Path,
    out: Path,
    *,
    work: Path | None = None,
    steps: int = 2400,
    steps_per_epoch: int = 200,
) -> TrainConfig:
    """U-Net, ResNet-18 encoder, narrow decoder, on 256 px chips; one tile held out."""
    root = data / "mass_roads"
    inputs = [
        TrainingInput(
            image=str(root / f"{t}_image.tif"),
            labels=LabelSource(path=str(root / f"{t}_label.tif")),
        )
        for t in ROADS_TILES
    ]
    return TrainConfig(
        inputs=tuple(inputs),
        class_map=roads_class_map(),
        bands=("red", "green", "blue"),
        # The tiles are plain RGB without band descriptions: band order is R, G, B.
        band_numbers=(1, 2, 3),
        output=str(out / ROADS_FILE),
        name="roads-unet-r18",
        description=(
            "Roads in 1 m RGB aerial imagery (trained on 6 Massachusetts Roads tiles). "
            "Labels are centrelines drawn at a fixed width, so predicted roads have that "
            "width too; minor roads unlabelled in the training data are often missed."
        ),
        architecture="unet",
        encoder="resnet18",
        # A narrow decoder: half the default channels at the coarse stages, the same at
        # full resolution where thin roads are drawn; twice as fast on CPU, 24.9 MB in fp16.
        params={"decoder_channels": [128, 64, 32, 16, 16]},
        chip_size=256,
        batch_size=8,
        epochs=max(1, steps // steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        lr=1e-3,
        schedule="onecycle",
        loss="ce+dice",
        balance=0.5,
        min_labelled=0.05,
        augment=Augment(),
        validation=ValidationSplit(kind="tile", tiles=(ROADS_TILES.index(ROADS_HELD_OUT),)),
        seed=0,
        precision="auto",
        tile_size=512,
        overlap=64,
        resolution_m=1.0,
        checkpoint_dir=None if work is None else str(work / "roads"),
        store_dtype="fp16",
        threads=ROADS_THREADS,
        command=_command("roads", threads=ROADS_THREADS),
    )


def landsat_class_map() -> ClassMap:
    """Strata land cover: 6 water, 2 agriculture -> crops, every other class background."""
    return ClassMap(
        classes=(
            ClassInfo(name="background", color="#000000"),
            ClassInfo(name="water", color="#1f78b4"),
            ClassInfo(name="crops", color="#ff7f00"),
        ),
        values={6: "water", 2: "crops"},
        unmapped="background",
    )


LANDSAT_BANDS = ("blue", "green", "red", "nir", "swir1")


def landsat_config(
    data: Path,
    out: Path,
    *,
    work: Path | None = None,
    steps: int = 1000,
    steps_per_epoch: int = 100,
    **overrides: Any,
) -> TrainConfig:
    """A small U-Net (ResNet-18 cut at depth 3) on 64 px chips; a region held out."""
    root = data / "landsat7_nc"
    base: dict[str, Any] = {
        "inputs": (
            TrainingInput(
                image=str(root / "lsat7_2000_stack.tif"),
                labels=LabelSource(path=str(root / "strata_landcover.tif")),
            ),
        ),
        "class_map": landsat_class_map(),
        "bands": LANDSAT_BANDS,
        "sensor": "landsat7",
        "output": str(out / LANDSAT_FILE),
        "name": "landsat7-water-crops",
        "description": (
            "Water and crops in Landsat 7 ETM+ bands B1-B5 at 28.5 m, in the "
            "uncalibrated 8-bit DNs of the training scene (North Carolina, 2000; labels from "
            "1996). Other sensors or reflectance units need a model trained on them."
        ),
        "architecture": "unet",
        "encoder": "resnet18",
        # Depth 3 (stride 8): 28.5 m pixels need little context, and ~1000 crop pixels
        # cannot train 11 M parameters.
        "params": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
        "chip_size": LANDSAT_CHIP,
        "batch_size": 16,
        "epochs": max(1, steps // steps_per_epoch),
        "steps_per_epoch": steps_per_epoch,
        "lr": 2e-3,
        "weight_decay": 1e-3,
        "schedule": "onecycle",
        "loss": "ce+dice",
        "balance": 0.7,
        "min_labelled": 0.5,
        "augment": Augment(brightness=0.1, contrast=0.1),
        "validation": ValidationSplit(kind="region", image=0, region=LANDSAT_REGION),
        # The last epoch, not the best: the held-out region then chooses nothing, and the
        # comparison with index thresholds chosen on the training area is fair.
        "keep": "last",
        "seed": 0,
        "precision": "auto",
        "tile_size": 256,
        "overlap": 32,
        "resolution_m": 28.5,
        "checkpoint_dir": None if work is None else str(work / "landsat"),
        "store_dtype": "fp16",
        "threads": LANDSAT_THREADS,
        "command": _command("landsat", threads=LANDSAT_THREADS),
    }
    base.update(overrides)
    return TrainConfig(**base)


# --- evaluation through the real pipeline ---------------------------------------------------


def _evaluate(
    model: str,
    image: Path,
    labels: Path,
    class_map: ClassMap,
    *,
    region: PixelWindow | None,
    smooth: str | None,
    bands: tuple[int, ...] | None = None,
    sensor: str | None = None,
) -> dict[str, Any]:
    from geoseg.config import InferenceOptions
    from geoseg.run.evaluate import evaluate

    result = evaluate(
        model,
        image,
        LabelSource(path=str(labels)),
        class_map=class_map,
        region=region,
        smooth=smooth,
        bands=bands,
        sensor=sensor,
        inference=InferenceOptions(device="cpu", batch_size=4),
    )
    return {
        "smooth": smooth or "default recipes",
        "classes": {
            c.name: {
                "iou": _r(c.iou),
                "f1": _r(c.f1),
                "precision": _r(c.precision),
                "recall": _r(c.recall),
                "support": c.support,
            }
            for c in result.metrics.classes
        },
        "labelled_pixels": result.labelled_pixels,
        "seconds": round(result.run.seconds, 1),
    }


def _r(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN -> None


def _rewrite_card(path: Path, card: ModelCard) -> None:
    """Replace a model file's card, keeping its weights bit for bit."""
    from safetensors.torch import load_file

    from geoseg.models.registry import save_model

    save_model(path, card, load_file(str(path)))


# --- spectral thresholds chosen on the training area ---------------------------------------


def _index_on_area(
    image: Path, labels: Path, *, bands: tuple[int, int], exclude: PixelWindow, gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index values and water truth of the labelled pixels outside the held-out zone."""
    from geoseg.models.spectral import normalized_difference
    from geoseg.tiling.io import read_scene_info, read_window

    info = read_scene_info(str(image))
    window = info.window
    img, valid = read_window(str(image), window, bands=bands)
    reader = LabelReader(LabelSource(path=str(labels)), image=info, class_map=landsat_class_map())
    truth = reader.read(window)
    keep = valid & (truth != IGNORE_INDEX)
    r0, c0 = max(0, exclude.row_off - gap), max(0, exclude.col_off - gap)
    keep[r0 : exclude.row_end + gap, c0 : exclude.col_end + gap] = False
    index = normalized_difference(img[0], img[1])
    keep &= np.isfinite(index)
    return index[keep], truth[keep] == 1


def best_threshold(index: np.ndarray, water: np.ndarray) -> tuple[float, float]:
    """The threshold of :data:`WATER_THRESHOLDS` with the highest water IoU, and that IoU."""
    best = (WATER_THRESHOLDS[0], -1.0)
    for t in WATER_THRESHOLDS:
        pred = index > t
        inter = int((pred & water).sum())
        union = int((pred | water).sum())
        iou = inter / union if union else 0.0
        if iou > best[1]:
            best = (float(t), iou)
    return best


def water_comparison(data: Path, model: Path) -> dict[str, Any]:
    """Water IoU of the trained model and of NDWI / MNDWI on the held-out region.

    Every contender runs through the real pipeline twice: as ``geoseg run`` does by default
    (each class's default smoothing recipe; this decides ``best``, since it is what a user
    of the default model gets) and without smoothing (``best_without_smoothing``). Fixed
    index thresholds are chosen on the training area (outside the held-out zone); Otsu's
    threshold is computed over the whole scene, as ``geoseg run`` does for any user.
    """
    root = data / "landsat7_nc"
    image, labels = root / "lsat7_2000_stack.tif", root / "strata_landcover.tif"
    water_only = ClassMap(
        classes=(ClassInfo(name="background"), ClassInfo(name="water")),
        values={6: "water"},
        unmapped="background",
    )
    contenders: dict[str, dict[str, Any]] = {model.name: {}}
    # Band numbers in the Landsat 7 stack (green 2, nir 4, swir1 5).
    for method, bands in {"ndwi": (2, 4), "mndwi": (2, 5)}.items():
        values, truth = _index_on_area(
            image, labels, bands=bands, exclude=LANDSAT_REGION, gap=LANDSAT_CHIP
        )
        threshold, train_iou = best_threshold(values, truth)
        contenders[f"{method}:otsu"] = {}
        contenders[f"{method}:{threshold:g}"] = {
            "threshold_chosen_on": "training area (outside the held-out zone)",
            "training_area_iou": round(train_iou, 4),
        }
    rows: dict[str, Any] = {}
    for source, extra in contenders.items():
        run = str(model) if source == model.name else source
        scores = {
            key: _evaluate(run, image, labels, water_only, region=LANDSAT_REGION, smooth=smooth)[
                "classes"
            ]["water"]
            for key, smooth in (("default", None), ("none", "none"))
        }
        rows[source] = {"source": source, **extra, "water": scores}

    def best(key: str) -> str:
        return max(rows, key=lambda k: rows[k]["water"][key]["iou"] or 0.0)

    return {
        "what": (
            "water IoU on the held-out region through the real geoseg run pipeline, with "
            "the default smoothing recipes ('default', decides 'best') and without ('none')"
        ),
        "region": [
            LANDSAT_REGION.row_off,
            LANDSAT_REGION.col_off,
            LANDSAT_REGION.height,
            LANDSAT_REGION.width,
        ],
        "water_pixels": rows[model.name]["water"]["none"]["support"],
        "results": rows,
        "best": best("default"),
        "best_without_smoothing": best("none"),
    }


# --- runs ----------------------------------------------------------------------------------


def _printer(name: str) -> Callable[[TrainProgress], None]:
    last = [0.0]

    def show(event: TrainProgress) -> None:
        now = time.perf_counter()
        if event.stage == "epoch" and event.record is not None:
            r = event.record
            print(
                f"[{name}] epoch {r.epoch}/{event.epochs} lr {r.lr:.2e} {r.seconds:.0f}s "
                f"{r.describe()}",
                file=sys.stderr,
                flush=True,
            )
        elif event.stage == "train" and now - last[0] > 30:
            last[0] = now
            print(
                f"[{name}] epoch {event.epoch} step {event.step}/{event.steps} "
                f"loss {event.loss:.4f}",
                file=sys.stderr,
                flush=True,
            )
        elif event.stage == "done":
            print(f"[{name}] wrote {event.message}", file=sys.stderr, flush=True)

    return show


def _finish_card(
    path: Path,
    *,
    image_label: Sequence[tuple[Path, Path]],
    class_map: ClassMap,
    region: PixelWindow | None,
    bands: tuple[int, ...] | None,
    extra: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Add the pipeline-measured scores (and ``extra``) to the card of ``path``."""
    card = read_card(path)
    evaluation = {}
    for smooth in ("none", None):
        per_input = [
            _evaluate(
                str(path),
                image,
                labels,
                class_map,
                region=region,
                smooth=smooth,
                bands=bands,
                sensor=card.sensor,
            )
            for image, labels in image_label
        ]
        evaluation["none" if smooth == "none" else "default"] = per_input
    summary = {
        "evaluation": {
            "what": (
                "geoseg.run.evaluate.evaluate on the held-out data: the real geoseg run pipeline "
                "(blocks, tiles, blending) without smoothing ('none') and with each class's "
                "default smoothing recipe ('default')"
            ),
            # Relative to the shared data root, like the card's training data.
            "held_out": [data_relative(str(i)) or str(i) for i, _ in image_label],
            "region": None
            if region is None
            else [region.row_off, region.col_off, region.height, region.width],
            **evaluation,
        },
        **(extra or {}),
    }
    card = card.with_training(**summary)
    _rewrite_card(path, card)
    return card


def train_roads(
    data: Path, out: Path, work: Path, *, steps: int = 2400, threads: int = ROADS_THREADS
) -> ModelCard:
    """Train the roads model into ``out`` (checkpoints in ``work``) and complete its card."""
    config = roads_config(data, out, work=work, steps=steps)
    command = _command("roads", steps=steps, default=2400, threads=threads)
    config = replace(config, threads=threads, command=command)
    result = train(config, progress=_printer("roads"))
    root = data / "mass_roads"
    return _finish_card(
        result.model_path,
        image_label=[(root / f"{ROADS_HELD_OUT}_image.tif", root / f"{ROADS_HELD_OUT}_label.tif")],
        class_map=roads_class_map(),
        region=None,
        bands=(1, 2, 3),
    )


def train_landsat(
    data: Path, out: Path, work: Path, *, steps: int = 1000, threads: int = LANDSAT_THREADS
) -> ModelCard:
    """Train the Landsat model, compare it with NDWI / MNDWI for water, complete its card."""
    config = landsat_config(data, out, work=work, steps=steps, threads=threads)
    command = _command("landsat", steps=steps, default=1000, threads=threads)
    config = replace(config, command=command)
    result = train(config, progress=_printer("landsat"))
    root = data / "landsat7_nc"
    comparison = water_comparison(data, result.model_path)
    return _finish_card(
        result.model_path,
        image_label=[(root / "lsat7_2000_stack.tif", root / "strata_landcover.tif")],
        class_map=landsat_class_map(),
        region=LANDSAT_REGION,
        bands=None,
        extra={"comparison": comparison},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoseg.training.shipped",
        description="Train the default models shipped with geoseg from ../shared/data.",
    )
    parser.add_argument("target", nargs="?", default="all", choices=("roads", "landsat", "all"))
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="where model files go")
    parser.add_argument(
        "--work", type=Path, default=Path(".train-defaults"), help="checkpoints (resume)"
    )
    parser.add_argument("--steps", type=int, default=None, help="override the step count")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads, 0: one per core (default: roads {ROADS_THREADS}, "
        f"landsat {LANDSAT_THREADS}, as the shipped models were trained)",
    )
    args = parser.parse_args(argv)
    data = args.data or shared_data_dir()
    if not data.is_dir():
        print(f"shared data not found at {data}; set GEOSEG_SHARED_DATA", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        kw: dict[str, Any] = {}
        if args.threads is not None:
            kw["threads"] = args.threads
        if args.steps is not None:
            kw["steps"] = args.steps
        if args.target in ("roads", "all"):
            train_roads(data, args.out, args.work, **kw)
        if args.target in ("landsat", "all"):
            train_landsat(data, args.out, args.work, **kw)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
