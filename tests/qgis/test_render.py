"""What a user sees in QGIS: the styled layers drawn over the scene, told apart.

``tools/render_qgis.py`` (run by the system Python with the QGIS bindings) draws the scene
and a GeoPackage's layers with their stored default styles to a PNG; the scene is also drawn
alone at the same extent and size, so each map pixel's expected colour is known: the road
area blends its light fill over the scene, the centrelines are their own dark colour, and
a crop field's edge is its outline colour. The PNGs are written to
``test-artifacts/qgis/`` (or ``$GEOSEG_ARTIFACTS/qgis``) before any assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.errors
import shapely
from affine import Affine
from rasterio.features import rasterize

from geoseg.config import RunConfig
from geoseg.run.pipeline import run_scene
from geoseg.vectorize.gpkg import GeoPackageWriter
from geoseg.vectorize.styles import polygon_qml
from tests.qgis.test_qgis import ARTIFACTS, QGIS_PYTHON, _has_qgis, _stored_style, _style_rgb

RENDER = Path(__file__).resolve().parents[2] / "tools" / "render_qgis.py"
SCALE = 3  # map pixels per scene pixel: roads a few scene pixels wide get an inside
TOLERANCE = 4  # per channel: QGIS blends in premultiplied 8-bit

pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _has_qgis(), reason="QGIS Python bindings (python3-qgis) not installed"),
]


def _render(scene: Path, gpkg: Path, png: Path, tmp: Path, *extra: str) -> tuple[np.ndarray, dict]:
    with rasterio.open(scene) as src:
        size = f"{src.width * SCALE}x{src.height * SCALE}"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp)}
    env.pop("PYTHONPATH", None)
    os.chmod(tmp, 0o700)  # Qt wants a private runtime directory
    args = ["--scene", str(scene), "--gpkg", str(gpkg), "--out", str(png), "--size", size]
    proc = subprocess.run(
        [QGIS_PYTHON, str(RENDER), *args, "--rgb", "3,2,1", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(png) as img:
            rgb = img.read([1, 2, 3]).transpose(1, 2, 0).astype(np.int32)
    return rgb, report


def _grid(report: dict) -> tuple[object, tuple[int, int]]:
    xmin, _, _, ymax = report["extent"]
    mupp = report["map_units_per_pixel"]
    return Affine(mupp, 0, xmin, 0, -mupp, ymax), (report["height"], report["width"])


def _mask(geoms: np.ndarray, report: dict) -> np.ndarray:
    transform, shape = _grid(report)
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return rasterize(geoms, out_shape=shape, transform=transform, dtype="uint8").astype(bool)


def _close(pixels: np.ndarray, rgb: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    return np.all(np.abs(pixels - np.asarray(rgb)) <= TOLERANCE, axis=-1)


def _px_m(report: dict, mm: str) -> float:
    """A width in millimetres on the map, in map units."""
    return float(mm) * report["dpi"] / 25.4 * report["map_units_per_pixel"]


def test_roads_render_as_a_light_area_under_distinct_dark_centrelines(
    tiny_model: Path, make_scene: Callable[..., tuple[Path, object]], tmp_path: Path
) -> None:
    scene, _ = make_scene(160, 200, seed=6)
    config = RunConfig(classes=("water", "roads"), models=(str(tiny_model),), block=128)
    summary = run_scene(scene, tmp_path / "render.gpkg", config)
    out = ARTIFACTS / "qgis"
    out.mkdir(parents=True, exist_ok=True)
    full, report = _render(scene, summary.gpkg, out / "roads_over_scene.png", tmp_path)
    base, _ = _render(scene, summary.gpkg, out / "scene_alone.png", tmp_path, "--layers", "none")
    assert report["layers"]["roads"]["default_style_loaded"]
    assert report["layers"]["roads_centerlines"]["default_style_loaded"]

    area = _stored_style(summary.gpkg, "roads")
    line = _stored_style(summary.gpkg, "roads_centerlines")
    fill, alpha = _style_rgb(area["color"]), int(area["color"].split(",")[3]) / 255
    line_rgb = _style_rgb(line["line_color"])
    half_line = _px_m(report, line["line_width"]) / 2
    pixel = report["map_units_per_pixel"]
    roads = pyogrio.read_dataframe(summary.gpkg, layer="roads").geometry.values
    lines = pyogrio.read_dataframe(summary.gpkg, layer="roads_centerlines").geometry.values
    assert len(roads) and len(lines), "the tiny model finds roads in this scene"

    # On a centreline: the line's own colour, whatever is under it.
    core = _mask(shapely.buffer(lines, 0.4 * half_line), report)
    on_line = _close(full[core], line_rgb)
    assert on_line.mean() > 0.9, f"{on_line.mean():.0%} of centreline pixels in its colour"
    # On the road area, clear of lines and edges: the light fill blended over the scene.
    clear = _mask(shapely.buffer(roads, -2 * pixel), report) & ~_mask(
        shapely.buffer(lines, half_line + 2 * pixel), report
    )
    assert clear.sum() > 50, "some road area is visible beside the lines"
    expected = base[clear] * (1 - alpha) + np.asarray(fill) * alpha
    blended = np.all(np.abs(full[clear] - expected) <= TOLERANCE, axis=-1)
    assert blended.mean() > 0.9, f"{blended.mean():.0%} of road area pixels show the fill"
    # Told apart: the centreline colour is far from what the road area looks like.
    gap = np.abs(full[clear] - np.asarray(line_rgb)).sum(axis=-1)
    assert np.median(gap) > 150, f"centrelines vs road area: median colour distance {gap}"
    assert not _close(full[clear], line_rgb).any(), "no road area pixel looks like a line"


def test_touching_crop_fields_render_as_separate_outlined_parcels(
    make_scene: Callable[..., tuple[Path, object]], tmp_path: Path
) -> None:
    scene, _ = make_scene(80, 100, seed=1)
    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    # Two fields sharing an edge down the middle of the scene, inset from its border.
    mid = (left + right) / 2
    fields = shapely.box([left + 100, mid], [bottom + 100] * 2, [mid, right - 100], [top - 100] * 2)
    gpkg = tmp_path / "fields.gpkg"
    writer = GeoPackageWriter(gpkg, crs=crs)
    writer.write_layer("crops", fields, {"class": np.array(["crops"] * 2, dtype=object)})
    writer.write_styles({"crops": (polygon_qml("crops", "#e49635"), "crops")})
    writer.commit()
    out = ARTIFACTS / "qgis"
    out.mkdir(parents=True, exist_ok=True)
    full, report = _render(scene, gpkg, out / "crop_fields_over_scene.png", tmp_path)
    base, _ = _render(
        scene, gpkg, out / "crop_fields_scene_alone.png", tmp_path, "--layers", "none"
    )

    style = _stored_style(gpkg, "crops")
    outline = _style_rgb(style["outline_color"])
    alpha = int(style["color"].split(",")[3]) / 255
    half = _px_m(report, style["outline_width"]) / 2
    pixel = report["map_units_per_pixel"]
    # The shared edge is drawn: a line of outline colour between the two fields.
    shared = shapely.LineString([(mid, bottom + 100 + 3 * pixel), (mid, top - 100 - 3 * pixel)])
    edge = _mask([shapely.buffer(shared, min(0.6 * pixel, 0.8 * half))], report)
    assert edge.any()
    assert _close(full[edge], outline).mean() > 0.9, "the edge between the fields is outlined"
    # Inside, the field itself shows through: a faint fill changes the scene only a little.
    inside = _mask(shapely.buffer(fields, -(half + 3 * pixel)), report)
    change = np.abs(full[inside] - base[inside]).max(axis=-1)
    assert alpha <= 40 / 255 and np.percentile(change, 90) <= 255 * alpha + TOLERANCE
    assert not _close(full[inside], outline).any(), "no outline colour inside a field"
