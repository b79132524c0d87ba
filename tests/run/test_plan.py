"""Planning a run: blocks that cover the scene, and one clear error for what cannot run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geoseg.config import InferenceOptions, RunConfig
from geoseg.errors import (
    BandError,
    ClassNotAvailableError,
    ConfigError,
    GeosegError,
    SceneReadError,
)
from geoseg.run.plan import RunPlan, plan_run
from geoseg.tiling.io import write_array
from tests.helpers import UTM_TRANSFORM

MakeScene = Callable[..., tuple[Path, object]]

NDWI = RunConfig(
    classes=("water",),
    models=("ndwi:0.3",),
    sensor="naip",  # the synthetic scenes are blue, green, red, nir
    block=64,
    inference=InferenceOptions(tile=64, overlap=16),
)


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, GeosegError)
    return text


def _check_blocks(plan: RunPlan) -> None:
    """Cores partition the scene; each read window is its core grown by at least the halo."""
    h, w = plan.scene.height, plan.scene.width
    halo = plan.tiling.halo_px
    covered = np.zeros((h, w), dtype=np.int32)
    assert [b.index for b in plan.blocks] == list(range(len(plan.blocks)))
    for b in plan.blocks:
        c, r = b.core, b.read
        assert 0 <= c.row_off < c.row_end <= h and 0 <= c.col_off < c.col_end <= w
        covered[c.row_off : c.row_end, c.col_off : c.col_end] += 1
        assert r.row_off <= c.row_off - halo and r.row_end >= c.row_end + halo
        assert r.col_off <= c.col_off - halo and r.col_end >= c.col_end + halo
        # the model sees at least one whole tile
        assert r.height >= plan.tiling.tile and r.width >= plan.tiling.tile
        # inner borders (where polygons are merged) are exactly the sides inside the scene
        assert b.open_sides == (c.row_off > 0, c.row_end < h, c.col_off > 0, c.col_end < w)
    assert covered.min() == 1 and covered.max() == 1


@pytest.mark.parametrize(("height", "width"), [(150, 170), (64, 64), (33, 200), (211, 97)])
def test_block_cores_cover_every_pixel_once(make_scene: MakeScene, height: int, width: int) -> None:
    scene, _ = make_scene(height, width)
    plan = plan_run(scene, NDWI)
    _check_blocks(plan)
    assert plan.scene.height == height and plan.scene.width == width
    if height > 100 and width > 100:
        assert len(plan.blocks) > 1  # the unit of work is the block, not the scene


def test_a_big_block_is_one_block_and_the_card_s_tile_plan_applies(make_scene: MakeScene) -> None:
    scene, _ = make_scene(150, 170)
    plan = plan_run(scene, RunConfig(classes=("water",), models=("ndwi:0.3",), sensor="naip"))
    (use,) = plan.models
    assert use.tile == use.card.tile_size and use.overlap == use.card.overlap
    assert len(plan.blocks) == 1
    _check_blocks(plan)
    # the user's tile plan wins over the card's
    (small,) = plan_run(scene, NDWI).models
    assert (small.tile, small.overlap) == (64, 16)


def test_the_plan_names_what_feeds_each_class(make_scene: MakeScene) -> None:
    scene, _ = make_scene(80, 90)
    plan = plan_run(scene, NDWI)
    (use,) = plan.models
    assert use.source == "ndwi:0.3" and use.outputs == (("water", 1),)
    assert use.bands == (2, 4)  # green and nir of a blue, green, red, nir scene
    assert plan.classes == ("water",)
    assert plan.pixel_size_m == pytest.approx((10.0, 10.0), rel=1e-3)


def test_options_in_metres_become_pixels_of_this_scene(make_scene: MakeScene) -> None:
    scene, _ = make_scene(80, 90)
    base = RunConfig(classes=("water",), models=("ndwi:0.3",), sensor="naip")
    plan = plan_run(scene, replace(base, simplify_m=25.0, min_area_m2=500))
    assert plan.simplify_px == pytest.approx(2.5, rel=1e-3)  # 10 m pixels
    assert plan.min_area_m2 == 500
    assert plan_run(scene, base).simplify_px == 0.0


def test_a_class_no_model_provides_is_one_clear_error(make_scene: MakeScene) -> None:
    scene, _ = make_scene(64, 64)
    config = RunConfig(classes=("water", "buildings"), models=("ndwi:0.3",), sensor="naip")
    with pytest.raises(ClassNotAvailableError) as err:
        plan_run(scene, config)
    text = _one_line(err)
    assert "'buildings'" in text and "available: water" in text and "model" in text
    assert isinstance(err.value, ValueError)


def test_a_class_without_a_default_model_lists_the_classes_that_have_one(
    make_scene: MakeScene,
) -> None:
    scene, _ = make_scene(64, 64)
    with pytest.raises(ClassNotAvailableError) as err:
        plan_run(scene, RunConfig(classes=("buildings",), sensor="naip"))
    text = _one_line(err)
    assert "'buildings'" in text and "water" in text and "--model" in text


def test_a_scene_with_too_few_bands_says_what_the_model_needs(tmp_path: Path) -> None:
    scene = tmp_path / "one_band.tif"
    write_array(
        scene, np.ones((1, 40, 40), dtype=np.uint16), crs="EPSG:32617", transform=UTM_TRANSFORM
    )
    with pytest.raises(BandError) as err:
        plan_run(scene, RunConfig(classes=("water",), models=("ndwi:0.3",)))
    text = _one_line(err)
    assert "1 band" in text and "needs 2" in text and "green" in text and "nir" in text
    # without a model, the defaults that were passed over are named with the fix
    with pytest.raises(BandError) as err:
        plan_run(scene, RunConfig(classes=("water",)))
    assert "--bands" in _one_line(err)


def test_a_missing_or_unreadable_scene_is_a_scene_read_error(tmp_path: Path) -> None:
    with pytest.raises(SceneReadError, match="does not exist") as err:
        plan_run(tmp_path / "missing.tif", NDWI)
    _one_line(err)
    notes = tmp_path / "notes.tif"
    notes.write_text("not a raster")
    with pytest.raises(SceneReadError, match="as a raster") as err:
        plan_run(notes, NDWI)
    assert isinstance(err.value, OSError)


def test_option_combinations_that_cannot_run_are_refused_with_the_fix(
    make_scene: MakeScene,
) -> None:
    scene, _ = make_scene(64, 64)
    with pytest.raises(ConfigError, match="--bands maps scene bands onto one model"):
        plan_run(scene, RunConfig(classes=("water",), bands=(2, 4)))
    strays = RunConfig(
        classes=("water",),
        models=("ndwi:0.3",),
        sensor="naip",
        smooth_params=("roads.close_radius_m=3",),
    )
    with pytest.raises(ConfigError, match=r"name class 'roads'.*classes: water"):
        plan_run(scene, strays)


def test_a_model_with_several_classes_serves_them_in_the_requested_order(
    make_scene: MakeScene, tiny_model: Path
) -> None:
    scene, _ = make_scene(150, 170)
    config = RunConfig(classes=("roads", "water"), models=(str(tiny_model),), block=64)
    plan = plan_run(scene, config)
    (use,) = plan.models
    assert use.outputs == (("roads", 2), ("water", 1))
    assert plan.colors == ("#e31a1c", "#1f78b4")  # the card's colours, per requested class
    assert use.bands == (1, 2, 3, 4)
    _check_blocks(plan)


def test_road_centrelines_widen_the_halo_so_blocks_agree(
    make_scene: MakeScene, tiny_model: Path
) -> None:
    scene, _ = make_scene(150, 170)
    base = RunConfig(classes=("roads",), models=(str(tiny_model),), block=64)
    lines = plan_run(scene, replace(base, centerlines=True, prune_m=20.0))
    none = plan_run(scene, replace(base, centerlines=False))
    longer = plan_run(scene, replace(base, centerlines=True, prune_m=60.0))
    assert lines.centerlines == ("roads",) and none.centerlines == ()
    assert none.tiling.halo_px < lines.tiling.halo_px < longer.tiling.halo_px
    for plan in (lines, none, longer):
        _check_blocks(plan)
    # water has no centrelines: asking for them changes nothing
    water = replace(base, classes=("water",))
    with_lines = plan_run(scene, replace(water, centerlines=True))
    assert with_lines.centerlines == ()
    assert with_lines.tiling == plan_run(scene, replace(water, centerlines=False)).tiling
