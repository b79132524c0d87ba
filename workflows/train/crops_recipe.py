"""Measure `crops` smoothing recipes for field polygons on the VALIDATION images of crops.yaml.

    python workflows/train/crops_recipe.py geoseg/models/weights/crops-fields-naip.safetensors

The model runs once per held-out image through the real pipeline (no smoothing, with
probabilities); each recipe is then applied to those probabilities exactly as a block of
`geoseg run` applies it (geoseg.postprocess.smooth_block; an image of 1024 x 1024 is one
block), the crops mask is polygonised (4-connected, as geoseg.vectorize does) and scored:
cropland IoU (crops + field_boundary against the labelled fields' area) and fields as
objects (IoU >= 0.5, one to one). The test images are not read.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from geoseg.config import InferenceOptions, RunConfig
from geoseg.models.card import read_card
from geoseg.postprocess import colour_bands, smooth_block
from geoseg.postprocess.recipes import recipe_for
from geoseg.run.pipeline import plan_run, run_scene
from geoseg.tiling.io import read_scene_info, read_window
from geoseg.training.config_file import read_train_file
from geoseg.training.held_out import held_out_data
from geoseg.training.labels import LabelReader
from geoseg.training.objects import match_objects
from geoseg.training.scoring import scored_labels

HERE = Path(__file__).resolve().parent

# (label, overrides of the crops recipe); None: no smoothing (the argmax).
RECIPES: list[tuple[str, dict[str, float] | None]] = [
    ("none (argmax)", None),
    ("open 15 m, min 2500 m2, holes 1000 m2 (10 m default)", {}),
    ("open 0, min 500, holes 1000", {"open_radius_m": 0, "min_object_area_m2": 500}),
    ("open 5, min 1000, holes 1000", {"open_radius_m": 5, "min_object_area_m2": 1000}),
]
for _open in (0, 2, 5, 10, 15):
    for _area in (250, 500, 1000, 2500):
        RECIPES.append(
            (
                f"open {_open}, min {_area}, holes 0",
                {"open_radius_m": _open, "min_object_area_m2": _area, "max_hole_area_m2": 0},
            )
        )


def polygons(mask: np.ndarray, transform: object) -> list[object]:
    from rasterio import features
    from shapely.geometry import shape

    return [
        shape(g)
        for g, _ in features.shapes(
            mask.astype(np.uint8), mask=mask, connectivity=4, transform=transform
        )
    ]


def main(model: str) -> None:
    config = read_train_file(HERE / "crops.yaml", overrides={"output": model})
    card = read_card(model)
    merge = {"field_boundary": "crops"}
    rows: dict[str, list[np.ndarray]] = {label: [] for label, _ in RECIPES}
    objects: dict[str, list[object]] = {label: [] for label, _ in RECIPES}
    for piece in held_out_data(config)[: int(os.environ.get("LIMIT", "99"))]:
        t0 = time.perf_counter()
        info = read_scene_info(piece.image)
        run_config = RunConfig(
            classes=("crops", "field_boundary"),
            models=(model,),
            smooth="none",
            probabilities=True,
            centerlines=False,
            inference=InferenceOptions(batch_size=4),
        )
        with tempfile.TemporaryDirectory() as tmp:
            run = run_scene(
                piece.image,
                Path(tmp) / "p.gpkg",
                run_config,
                plan=plan_run(piece.image, run_config),
            )
            p, valid = read_window(str(run.probabilities), info.window, bands=(1, 2))
        fg = p.astype(np.float32) / 254.0
        probs = np.concatenate([np.clip(1.0 - fg.sum(axis=0), 0, 1)[None], fg])
        image, _ = read_window(piece.image, info.window, bands=(1, 2, 3))
        labels, cmap = scored_labels(piece.labels, config.class_map, merge)
        reader = LabelReader(labels, image=info, class_map=cmap)
        truth = reader.read(info.window) == 1
        fields = reader.polygons(1)
        for label, overrides in RECIPES:
            if overrides is None:
                classes = np.argmax(probs, axis=0)
            else:
                classes, _ = smooth_block(
                    probs,
                    image=image,
                    valid=valid,
                    class_names=card.class_names,
                    recipes={"crops": recipe_for("crops", "morph", overrides)},
                    pixel_size_m=(1.0, 1.0),
                    image_scale=(np.asarray(card.mean), np.asarray(card.std)),
                    rgb=colour_bands(card.bands),
                )
            crop = (classes == 1) & valid
            land = ((classes == 1) | (classes == 2)) & valid
            tp = int((land & truth).sum())
            rows[label].append(
                np.array([tp, int((land & ~truth).sum()), int((~land & truth).sum())])
            )
            objects[label].append(match_objects(polygons(crop, info.transform), fields))
        print(f"{Path(piece.image).name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(
        f"{'crops recipe':<55} {'cropland IoU':>12} {'field P':>8} {'R':>6} {'F1':>6} "
        f"{'pred':>5} {'true':>5}"
    )
    for label, _ in RECIPES:
        tp, fp, fn = sum(rows[label])
        o = objects[label][0]
        for extra in objects[label][1:]:
            o = o + extra
        print(
            f"{label:<55} {tp / (tp + fp + fn):12.3f} {o.precision:8.3f} {o.recall:6.3f} "
            f"{o.f1:6.3f} {o.predicted:5d} {o.labelled:5d}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
