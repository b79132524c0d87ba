"""No parameter makes a block's memory explode: the halo is bounded by the block, metric
parameters on a scene without a CRS whose pixels are degrees are refused."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geoseg.config import RunConfig
from geoseg.errors import ConfigError
from geoseg.run.plan import plan_run
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_window, write_array


def _scene(path: Path, *, crs: str | None, transform: Affine) -> Path:
    write_array(path, np.full((4, 64, 64), 1000, np.uint16), crs=crs, transform=transform)
    return path


def _config(**kw: object) -> RunConfig:
    base: dict[str, object] = {"classes": ("water",), "models": ("ndwi",), "bands": (2, 4)}
    return RunConfig(**(base | kw))  # type: ignore[arg-type]


def _planned_within(seconds: float, megabytes: float, fn) -> None:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert time.perf_counter() - t0 < seconds and peak < megabytes, (peak, seconds)


def test_degree_pixels_without_a_crs_refuse_metric_parameters(tmp_path: Path) -> None:
    """Before: 30 m radii at 9e-5 'm' per pixel asked for a 3.7-million-pixel halo, reached
    16 GB and died with a traceback in tiling/io.py _pad."""
    scene = _scene(tmp_path / "d.tif", crs=None, transform=Affine(9e-5, 0, -70, 0, -9e-5, 40))

    def plan() -> None:
        with pytest.raises(ConfigError) as caught:
            plan_run(scene, _config())
        assert str(caught.value) == (
            "d.tif has no CRS and its pixels are 9e-05 x 9e-05 units, too small to be metres "
            "(degrees?): smoothing in metres cannot be turned into pixels; assign the scene's "
            "CRS (gdal_edit.py -a_srs EPSG:4326 d.tif) or pass --smooth none"
        )

    _planned_within(5, 50, plan)
    # Nothing metric asked for: the run is planned on the pixels as they are.
    assert plan_run(scene, _config(smooth="none")).tiling.halo_px < 64


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("open_radius_m=1e6", r"open_radius_m=1e\+06 spans 99960 pixels at 10 m per pixel"),
        ("max_hole_area_m2=1e12", r"max_hole_area_m2=1e\+12 spans 99960 pixels"),
        ("close_radius_m=15000", r"smoothing needs a halo of \d+ pixels around each block"),
    ],
)
def test_a_huge_smoothing_parameter_is_refused_before_anything_is_allocated(
    tmp_path: Path, param: str, message: str
) -> None:
    """Before: a 1000 km opening built a 200001^2 footprint (320 GB) while planning."""
    scene = _scene(
        tmp_path / "u.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )

    def plan() -> None:
        with pytest.raises(ConfigError, match=message):
            plan_run(scene, _config(smooth_params=(param,)))

    _planned_within(5, 100, plan)


def test_the_halo_may_reach_the_block_size_but_not_beyond(tmp_path: Path) -> None:
    scene = _scene(
        tmp_path / "u.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )
    ok = plan_run(scene, _config(smooth_params=("close_radius_m=5000",), block=2048))
    assert 1000 < ok.tiling.halo_px <= ok.tiling.block
    with pytest.raises(ConfigError, match="more than the block itself"):
        plan_run(scene, _config(smooth_params=("close_radius_m=5000",), block=512))


def test_a_read_is_never_padded_past_the_bound(tmp_path: Path) -> None:
    scene = _scene(
        tmp_path / "u.tif", crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000)
    )
    far = PixelWindow(row_off=-20_000, col_off=0, height=20_064, width=64)
    with pytest.raises(ConfigError, match="padded by 20000 pixels beyond the scene"):
        read_window(str(scene), far, bands=(1,))
