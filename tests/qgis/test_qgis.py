"""The outputs in real QGIS: valid layers, the scene's CRS, default styles applied, a render.

QGIS's Python bindings live in the system Python (Debian: python3-qgis), not in the venv,
so the check runs as a subprocess of that interpreter (qgis_check.py) and reports JSON.
Everything expected is derived from the run: the CRS from the scene, the colours from the
model card, alpha and line widths from the styles stored in the GeoPackage, areas and
lengths from the features. The rendered PNGs (the whole map, then each layer alone) and the
report are written to ``test-artifacts/qgis/`` (or ``$GEOSEG_ARTIFACTS/qgis``) before any
assertion, so a failure leaves them to look at.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from geoseg.config import RunConfig
from geoseg.models.card import read_card
from geoseg.run.pipeline import run_scene
from geoseg.vectorize.styles import AREA_UNDER_LINES_TINT, CENTERLINE_SHADE, shade, tint

QGIS_PYTHON = os.environ.get("GEOSEG_QGIS_PYTHON", "/usr/bin/python3")
CHECK = Path(__file__).with_name("qgis_check.py")
ARTIFACTS = Path(
    os.environ.get("GEOSEG_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
TOLERANCE = 3  # per channel: QGIS rounds alpha blending


def _has_qgis() -> bool:
    if not Path(QGIS_PYTHON).exists():
        return False
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=60)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _has_qgis(), reason="QGIS Python bindings (python3-qgis) not installed"),
]


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")[-6:]
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _style_rgb(qgis_color: str) -> tuple[int, int, int]:
    """``"227,26,28,255"`` (a QML colour) -> ``(227, 26, 28)``."""
    r, g, b = (int(v) for v in qgis_color.split(",")[:3])
    return r, g, b


def _argb(rgb: tuple[int, int, int], alpha: int) -> str:
    return "#{:02x}{:02x}{:02x}{:02x}".format(alpha, *rgb)


def _over(
    rgb: tuple[int, int, int], alpha: int, under: tuple[int, int, int]
) -> tuple[int, int, int]:
    a = alpha / 255
    r, g, b = (round(c * a + u * (1 - a)) for c, u in zip(rgb, under))
    return r, g, b


def _over_white(rgb: tuple[int, int, int], alpha: int) -> tuple[int, int, int]:
    return _over(rgb, alpha, (255, 255, 255))


def _count(histogram: list[list[object]], rgb: tuple[int, int, int]) -> int:
    """Opaque pixels of colour ``rgb`` (within the blending tolerance) in a render."""
    total = 0
    for colour, n in histogram:
        argb = str(colour)
        if argb[1:3] == "ff" and max(abs(a - b) for a, b in zip(_rgb(argb), rgb)) <= TOLERANCE:
            total += int(n)  # type: ignore[call-overload]
    return total


def _stored_style(gpkg: Path, layer: str) -> dict[str, str]:
    """The symbol-layer properties of ``layer``'s default style in ``layer_styles``."""
    with sqlite3.connect(gpkg) as db:
        (qml,) = db.execute(
            "SELECT styleQML FROM layer_styles WHERE f_table_name = ? AND useAsDefault", (layer,)
        ).fetchone()
    props = ET.fromstring(qml).find(".//symbol/layer/Option")
    assert props is not None, f"no symbol properties in the style of {layer}"
    return {o.attrib["name"]: o.attrib["value"] for o in props}


def _mm_to_px(mm: str, dpi: float) -> float:
    return float(mm) * dpi / 25.4


