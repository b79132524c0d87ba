"""Windowed reading: reflect padding outside the scene, nodata and masks, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp

from geoseg.errors import SceneReadError
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import (
    RasterWriter,
    absolute_scene_path,
    read_scene_info,
    read_window,
    write_array,
)

T = Affine(10, 0, 300000, 0, -10, 5000000)

# The 16 x 16 tile of a 400 x 400 truncated scene that is cut off. It lies between the
# 64-pixel windows `sample_band_medians` reads while planning (rows and columns 0-64,
# 112-176, 224-288, 336-400), so planning succeeds and only the blocks reading it fail.
TRUNCATED_TILE = PixelWindow(row_off=288, col_off=288, height=16, width=16)


def write_truncated_scene(
    path: Path, *, size: int = 400, cut: PixelWindow = TRUNCATED_TILE
) -> Path:
    """A ``size x size`` 4-band scene whose header reads but whose file ends inside one tile.

    The 16 x 16 px tile at ``cut`` is written last (a rewrite of a compressed tile goes
    to the end of the file), then the file is cut 10 bytes into it, like an interrupted
    download.
    """
    from rasterio.windows import Window

    from tests.helpers import UTM_TRANSFORM, synthetic_image, synthetic_truth

    image = synthetic_image(synthetic_truth(size, size, seed=3), seed=3)
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 4,
        "dtype": "uint16",
        "crs": "EPSG:32617",
        "transform": UTM_TRANSFORM,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
        "compress": "deflate",
    }
    t = cut
    rows, cols = slice(t.row_off, t.row_end), slice(t.col_off, t.col_end)
    first = image.copy()
    first[:, rows, cols] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(first)
    with rasterio.open(path, "r+") as dst:
        dst.write(image[:, rows, cols], window=Window(t.col_off, t.row_off, t.width, t.height))
    with rasterio.open(path) as src:
        offsets = {
            (r, c): int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
            for r in range(size // 16)
            for c in range(size // 16)
        }
    tile = (t.row_off // 16, t.col_off // 16)
    assert max(offsets, key=offsets.__getitem__) == tile, "the cut tile is the file's last"
    with open(path, "r+b") as f:
        f.truncate(offsets[tile] + 10)
    return path


def test_window_beyond_the_scene_is_reflected_and_invalid(tmp_path: Path) -> None:
    data = np.arange(2 * 20 * 30, dtype=np.uint16).reshape(2, 20, 30)
    path = tmp_path / "a.tif"
    write_array(path, data, crs="EPSG:32633", transform=T)
    win = PixelWindow(row_off=-5, col_off=-4, height=30, width=40)
    image, valid = read_window(str(path), win, bands=(2, 1))
    assert image.shape == (2, 30, 40)
    np.testing.assert_array_equal(image[0, 5:25, 4:34], data[1])
    np.testing.assert_array_equal(image[1, 5:25, 4:34], data[0])
    # reflect: row -1 mirrors row 1, column -1 mirrors column 1
    np.testing.assert_array_equal(image[0, 4, 4:34], data[1, 1])
    np.testing.assert_array_equal(image[0, 5:25, 3], data[1, :, 1])
    assert valid[5:25, 4:34].all()
    assert not valid[:5].any() and not valid[:, :4].any() and not valid[25:].any()


def test_nodata_internal_mask_and_nan_are_invalid(tmp_path: Path) -> None:
    data = np.ones((1, 10, 10), dtype=np.float32)
    data[0, 0, 0] = -9999
    data[0, 1, 1] = np.nan
    path = tmp_path / "b.tif"
    write_array(path, data, crs="EPSG:32633", transform=T, nodata=-9999)
    _, valid = read_window(
        str(path), PixelWindow(row_off=0, col_off=0, height=10, width=10), bands=(1,)
    )
    assert not valid[0, 0] and not valid[1, 1] and valid.sum() == 98

    masked = tmp_path / "c.tif"
    profile = {
        "driver": "GTiff",
        "width": 10,
        "height": 10,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": T,
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "w", **profile) as dst:
        dst.write(np.full((1, 10, 10), 7, np.uint8))
        m = np.full((10, 10), 255, np.uint8)
        m[:, :3] = 0
        dst.write_mask(m)
    _, valid = read_window(
        str(masked), PixelWindow(row_off=0, col_off=0, height=10, width=10), bands=(1,)
    )
    assert not valid[:, :3].any() and valid[:, 3:].all()


def test_missing_and_non_raster_files_raise_scene_errors(tmp_path: Path) -> None:
    with pytest.raises(SceneReadError, match="does not exist"):
        read_scene_info(tmp_path / "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(SceneReadError, match="cannot read"):
        read_scene_info(text)


def test_read_error_names_gdal_reason_and_survives_dask_pickling(tmp_path: Path) -> None:
    """Dask ships a worker's exception with its causes (tblib); GDAL's cannot be unpickled."""
    import pickle

    import tblib.pickling_support

    path = write_truncated_scene(tmp_path / "cut.tif")
    info = read_scene_info(path)  # the header reads
    read_window(info.path, PixelWindow(row_off=0, col_off=0, height=200, width=400), bands=(1,))
    with pytest.raises(SceneReadError) as caught:
        read_window(info.path, TRUNCATED_TILE, bands=(1, 2, 3, 4))
    err = caught.value
    assert "rows 288-304, cols 288-304" in str(err) and "Read error" in str(err)
    assert "gdalinfo -checksum" in str(err)
    tblib.pickling_support.install(err)  # what distributed does with a task's exception
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is SceneReadError and str(back) == str(err)
    assert "Read error" in str(back.__cause__)


def test_local_scene_paths_become_absolute_virtual_ones_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_array(tmp_path / "s.tif", np.ones((1, 8, 8), np.uint8), crs="EPSG:32633", transform=T)
    assert read_scene_info("s.tif").path == str(tmp_path / "s.tif")
    assert absolute_scene_path(Path("sub") / "x.tif") == str(tmp_path / "sub" / "x.tif")
    for virtual in ("/vsis3/bucket/x.tif", "https://host/x.tif", "/vsizip/a.zip/x.tif"):
        assert absolute_scene_path(virtual) == virtual


def test_writer_leaves_nothing_when_aborted(tmp_path: Path) -> None:
    out = tmp_path / "classes.tif"
    profile = {
        "driver": "GTiff",
        "width": 8,
        "height": 8,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": T,
    }
    w = RasterWriter(out, profile=profile)
    w.write(np.ones((8, 8), np.uint8), PixelWindow(row_off=0, col_off=0, height=8, width=8))
    assert not out.exists(), "the final name appears only on commit"
    w.abort()
    assert not out.exists() and not w.tmp_path.exists()
    w = RasterWriter(out, profile=profile)
    w.write(np.ones((8, 8), np.uint8), PixelWindow(row_off=0, col_off=0, height=8, width=8))
    w.commit()
    with rasterio.open(out) as src:
        assert src.read(1).sum() == 64


_WRITE_BIG = """
import sys
import numpy as np
from affine import Affine
from rasterio.enums import ColorInterp
from geoseg.run.task import peak_rss_mb
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import RasterWriter

