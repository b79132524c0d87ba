"""Temporaries: new files under unpredictable names, never a link someone planted."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import geoseg.tiling.atomic
from geoseg.tiling.atomic import create_temporary, write_text_atomic
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import RasterWriter

PROFILE = {
    "driver": "GTiff",
    "width": 8,
    "height": 8,
    "count": 1,
    "dtype": "uint8",
    "crs": "EPSG:32633",
    "transform": Affine(10, 0, 0, 0, -10, 0),
}


def test_names_are_unpredictable_and_files_new(tmp_path: Path) -> None:
    final = tmp_path / "o_classes.tif"
    names = {create_temporary(final) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(".o_classes.tif.partial-")
        assert name.suffix == ".tif" and name.stat().st_size == 0
        assert stat.S_IMODE(name.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_link_planted_at_the_name_drawn_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: RasterWriter opened the predictable .<name>.partial for writing through a link
    another user had planted there, overwriting the link's target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    draws = iter(["0" * 16, "1" * 16])
    monkeypatch.setattr(geoseg.tiling.atomic.secrets, "token_hex", lambda n: next(draws))
    planted = tmp_path / f".o.tif.partial-{'0' * 16}.tif"
    planted.symlink_to(victim)
    w = RasterWriter(tmp_path / "o.tif", profile=PROFILE)
    assert w.tmp_path.name == f".o.tif.partial-{'1' * 16}.tif"
    w.write(np.ones((8, 8), np.uint8), PixelWindow(row_off=0, col_off=0, height=8, width=8))
    w.commit()
    assert victim.read_text() == "precious" and planted.is_symlink()
    with rasterio.open(tmp_path / "o.tif") as src:
        assert src.read(1).sum() == 64


@pytest.mark.parametrize("cog", [False, True])
def test_commit_replaces_a_link_at_the_output_never_its_target(tmp_path: Path, cog: bool) -> None:
    victim = tmp_path / "victim.tif"
    victim.write_bytes(b"precious")
    (tmp_path / "o.tif").symlink_to(victim)
    w = RasterWriter(tmp_path / "o.tif", profile=PROFILE)
    w.write(np.ones((8, 8), np.uint8), PixelWindow(row_off=0, col_off=0, height=8, width=8))
    w.commit(cog=cog)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "o.tif").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "victim.tif"]


def test_text_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "style.qml").symlink_to(victim)
    write_text_atomic(tmp_path / "style.qml", "<qgis/>")
    assert (tmp_path / "style.qml").read_text() == "<qgis/>" and victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.qml", "victim.txt"]
