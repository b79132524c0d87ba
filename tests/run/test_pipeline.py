"""End-to-end runs on real files with a real (quickly trained) model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

from geoseg.config import InferenceOptions, RunConfig
from geoseg.models.predictor import TorchSegmenter, load_segmenter
from geoseg.run.pipeline import NODATA_CLASS, plan_run, run_scene
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_window, write_array
from tests.helpers import synthetic_image

FP32 = InferenceOptions(precision="fp32")


def _config(model: Path, **kw: object) -> RunConfig:
    base: dict[str, object] = {"classes": ("water", "roads"), "models": (str(model),), "block": 256}
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


def test_blocked_run_agrees_with_whole_image_inference(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(600, 700, seed=3)
    config = _config(tiny_model, inference=FP32, smooth="none")
    plan = plan_run(scene, config)
    assert len(plan.blocks) >= 6, (
        "the scene must span several blocks for this test to mean anything"
    )
    summary = run_scene(scene, tmp_path / "out.gpkg", config)
    with rasterio.open(summary.raster) as src:
        blocked = src.read(1)
    seg = load_segmenter(tiny_model, options=FP32)
    assert isinstance(seg, TorchSegmenter)
    image, valid = read_window(
        str(scene), PixelWindow(row_off=0, col_off=0, height=600, width=700), bands=(1, 2, 3, 4)
    )
    whole = seg.predict_whole(image, valid).argmax(axis=0)
    whole_classes = np.select([whole == 1, whole == 2], [1, 2], 0)
    agreement = float((blocked == whole_classes).mean())
    assert agreement >= 0.999, f"blocked vs whole-image agreement {agreement:.5f} < 0.999"


def test_gpkg_layers_crs_and_features(tiny_model: Path, make_scene, tmp_path: Path) -> None:
    scene, truth = make_scene(300, 320, seed=5)
    summary = run_scene(scene, tmp_path / "o.gpkg", _config(tiny_model))
    layers = dict(pyogrio.list_layers(summary.gpkg))
    assert {k: v for k, v in layers.items() if v} == {
        "water": "Polygon",
        "roads": "Polygon",
        "roads_centerlines": "LineString",
    }
    assert set(layers) == {
        "water",
        "roads",
        "roads_centerlines",
        "layer_styles",
        "geoseg_provenance",
    }
    with rasterio.open(scene) as src:
        scene_crs = src.crs
    for name, value in (("water", 1), ("roads", 2)):
        info = pyogrio.read_info(summary.gpkg, layer=name)
        assert rasterio.crs.CRS.from_user_input(info["crs"]) == scene_crs
        df = pyogrio.read_dataframe(summary.gpkg, layer=name)
        assert len(df) == summary.features[name] > 0
        assert set(df["class"]) == {name}
        assert shapely.is_valid(df.geometry.values).all()
        assert ((df.confidence > 0.5) & (df.confidence <= 1.0)).all()
        # features where expected: the polygons cover the true class (10 m pixels)
        truth_area = (truth == value).sum() * 100.0
        assert df.area_m2.sum() == pytest.approx(truth_area, rel=0.25)
    water = pyogrio.read_dataframe(summary.gpkg, layer="water")
    assert water.area_m2.to_numpy() == pytest.approx(water.geometry.area.to_numpy(), rel=3e-3), (
        "UTM areas ~ planar"
    )


def test_polygon_spanning_3x3_blocks_is_one_polygon(tiny_model: Path, tmp_path: Path) -> None:
    h = w = 700
    truth = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    lake = ((yy - 350) / 300.0) ** 2 + ((xx - 350) / 310.0) ** 2 < 1.0
    truth[lake] = 1
    scene = tmp_path / "lake.tif"
    write_array(
        scene,
        synthetic_image(truth, seed=7),
        crs="EPSG:32617",
        transform=Affine(10, 0, 500000, 0, -10, 4000000),
    )
    config = _config(tiny_model, classes=("water",), block=200)
    plan = plan_run(scene, config)
    lake_blocks = {
        (b.row, b.col)
        for b in plan.blocks
        if lake[b.core.row_off : b.core.row_end, b.core.col_off : b.core.col_end].any()
    }
    assert len(lake_blocks) >= 9
    summary = run_scene(scene, tmp_path / "lake.gpkg", config)
    df = pyogrio.read_dataframe(summary.gpkg, layer="water")
    big = df[df.area_m2 > 1e5]
    assert len(big) == 1, f"the lake came out as {len(big)} polygons"
    assert big.geometry.iloc[0].geom_type == "Polygon"
    assert big.area_m2.iloc[0] == pytest.approx(lake.sum() * 100.0, rel=0.01)


def test_nodata_gets_no_class_and_no_polygon(tiny_model: Path, tmp_path: Path) -> None:
    from tests.helpers import synthetic_truth

    truth = synthetic_truth(260, 260, seed=11)
    image = synthetic_image(truth, seed=11)
    image[:, :, :100] = 0  # a nodata stripe over water and land
    scene = tmp_path / "nd.tif"
    write_array(
        scene, image, crs="EPSG:32617", transform=Affine(10, 0, 500000, 0, -10, 4000000), nodata=0
    )
    summary = run_scene(scene, tmp_path / "nd.gpkg", _config(tiny_model, block=128))
    with rasterio.open(summary.raster) as src:
        classes = src.read(1)
        assert src.nodata == NODATA_CLASS
    assert (classes[:, :100] == NODATA_CLASS).all()
    assert (classes[:, 100:] != NODATA_CLASS).all()
    for layer in ("water", "roads"):
        df = pyogrio.read_dataframe(summary.gpkg, layer=layer)
        nodata_zone = shapely.box(500000, 4000000 - 2600, 500000 + 1000, 4000000)
        assert not df.geometry.intersection(nodata_zone).area.gt(1e-6).any()
    # the model still finds water next to the stripe
    right = truth[:, 100:]
    found = classes[:, 100:]
    iou = ((found == 1) & (right == 1)).sum() / ((found == 1) | (right == 1)).sum()
    assert iou > 0.9


def test_same_run_twice_gives_identical_output(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(300, 300, seed=2)
    a = run_scene(scene, tmp_path / "a.gpkg", _config(tiny_model, block=128))
    b = run_scene(scene, tmp_path / "b.gpkg", _config(tiny_model, block=128))
    for layer in ("water", "roads"):
        da = pyogrio.read_dataframe(a.gpkg, layer=layer)
        db = pyogrio.read_dataframe(b.gpkg, layer=layer)
        assert da.drop(columns="geometry").equals(db.drop(columns="geometry"))
        assert all(da.geometry.geom_equals_exact(db.geometry, 0))
    with rasterio.open(a.raster) as ra, rasterio.open(b.raster) as rb:
        assert (ra.read() == rb.read()).all()


def test_geographic_scene_polygons_land_in_place_with_metric_areas(
    tiny_model: Path, tmp_path: Path
) -> None:
    """An EPSG:4326 scene: polygons in degrees, area_m2 in square metres."""
    h = w = 200
    truth = np.zeros((h, w), dtype=np.uint8)
    truth[50:150, 60:140] = 1
    scene = tmp_path / "geo.tif"
    dx, dy = 9.0e-5, 9.0e-5
    transform = Affine(dx, 0, -76.7, 0, -dy, 34.7)
    write_array(scene, synthetic_image(truth, seed=4), crs="EPSG:4326", transform=transform)
    summary = run_scene(
        scene, tmp_path / "geo.gpkg", _config(tiny_model, classes=("water",), block=128)
    )
    df = pyogrio.read_dataframe(summary.gpkg, layer="water")
    big = df.loc[df.area_m2.idxmax()]
    minx, _, _, maxy = big.geometry.bounds
    assert minx == pytest.approx(-76.7 + 60 * dx, abs=3 * dx)
    assert maxy == pytest.approx(34.7 - 50 * dy, abs=3 * dy)
    # 100 x 80 pixels of ~8.2 m (x, at 34.7 N) by ~10.0 m (y)
    import pyproj

    geod = pyproj.Geod(ellps="WGS84")
    px_w = geod.inv(-76.7, 34.65, -76.7 + dx, 34.65)[2]
    px_h = geod.inv(-76.7, 34.65, -76.7, 34.65 + dy)[2]
    assert big.area_m2 == pytest.approx(100 * 80 * px_w * px_h, rel=0.03)


def _interrupt_after(blocks: int) -> Callable[[int, int], None]:
    """A progress callback that stops the run (as Ctrl-C does) after ``blocks`` blocks."""

    def progress(done: int, total: int) -> None:
        if done == blocks:
            raise KeyboardInterrupt

    return progress


def test_interrupted_run_resumes_without_recomputing(
    tiny_model: Path, make_scene, tmp_path: Path, monkeypatch
) -> None:
    import geoseg.run.pipeline as pipeline

    scene, _ = make_scene(360, 360, seed=8)
    config = _config(tiny_model, block=128)
    reference = run_scene(scene, tmp_path / "ref.gpkg", config)
    calls: list[int] = []
    real = pipeline.process_block

    def counting(plan, block, **kw):  # type: ignore[no-untyped-def]
        calls.append(block.index)
        return real(plan, block, **kw)

    monkeypatch.setattr(pipeline, "process_block", counting)

    out = tmp_path / "resumed.gpkg"
    with pytest.raises(KeyboardInterrupt):
        run_scene(scene, out, config, progress=_interrupt_after(4))
    assert not out.exists() and not out.with_name("resumed_classes.tif").exists()
    first = list(calls)
    calls.clear()
    summary = run_scene(scene, out, config, resume=True)
    assert summary.resumed_blocks == 4
    assert set(calls).isdisjoint(first[:4]), "completed blocks are not recomputed"
    assert len(calls) == summary.blocks - 4
    for layer in ("water", "roads"):
        a = pyogrio.read_dataframe(reference.gpkg, layer=layer)
        b = pyogrio.read_dataframe(out, layer=layer)
        assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
        assert all(a.geometry.geom_equals_exact(b.geometry, 0))
    with rasterio.open(reference.raster) as ra, rasterio.open(summary.raster) as rb:
        assert (ra.read() == rb.read()).all()
    assert not any(p.name.endswith(".journal") for p in tmp_path.iterdir()), (
        "journal removed when done"
    )


def test_resume_of_a_changed_job_starts_over(tiny_model: Path, make_scene, tmp_path: Path) -> None:
    scene, _ = make_scene(256, 256, seed=8)

    with pytest.raises(KeyboardInterrupt):
        run_scene(
            scene, tmp_path / "o.gpkg", _config(tiny_model, block=128), progress=_interrupt_after(2)
        )
    summary = run_scene(
        scene, tmp_path / "o.gpkg", _config(tiny_model, block=128, min_area_m2=500.0), resume=True
    )
    assert summary.resumed_blocks == 0


def test_bad_input_leaves_no_journal_even_after_completed_blocks(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The journal is for --resume after an interruption; a corrupt scene would fail again."""
    from geoseg.errors import SceneReadError
    from tests.tiling.test_io import write_truncated_scene

    # The first rows of blocks read (with their neighbours' tiles) far from the corrupt tile.
    cut = PixelWindow(row_off=688, col_off=688, height=16, width=16)
    scene = write_truncated_scene(tmp_path / "cut.tif", size=800, cut=cut)
    done: list[int] = []
    with pytest.raises(SceneReadError, match="Read error"):
        run_scene(
            scene,
            tmp_path / "o.gpkg",
            _config(tiny_model, block=128),
            progress=lambda d, total: done.append(d),
        )
    assert max(done) >= 2, "blocks were journalled before the corrupt one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif"]