n, step = 16384, 2176  # block cores as the pipeline cuts them: not aligned with the tiles
w = RasterWriter(sys.argv[1], profile=dict(driver="GTiff", width=n, height=n, count=1,
    dtype="uint8", tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    crs="EPSG:32617", transform=Affine(10, 0, 0, 0, -10, 0)))
block = (np.random.default_rng(0).random((step, step)) > 0.99).astype(np.uint8)
for r in range(0, n, step):
    for c in range(0, n, step):
        h, wd = min(step, n - r), min(step, n - c)
        w.write(block[:h, :wd], PixelWindow(row_off=r, col_off=c, height=h, width=wd))
w.commit()
print(peak_rss_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_raster_writer_memory_does_not_grow_with_the_raster(tmp_path: Path) -> None:
    """Writing a 16384^2 raster (268 MB of pixels) window by window keeps the GDAL cache
    bounded: GDAL's default cache (5 % of RAM) held every dirty block (peak 378 MB)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _WRITE_BIG, str(tmp_path / "big.tif")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(out.stdout) < 260
    with rasterio.open(tmp_path / "big.tif") as ds:
        assert ds.shape == (16384, 16384)
        assert ds.read(1, window=((0, 8), (0, 8))).shape == (8, 8)


@pytest.mark.parametrize("cog", [False, True])
def test_several_8_bit_bands_are_written_as_data_not_rgba(tmp_path: Path, cog: bool) -> None:
    # Four probability bands: GDAL's default would make them RGBA, the 4th an alpha mask
    # hiding every pixel whose value is 0.
    profile = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 4,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": T,
        "tiled": True,
        "blockxsize": 32,
        "blockysize": 32,
    }
    probs = np.zeros((4, 64, 64), np.uint8)
    probs[3, :32] = 254
    w = RasterWriter(tmp_path / "p.tif", profile=profile)
    w.write(probs, PixelWindow(row_off=0, col_off=0, height=64, width=64))
    w.commit(cog=cog)
    write_array(tmp_path / "a.tif", probs, crs="EPSG:32633", transform=T)
    for name in ("p.tif", "a.tif"):
        with rasterio.open(tmp_path / name) as src:
            assert ColorInterp.alpha not in src.colorinterp, name
            assert src.read_masks(1).all(), f"{name}: no pixel is masked"