def test_outputs_open_valid_and_styled_in_qgis(
    tiny_model: Path, make_scene: Callable[..., tuple[Path, object]], tmp_path: Path
) -> None:
    scene, _ = make_scene(640, 700, seed=6)  # > one 512 COG block: overviews exist
    config = RunConfig(classes=("water", "roads"), models=(str(tiny_model),), block=256)
    summary = run_scene(scene, tmp_path / "qgis.gpkg", config)
    assert summary.raster is not None
    out = ARTIFACTS / "qgis"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("render*.png"):
        old.unlink()  # a stale render must not pass for this run's
    png = out / "render.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    os.chmod(tmp_path, 0o700)  # Qt wants a private runtime directory
    proc = subprocess.run(
        [QGIS_PYTHON, str(CHECK), str(summary.gpkg), str(summary.raster), str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    (out / "report.json").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(report["render"]["png"]) == png and png.stat().st_size > 0

    with rasterio.open(scene) as src:
        authority = src.crs.to_authority()
    assert authority is not None
    scene_crs = ":".join(authority)
    card = {c.name: _rgb(c.color) for c in read_card(tiny_model).classes}
    layers = report["layers"]
    lines = {layer: layer.removesuffix("_centerlines") for layer in summary.line_layers}
    assert lines, "roads come with a centreline layer"
    assert set(layers) == set(config.classes) | set(lines)
    for name, layer in layers.items():
        assert layer["valid"], name
        assert layer["crs"] == scene_crs, name
        assert layer["features"] == summary.features[name] > 0, name
        assert layer["styles_in_db"] >= 1
        assert layer["renderer"] == "singleSymbol"

    # The default style from layer_styles is applied: QGIS's renderer has the colours and
    # alpha the stored style gives. A class with centrelines (roads) is a light tint of its
    # card colour without outline; the others fill and outline in the card colour. The
    # centrelines are a darker shade of the card colour, apart from the fill under them.
    styles = {name: _stored_style(summary.gpkg, name) for name in layers}
    fills: dict[str, tuple[int, int, int]] = {}
    for name in config.classes:
        fills[name] = _style_rgb(styles[name]["color"])
        alpha = int(styles[name]["color"].split(",")[3])
        assert layers[name]["fill_color"] == _argb(fills[name], alpha)
        assert layers[name]["stroke_color"] == _argb(card[name], 255)
        if name in lines.values():
            assert styles[name]["outline_style"] == "no"
            assert fills[name] == _rgb(tint(_hex(card[name]), AREA_UNDER_LINES_TINT))
        else:
            assert fills[name] == card[name], "style colour = card colour"
            assert styles[name]["outline_style"] == "solid"
    line_rgb: dict[str, tuple[int, int, int]] = {}
    for layer_name, name in lines.items():
        line_rgb[layer_name] = _style_rgb(styles[layer_name]["line_color"])
        assert line_rgb[layer_name] == _rgb(shade(_hex(card[name]), CENTERLINE_SHADE))
        assert layers[layer_name]["fill_color"] == _argb(line_rgb[layer_name], 255)
        over = _over_white(fills[name], int(styles[name]["color"].split(",")[3]))
        assert sum(a - b for a, b in zip(over, line_rgb[layer_name])) > 200, "lines stand out"

    raster = report["raster"]
    assert raster["valid"] and raster["crs"] == scene_crs and raster["overviews"]
    palette = dict((int(v), c) for v, c in raster["palette"])
    assert palette[0] == "#00000000", "background transparent (QML sidecar)"
    for value, name in enumerate(config.classes, start=1):
        assert palette[value] == _argb(card[name], 255)

    # Not blank, and right: each layer rendered alone on white paints its features, in its
    # colours, where they are. Counts are pixels at the render's scale.
    mupp = report["render"]["map_units_per_pixel"]
    dpi = report["render"]["dpi"]
    for name in config.classes:
        render = report["solo"][name]
        geoms = pyogrio.read_dataframe(summary.gpkg, layer=name).geometry.values
        area = float(shapely.area(geoms).sum()) / mupp**2
        perimeter = float(shapely.length(shapely.boundary(geoms)).sum()) / mupp
        drawn_outline = styles[name]["outline_style"] != "no"
        outline = _mm_to_px(styles[name]["outline_width"], dpi) if drawn_outline else 0.0
        alpha = int(styles[name]["color"].split(",")[3])
        fill = _count(render["colours"], _over_white(fills[name], alpha))
        stroke = _count(render["colours"], card[name])
        painted = render["width"] * render["height"] - _count(render["colours"], (255, 255, 255))
        what = f"{name}: {area:.0f} px of polygons, {perimeter:.0f} px of outline"
        assert fill >= 0.5 * max(0.0, area - perimeter * outline), f"{what}; fill {fill} px"
        if drawn_outline:
            assert stroke >= 0.5 * perimeter, f"{what}; outline colour {stroke} px"
        else:
            assert stroke == 0, f"{what}; no outline, yet {stroke} px of outline colour"
        # Painted: the polygons and the outer half of their outline (plus antialiasing).
        assert 0.95 * area <= painted <= area + perimeter * (outline / 2 + 1.5), (
            f"{what}; {painted} px painted"
        )
    for layer_name in lines:
        render = report["solo"][layer_name]
        geoms = pyogrio.read_dataframe(summary.gpkg, layer=layer_name).geometry.values
        length = float(shapely.length(geoms).sum()) / mupp
        width = _mm_to_px(styles[layer_name]["line_width"], dpi)
        drawn = _count(render["colours"], line_rgb[layer_name])
        painted = render["width"] * render["height"] - _count(render["colours"], (255, 255, 255))
        assert drawn >= 0.5 * length, f"{layer_name}: {length:.0f} px of lines, {drawn} drawn"
        assert painted <= length * (width + 2) + 100, f"{layer_name}: {painted} px painted"
    # The class raster alone: each class in its palette colour over about its share of the
    # map (nearest-neighbour resampling at another scale moves a few pixels).
    with rasterio.open(summary.raster) as src:
        classes = src.read(1)
        pixel_area = abs(src.transform.a * src.transform.e)
    render = report["solo"]["classes"]
    for value, name in enumerate(config.classes, start=1):
        expected = np.count_nonzero(classes == value) * pixel_area / mupp**2
        got = _count(render["colours"], card[name])
        assert got == pytest.approx(expected, rel=0.1), f"{name} in the class raster render"
    # The whole map shows every class: in its card colour, or (a class with centrelines,
    # whose light fill covers the class raster) as its centrelines, drawn in their colour
    # or seen through the fill (this check stacks the layers in table order).
    for name in config.classes:
        assert _count(report["render"]["colours"], card[name]) > 0 or name in lines.values()
    for layer_name, name in lines.items():
        alpha = int(styles[name]["color"].split(",")[3])
        seen = _count(report["render"]["colours"], line_rgb[layer_name]) + _count(
            report["render"]["colours"], _over(fills[name], alpha, line_rgb[layer_name])
        )
        assert seen > 0, f"{layer_name} on the whole map"