def test_interrupted_run_keeps_its_journal(tiny_model: Path, make_scene, tmp_path: Path) -> None:
    scene, _ = make_scene(256, 256, seed=8)

    with pytest.raises(KeyboardInterrupt):
        run_scene(
            scene, tmp_path / "o.gpkg", _config(tiny_model, block=128), progress=_interrupt_after(2)
        )
    assert (tmp_path / ".o.gpkg.journal").exists()
    assert not (tmp_path / "o.gpkg").exists()


def test_report_has_stages_devices_and_memory(tiny_model: Path, make_scene, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from geoseg.cli import main

    scene, _ = make_scene(200, 200, seed=1)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(scene),
            "--classes",
            "water",
            "-m",
            str(tiny_model),
            "-o",
            str(tmp_path / "r.gpkg"),
            "--scheduler",
            "sync",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(report.read_text())
    stages = {"read", "model_load", "predict", "blend", "smooth", "vectorize", "write"}
    assert set(body["stage_seconds"]) >= stages
    assert 0 < body["model_busy"] <= 1
    assert body["devices"] == ["cpu"]
    assert body["peak_rss_mb"]["total"] > 50
    assert body["throughput_mpx_per_s"] > 0
    assert "peak memory" in result.output and "Mpx/s on cpu" in result.output
    assert "model busy" in result.output


@pytest.mark.parametrize("method", ["morph", "crf", "crf+morph"])
def test_smoothing_is_seam_free_across_blocks(
    tiny_model: Path, make_scene, tmp_path: Path, method: str
) -> None:
    """Block-wise smoothing on core + halo agrees with smoothing the scene as one block."""
    scene, _ = make_scene(420, 440, seed=12)
    noisy = ("min_object_area_m2=3000", "max_hole_area_m2=3000")
    blocked_cfg = _config(tiny_model, block=128, smooth=method, smooth_params=noisy, inference=FP32)
    whole_cfg = _config(tiny_model, block=4096, smooth=method, smooth_params=noisy, inference=FP32)
    plan = plan_run(scene, blocked_cfg)
    assert len(plan.blocks) >= 9
    assert len(plan_run(scene, whole_cfg).blocks) == 1
    a = run_scene(scene, tmp_path / "blocked.gpkg", blocked_cfg)
    b = run_scene(scene, tmp_path / "whole.gpkg", whole_cfg)
    unsmoothed = run_scene(
        scene, tmp_path / "raw.gpkg", _config(tiny_model, block=4096, smooth="none", inference=FP32)
    )
    with (
        rasterio.open(a.raster) as ra,
        rasterio.open(b.raster) as rb,
        rasterio.open(unsmoothed.raster) as rr,
    ):
        blocked, whole, raw = ra.read(1), rb.read(1), rr.read(1)
    agreement = float((blocked == whole).mean())
    assert agreement >= 0.999, f"{method}: block-wise vs whole-scene agreement {agreement:.5f}"
    assert (whole != raw).sum() > 20, (
        "smoothing changed something, so the agreement means something"
    )


def test_bad_smoothing_options_fail_before_any_work(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    from geoseg.errors import ConfigError

    scene, _ = make_scene(64, 64)
    with pytest.raises(ConfigError, match="open_radius_m"):
        plan_run(scene, _config(tiny_model, smooth="morph", smooth_params=("opening=3",)))
    with pytest.raises(ConfigError, match="choose one of"):
        plan_run(scene, _config(tiny_model, smooth="blur"))


def test_road_centerlines_are_continuous_across_blocks(tiny_model: Path, tmp_path: Path) -> None:
    """A road cross spanning many blocks: the same connected centrelines as one block."""
    h = w = 480
    truth = np.zeros((h, w), dtype=np.uint8)
    truth[236:243, 20:460] = 2  # 7 px (70 m) wide roads at 10 m, crossing near the centre
    truth[20:460, 236:243] = 2
    scene = tmp_path / "cross.tif"
    write_array(
        scene,
        synthetic_image(truth, seed=5),
        crs="EPSG:32617",
        transform=Affine(10, 0, 500000, 0, -10, 4000000),
    )
    cfg = {"classes": ("roads",), "smooth": "none", "prune_m": 60.0}
    blocked = run_scene(scene, tmp_path / "b.gpkg", _config(tiny_model, block=128, **cfg))
    whole = run_scene(scene, tmp_path / "w.gpkg", _config(tiny_model, block=4096, **cfg))
    assert blocked.blocks >= 9 and whole.blocks == 1
    a = pyogrio.read_dataframe(blocked.gpkg, layer="roads_centerlines")
    b = pyogrio.read_dataframe(whole.gpkg, layer="roads_centerlines")
    assert len(a) == len(b) and all(a.geometry.geom_equals_exact(b.geometry, 1e-6))
    network = shapely.line_merge(shapely.union_all(a.geometry.values))
    assert shapely.get_num_geometries(network) <= 4, (
        "one cross: at most four arms from one junction"
    )
    assert a.length_m.sum() == pytest.approx(2 * 440 * 10.0, rel=0.05)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_peak_memory_is_the_process_own_not_its_parents() -> None:
    """A run started by a big parent must not report the parent's peak (ru_maxrss survives exec)."""
    import subprocess
    import sys

    ballast = np.ones(600 * 2**20, dtype=np.uint8)  # 600 MB resident in this (parent) process
    out = subprocess.run(
        [sys.executable, "-c", "from geoseg.run.memory import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ballast.sum() == ballast.size
    assert 5 < float(out.stdout) < 400


_FREES = """
import sys
import numpy as np
from geoseg.run.memory import release_freed_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

big = np.ones(20 << 20, dtype=np.uint8)  # freeing 20 MiB raises glibc's own threshold
del big
before = rss_mb()
arrays = [np.ones(4 << 20, dtype=np.uint8) for _ in range(40)]  # 160 MiB in 4 MiB arrays
live = arrays[1::2]  # the others are freed: holes between live blocks of a heap
del arrays
if sys.argv[1] == "trim":
    assert release_freed_memory()
print(rss_mb() - before - 80)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_client_gives_freed_block_memory_back() -> None:
    # glibc keeps freed heap memory for reuse: a client's per-block arrays would pile up in
    # its RSS. run_scene trims after every block. Any MALLOC_* variable turns glibc's moving
    # threshold off, so the baseline runs without them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def kept_mb(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _FREES, mode],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return float(out.stdout)

    assert kept_mb("keep") > 60  # glibc's default: the 80 MiB freed stay in RSS
    assert kept_mb("trim") < 10


def _ndwi(**kw: object) -> RunConfig:
    base: dict[str, object] = {
        "classes": ("water",),
        "models": ("ndwi",),
        "bands": (2, 4),
        "block": 64,
        "inference": InferenceOptions(tile=64),
    }
    return RunConfig(**(base | kw))  # type: ignore[arg-type]


def _same_outputs(a: Path, b: Path) -> None:
    da, db = (pyogrio.read_dataframe(p, layer="water") for p in (a, b))
    assert da.drop(columns="geometry").equals(db.drop(columns="geometry"))
    assert [g.wkb for g in da.geometry] == [g.wkb for g in db.geometry]
    ra, rb = (p.with_name(f"{p.stem}_classes.tif") for p in (a, b))
    with rasterio.open(ra) as sa, rasterio.open(rb) as sb:
        assert (sa.read() == sb.read()).all()


def test_a_full_disk_mid_run_keeps_only_the_journal_and_resume_finishes_identically(
    make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a traceback (and at the very start "no such table: gpkg_contents")."""
    import errno

    import geoseg.tiling.io
    from geoseg.errors import OutputWriteError

    scene, _ = make_scene(200, 200, seed=4)
    reference = run_scene(scene, tmp_path / "ref.gpkg", _ndwi())
    real_write = geoseg.tiling.io.RasterWriter.write
    calls: list[int] = []

    def write(self, array, window):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, array, window)

    monkeypatch.setattr(geoseg.tiling.io.RasterWriter, "write", write)
    out = tmp_path / "o.gpkg"
    with pytest.raises(OutputWriteError) as caught:
        run_scene(scene, out, _ndwi())
    assert str(caught.value) == (
        f"no space left on {str(tmp_path)!r}; free some space, then run the same command with "
        "--resume to reuse the finished blocks"
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))) == [
        ".o.gpkg.journal"
    ]
    monkeypatch.setattr(geoseg.tiling.io.RasterWriter, "write", real_write)
    summary = run_scene(scene, out, _ndwi(), resume=True)
    assert summary.resumed_blocks == 4
    _same_outputs(out, reference.gpkg)


def test_the_index_statistics_pass_is_journalled_and_not_redone_on_resume(
    make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a resumed run read the whole scene again for the Otsu threshold and moments."""
    import geoseg.run.pipeline as pipeline

    scene, _ = make_scene(200, 200, seed=4)
    reference = run_scene(scene, tmp_path / "ref.gpkg", _ndwi())
    passes: list[int] = []
    real = pipeline.prepare_spectral

    def counting(plan, *, client):  # type: ignore[no-untyped-def]
        passes.append(1)
        return real(plan, client=client)

    monkeypatch.setattr(pipeline, "prepare_spectral", counting)
    out = tmp_path / "o.gpkg"
    with pytest.raises(KeyboardInterrupt):
        run_scene(scene, out, _ndwi(), progress=_interrupt_after(0))
    assert passes == [1] and (tmp_path / ".o.gpkg.journal").exists()
    summary = run_scene(scene, out, _ndwi(), resume=True)
    assert passes == [1], "the statistics came from the journal"
    assert summary.resumed_blocks == 0
    _same_outputs(out, reference.gpkg)


def test_a_disk_full_when_the_journal_is_created_leaves_nothing(
    make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a traceback and an empty journal left beside the output."""
    import sqlite3

    from geoseg.errors import OutputWriteError

    scene, _ = make_scene(64, 64, seed=4)
    real = sqlite3.connect

    def full(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith(".journal"):
            db = real(path, *args, **kwargs)
            db.close()  # the file is created, then the disk is full
            raise sqlite3.OperationalError("database or disk is full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", full)
    with pytest.raises(OutputWriteError, match=r"^no space left on '.*'$"):
        run_scene(scene, tmp_path / "o.gpkg", _ndwi())
    assert sorted(p.name for p in tmp_path.iterdir()) == [scene.name]
