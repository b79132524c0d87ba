"""The output depends on the scene, the models and the options that change them, never on the
layout: block size, halo (set by smoothing and centrelines of any class) or the Dask cluster.

Tiles lie on one grid anchored to the scene, so these compare outputs bit for bit: the class
raster pixel by pixel, the polygons as sorted normalised WKB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

from geoseg.config import InferenceOptions, RunConfig
from geoseg.models.predictor import TorchSegmenter, load_segmenter
from geoseg.run.pipeline import plan_run, run_scene
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_window

FP32 = InferenceOptions(precision="fp32")
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _run(scene: Path, out: Path, **kw: object) -> tuple[np.ndarray, dict[str, list[bytes]]]:
    """The class raster and, per polygon layer, its features as sorted normalised WKB."""
    config = RunConfig(**kw)  # type: ignore[arg-type]
    summary = run_scene(scene, out, config)
    with rasterio.open(summary.raster) as src:
        classes = src.read(1)
    layers = {}
    for name, kind in pyogrio.list_layers(summary.gpkg):
        if kind in ("Polygon", "MultiPolygon", "LineString", "MultiLineString"):
            df = pyogrio.read_dataframe(summary.gpkg, layer=name)
            layers[name] = sorted(shapely.to_wkb(shapely.normalize(g)) for g in df.geometry)
    return classes, layers


def _blocks(scene: Path, **kw: object) -> int:
    return len(plan_run(scene, RunConfig(**kw)).blocks)  # type: ignore[arg-type]


def test_block_size_does_not_change_classes_or_polygons(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(600, 700, seed=11)
    base = {"classes": ("water", "roads"), "models": (str(tiny_model),), "inference": FP32}
    assert [_blocks(scene, block=b, **base) for b in (128, 256, 1024)] == [25, 9, 1]
    ref_classes, ref_layers = _run(scene, tmp_path / "b1024.gpkg", block=1024, **base)
    assert sum(map(len, ref_layers.values())) > 10, "the scene must give polygons to compare"
    for block in (128, 256):
        classes, layers = _run(scene, tmp_path / f"b{block}.gpkg", block=block, **base)
        assert np.array_equal(classes, ref_classes), (
            f"block {block}: {(classes != ref_classes).mean():.5%} of pixels differ"
        )
        assert layers == ref_layers, f"block {block} gives other polygons or centrelines"


def test_centrelines_and_another_class_smoothing_do_not_change_a_class(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    """Both widen the halo: the road polygons and pixels stay the same.

    Water comes from another method (NDWI), so its smoothing changes nothing of the roads
    model's but the halo every block reads.
    """
    scene, _ = make_scene(600, 700, seed=12)
    base = {
        "classes": ("roads", "water"),
        "models": ("ndwi:0.0", str(tiny_model)),
        "sensor": "naip",
        "inference": FP32,
        "block": 256,
    }
    water_opened = ("water.open_radius_m=200",)
    halos = {
        plan_run(scene, RunConfig(**kw)).tiling.halo_px  # type: ignore[arg-type]
        for kw in (base, {**base, "centerlines": False}, {**base, "smooth_params": water_opened})
    }
    assert len(halos) == 3, f"the three runs must read different halos, got {halos}"
    ref_classes, ref_layers = _run(scene, tmp_path / "ref.gpkg", **base)
    assert len(ref_layers["roads"]) > 3
    classes, layers = _run(scene, tmp_path / "nocl.gpkg", centerlines=False, **base)
    assert np.array_equal(classes, ref_classes), "--no-centerlines changed the class raster"
    assert layers["roads"] == ref_layers["roads"], "--no-centerlines changed the road polygons"
    assert layers["water"] == ref_layers["water"]
    classes, layers = _run(scene, tmp_path / "water.gpkg", smooth_params=water_opened, **base)
    assert layers["roads"] == ref_layers["roads"], "smoothing water changed the road polygons"
    assert layers["roads_centerlines"] == ref_layers["roads_centerlines"]
    # Roads are named first, so they win every pixel they claim whatever water does.
    assert np.array_equal(classes == 1, ref_classes == 1), "smoothing water moved road pixels"
    assert layers["water"] != ref_layers["water"], "the water option must change water"


def test_blocked_run_is_whole_image_tiled_inference_at_every_pixel(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    """Seam-free at 100 %: the same tiles and the same blend as one pass over the scene."""
    scene, _ = make_scene(600, 700, seed=3)
    config = RunConfig(
        classes=("water", "roads"),
        models=(str(tiny_model),),
        inference=FP32,
        smooth="none",
        block=256,
    )
    assert len(plan_run(scene, config).blocks) >= 6
    with rasterio.open(run_scene(scene, tmp_path / "out.gpkg", config).raster) as src:
        blocked = src.read(1)
    seg = load_segmenter(tiny_model, options=FP32)
    assert isinstance(seg, TorchSegmenter)
    image, valid = read_window(
        str(scene), PixelWindow(row_off=0, col_off=0, height=600, width=700), bands=(1, 2, 3, 4)
    )
    whole = seg.predict(image, valid).argmax(axis=0)
    assert np.array_equal(blocked, np.select([whole == 1, whole == 2], [1, 2], 0))


def test_a_model_read_at_its_own_pixel_size_is_layout_free(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    """A 5 m scene for the 10 m tiny model: tiles lie on the model's grid over the scene."""
    scene, _ = make_scene(
        700, 600, seed=13, transform=Affine(5.0, 0.0, 500000.0, 0.0, -5.0, 4000000.0)
    )
    base = {"classes": ("water", "roads"), "models": (str(tiny_model),), "inference": FP32}
    assert plan_run(scene, RunConfig(**base)).models[0].grid is not None  # type: ignore[arg-type]
    ref_classes, ref_layers = _run(scene, tmp_path / "b1024.gpkg", block=1024, **base)
    assert len(ref_layers["roads"]) > 3
    classes, layers = _run(scene, tmp_path / "b256.gpkg", block=256, centerlines=False, **base)
    assert np.array_equal(classes, ref_classes)
    assert layers["roads"] == ref_layers["roads"]
    assert layers["water"] == ref_layers["water"]


@pytest.mark.parametrize("block", [512, 1024])
def test_shipped_roads_model_on_naip_is_layout_free(block: int, tmp_path: Path) -> None:
    """The default roads model on the NAIP sample (768 x 768 px): blocks of 512, 1024 and
    2048 px, with and without centrelines, give the same raster and polygons."""
    scene = SAMPLES / "naip_rochester_mn.tif"
    base = {"classes": ("roads",), "inference": FP32}
    ref_classes, ref_layers = _run(scene, tmp_path / "ref.gpkg", block=2048, **base)
    assert len(ref_layers["roads"]) > 0
    classes, layers = _run(scene, tmp_path / "b.gpkg", block=block, **base)
    assert np.array_equal(classes, ref_classes)
    assert layers == ref_layers
    classes, layers = _run(scene, tmp_path / "nocl.gpkg", block=block, centerlines=False, **base)
    assert np.array_equal(classes, ref_classes)
    assert layers["roads"] == ref_layers["roads"]
