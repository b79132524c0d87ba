"""The outputs in real QGIS: valid layers, the scene's CRS, default styles applied, a render.

QGIS's Python bindings live in the system Python (Debian: python3-qgis), not in the venv,
so the check runs as a subprocess of that interpreter (qgis_check.py) and reports JSON.
The rendered PNG is kept in ``test-artifacts/qgis/`` (or ``$GEOSEG_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from geoseg.config import RunConfig
from geoseg.pipeline import run_scene

QGIS_PYTHON = os.environ.get("GEOSEG_QGIS_PYTHON", "/usr/bin/python3")
CHECK = Path(__file__).with_name("qgis_check.py")
ARTIFACTS = Path(
    os.environ.get("GEOSEG_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)


def _has_qgis() -> bool:
    if not Path(QGIS_PYTHON).exists():
        return False
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=60)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _has_qgis(), reason="QGIS Python bindings (python3-qgis) not installed"),
]


def _argb(color: str, alpha: int) -> str:
    return f"#{alpha:02x}{color.lstrip('#').lower()}"


def test_outputs_open_valid_and_styled_in_qgis(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(640, 700, seed=6)  # > one 512 COG block: overviews exist
    config = RunConfig(classes=("water", "roads"), models=(str(tiny_model),), block=256)
    summary = run_scene(scene, tmp_path / "qgis.gpkg", config)
    png = tmp_path / "render.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [QGIS_PYTHON, str(CHECK), str(summary.gpkg), str(summary.raster), str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    layers = report["layers"]
    assert set(layers) == {"water", "roads", "roads_centerlines"}
    colours = {"water": "#1f78b4", "roads": "#e31a1c"}
    for name, layer in layers.items():
        assert layer["valid"], name
        assert layer["crs"] == "EPSG:32617"
        assert layer["features"] == summary.features[name]
        assert layer["styles_in_db"] >= 1
        assert layer["renderer"] == "singleSymbol"
    for name, colour in colours.items():
        assert layers[name]["fill_color"] == _argb(colour, 110), (
            "default style from layer_styles applied"
        )
        assert layers[name]["stroke_color"] == _argb(colour, 255)
    assert layers["roads_centerlines"]["fill_color"] == _argb(colours["roads"], 255)
    raster = report["raster"]
    assert raster["valid"] and raster["crs"] == "EPSG:32617" and raster["overviews"]
    palette = dict((int(v), c) for v, c in raster["palette"])
    assert palette[0] == "#00000000", "background transparent (QML sidecar)"
    assert palette[1] == _argb(colours["water"], 255) and palette[2] == _argb(colours["roads"], 255)
    assert report["render"]["distinct_colours"] > 3, "the map is not blank"
    ARTIFACTS.joinpath("qgis").mkdir(parents=True, exist_ok=True)
    shutil.copy(png, ARTIFACTS / "qgis" / "render.png")
