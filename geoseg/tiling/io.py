"""The one place where geoseg opens rasters.

Scenes are read window by window; nothing here ever reads a whole scene. Every other module
receives arrays, windows and :class:`SceneInfo` values. Functions take a path (or a GDAL
virtual path such as ``/vsis3/...``) so Dask tasks can open their own handles: rasterio
datasets cannot be pickled or shared between processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from geoseg.config import MAX_BLOCK
from geoseg.errors import ConfigError, OutputWriteError, SceneReadError
from geoseg.tiling.atomic import commit, create_temporary
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.resample import ModelGrid

__all__ = [
    "GDAL_ENV",
    "GdalError",
    "RasterWriter",
    "SceneInfo",
    "absolute_scene_path",
    "read_model_window",
    "read_scene_info",
    "read_window",
    "sample_band_medians",
]

# GDAL settings for every read and write: a bounded block cache (decoded blocks shared by
# neighbouring reads; on the writing side dirty blocks are flushed to disk once it is full,
# where GDAL's default cache, 5 % of RAM, would keep a large class raster's blocks in the
# client) and no listing of whole remote directories when opening one object.
GDAL_ENV: Mapping[str, Any] = {
    "GDAL_CACHEMAX": 64,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SceneInfo:
    """What geoseg needs to know about a scene without reading its pixels."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    descriptions: tuple[str | None, ...] = field(default=())
    colorinterp: tuple[str, ...] = field(default=())
    """GDAL colour interpretation of each band (``"red"``, ``"alpha"``, ``"gray"`` ...)."""
    scales: tuple[float, ...] = field(default=())
    offsets: tuple[float, ...] = field(default=())
    """Each band's scale and offset metadata: physical value = stored value x scale + offset
    (1 and 0 where a band has none)."""

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def window(self) -> PixelWindow:
        return PixelWindow(row_off=0, col_off=0, height=self.height, width=self.width)


class GdalError(RuntimeError):
    """GDAL's reason for a failed open or read, as plain text: the cause of a SceneReadError.

    rasterio's own exceptions cannot be unpickled (``CPLE_*`` errors refuse their ``args``),
    and Dask pickles a task's exception with its whole chain of causes and context: a
    ``SceneReadError`` caused by one would reach the client as a bare ``Exception``. So read
    errors are raised outside the ``except`` block, from this picklable stand-in.
    """


def _is_local(path: str) -> bool:
    # A VRT given as its XML text (a STAC item's bands composed) is no file either.
    return not (path.startswith(("/vsi", "<VRTDataset")) or "://" in path)


def absolute_scene_path(path: str | os.PathLike[str]) -> str:
    """A local path made absolute; GDAL virtual paths and URLs unchanged.

    Workers of an attached cluster (``--scheduler tcp://...``) need not share the client's
    working directory, so a relative path would name another file there, or none.
    """
    p = os.fspath(path)
    return os.path.abspath(p) if _is_local(p) else p


def _gdal_reason(err: BaseException) -> str:
    """The most specific message in a rasterio error's chain (GDAL's own, innermost)."""
    reason, seen = _first_line(err), {id(err)}
    cause = err.__cause__ or err.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        line = _first_line(cause)
        if line and "see previous exception" not in line.lower():
            reason = line
        cause = cause.__cause__ or cause.__context__
    return reason


@contextmanager
def _open(path: str) -> Iterator[Any]:
    if _is_local(path) and not Path(path).exists():
        raise SceneReadError(f"scene {path!r} does not exist")
    with rasterio.Env(**GDAL_ENV):
        reason = None
        try:
            src = rasterio.open(path)
        except RasterioIOError as err:
            reason = _gdal_reason(err)
        if reason is not None:  # raised here, not in the except block: see GdalError
            raise SceneReadError(f"cannot read {path!r} as a raster: {reason}") from GdalError(
                reason
            )
        with src:
            yield src


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_scene_info(path: str | os.PathLike[str]) -> SceneInfo:
    """Open a scene's header only. ``SceneInfo.path`` is absolute for local files.

    Raises
    ------
    SceneReadError
        If the file is missing or GDAL cannot read it as a raster.
    """
    p = absolute_scene_path(path)
    with _open(p) as src:
        if src.count < 1:
            raise SceneReadError(f"{p!r} has no raster bands")
        return SceneInfo(
            path=p,
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs,
            transform=src.transform,
            nodata=src.nodata,
            descriptions=tuple(src.descriptions),
            colorinterp=tuple(ci.name for ci in src.colorinterp),
            scales=tuple(1.0 if s is None else float(s) for s in src.scales),
            offsets=tuple(0.0 if o is None else float(o) for o in src.offsets),
        )


MAX_PAD_PX = 2 * MAX_BLOCK
"""Most pixels a read is padded by beyond the scene on one side: a block's halo and its tile
are each at most ``MAX_BLOCK`` (:mod:`geoseg.config`), so a valid plan never comes near."""


def _pad(arr: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect-pad the last two axes; a 1-pixel axis can only be repeated.

    Raises
    ------
    ConfigError
        For a pad over :data:`MAX_PAD_PX`, before anything is allocated.
    """
    if not any(a or b for a, b in pads):
        return arr
    widest = max(max(p) for p in pads)
    if widest > MAX_PAD_PX:
        raise ConfigError(
            f"a read would be padded by {widest} pixels beyond the scene, more than "
            f"{MAX_PAD_PX}; use a smaller --block, --tile or smoothing halo"
        )
    lead = [(0, 0)] * (arr.ndim - 2)
    out = arr
    for axis in range(2):
        if any(pads[axis]):
            width = [*lead, (0, 0), (0, 0)]
            width[arr.ndim - 2 + axis] = pads[axis]
            # a 1-pixel axis cannot be reflected, only repeated
            if out.shape[arr.ndim - 2 + axis] > 1:
                out = np.pad(out, width, mode="reflect")
            else:
                out = np.pad(out, width, mode="edge")
    return out


def read_window(
    path: str, window: PixelWindow, *, bands: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` (1-based) over ``window``; the part outside the scene is reflected.

    Returns
    -------
    image
        ``(len(bands), height, width)`` in the scene's dtype.
    valid
        ``(height, width)`` bool: inside the scene, not nodata / masked in any of the
        bands (GDAL masks: nodata value, internal or sidecar mask, alpha), and not NaN.
    """
    with _open(path) as src:
        scene = PixelWindow(row_off=0, col_off=0, height=src.height, width=src.width)
        inner = window.intersection(scene)
        if inner is None:
            raise SceneReadError(f"window {window} lies outside scene {path!r}")
        rwin = Window(inner.col_off, inner.row_off, inner.width, inner.height)
        reason = None
        try:
            data = src.read(list(bands), window=rwin)
            masks = src.read_masks(list(bands), window=rwin)
        except RasterioError as err:
            reason = _gdal_reason(err)
    if reason is not None:  # raised here, not in the except block: see GdalError
        hint = f"; is the file complete? (gdalinfo -checksum {path})" if _is_local(path) else ""
        raise SceneReadError(
            f"cannot read {path!r} at rows {inner.row_off}-{inner.row_end}, "
            f"cols {inner.col_off}-{inner.col_end}: {reason}{hint}"
        ) from GdalError(reason)
    valid = np.all(masks > 0, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    top, left = inner.row_off - window.row_off, inner.col_off - window.col_off
    bottom, right = window.row_end - inner.row_end, window.col_end - inner.col_end
    pads = ((top, bottom), (left, right))
    image = _pad(data, pads)
    valid = np.pad(valid, pads, mode="constant", constant_values=False)
    return image, valid


def read_model_window(
    path: str, window: PixelWindow, *, bands: Sequence[int], grid: ModelGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` over ``window`` in the model pixels of ``grid``; beyond the scene the
    model pixels are reflected (and not valid), as :func:`read_window` does with scene pixels.

    Downsampling averages the scene pixels under each model pixel (GDAL picks an internal
    overview when one fits); upsampling interpolates bilinearly. A model pixel is valid when
    every scene pixel it is made of is.

    Returns
    -------
    image
        ``(len(bands), height, width)`` float32 on the model grid.
    valid
        ``(height, width)`` bool.
    """
    extent = PixelWindow(row_off=0, col_off=0, height=grid.height, width=grid.width)
    inner = window.intersection(extent)
    if inner is None:
        raise SceneReadError(f"window {window} lies outside scene {path!r}")
    row_off, col_off, height, width = grid.scene_bounds(inner)
    rwin = Window(col_off, row_off, width, height)
    shape = (len(bands), inner.height, inner.width)
    down = grid.downsamples
    reason = None
    with _open(path) as src:
        try:
            data = src.read(
                list(bands),
                window=rwin,
                out_shape=shape,
                out_dtype="float32",
                resampling=Resampling.average if down else Resampling.bilinear,
            )
            masks = src.read_masks(
                list(bands),
                window=rwin,
                out_shape=shape,
                resampling=Resampling.average if down else Resampling.nearest,
            )
        except RasterioError as err:
            reason = _gdal_reason(err)
    if reason is not None:
        raise SceneReadError(
            f"cannot read {path!r} resampled to {grid.height}x{grid.width} model pixels: {reason}"
        ) from GdalError(reason)
    # An averaged mask is 255 only where (nearly) every scene pixel under the model pixel is.
    valid = np.all(masks == 255, axis=0) & np.all(np.isfinite(data), axis=0)
    top, left = inner.row_off - window.row_off, inner.col_off - window.col_off
    bottom, right = window.row_end - inner.row_end, window.col_end - inner.col_end
    pads = ((top, bottom), (left, right))
    return _pad(data, pads), np.pad(valid, pads, mode="constant", constant_values=False)


def sample_band_medians(
    path: str, bands: Sequence[int], *, height: int, width: int, grid: int = 4, size: int = 64
) -> np.ndarray | None:
    """Per-band median of valid pixels in ``grid x grid`` small windows spread over the scene.

    A cheap look at the scene's value range (``grid**2`` windowed reads of ``size`` pixels,
    never the whole scene): enough to tell 8-bit DNs from 16-bit DNs or 0-1 reflectance.
    ``None`` when no sampled pixel is valid.
    """
    h, w = min(size, height), min(size, width)
    rows = np.linspace(0, height - h, grid).round().astype(int)
    cols = np.linspace(0, width - w, grid).round().astype(int)
    values: list[np.ndarray] = []
    for r in sorted(set(rows.tolist())):
        for c in sorted(set(cols.tolist())):
            image, valid = read_window(
                path, PixelWindow(row_off=r, col_off=c, height=h, width=w), bands=bands
            )
            if valid.any():
                values.append(image[:, valid].astype(np.float64))
    if not values:
        return None
    return np.median(np.concatenate(values, axis=1), axis=1)


def _plain_bands(profile: Mapping[str, Any]) -> dict[str, Any]:
    """``profile`` with several bands marked as plain data, not colours.

    GDAL writes a 3- or 4-band 8-bit GeoTIFF without ``PHOTOMETRIC`` as RGB(A): a
    probability raster of four classes would show as a colour image and its fourth band
    would become an alpha mask (every pixel with value 0 transparent, and no-data to
    readers that honour the mask).
    """
    out = dict(profile)
    if out.get("count", 1) > 1:
        out.setdefault("photometric", "MINISBLACK")
    return out


class RasterWriter:
    """Writes one GeoTIFF window by window under a temporary name; renamed on commit.

    Only the Dask client writes, so a single handle is safe. A writer that is closed
    without :meth:`commit` deletes its temporary file: an interrupted run never leaves a
    file that looks finished.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        profile: Mapping[str, Any],
        colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
        tags: Mapping[str, str] | None = None,
        band_descriptions: Sequence[str] | None = None,
        band_scales: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        self.path = Path(path)
        self._cog_tmp: Path | None = None
        try:
            # A new file of this process under an unpredictable name (see tiling.atomic).
            self.tmp_path = create_temporary(self.path)
        except OSError as err:
            raise OutputWriteError(f"cannot create {self.path}: {err.strerror or err}") from err
        try:
            with rasterio.Env(**GDAL_ENV):
                self._dst = rasterio.open(self.tmp_path, "w", **_plain_bands(profile))
        except (RasterioError, OSError) as err:
            self.tmp_path.unlink(missing_ok=True)
            raise OutputWriteError(f"cannot create {self.path}: {_first_line(err)}") from err
        if colormap:
            self._dst.write_colormap(1, dict(colormap))
        if tags:
            self._dst.update_tags(**tags)
        for i, desc in enumerate(band_descriptions or (), start=1):
            self._dst.set_band_description(i, desc)
        if band_scales:  # (scale, offset) per band: readers (QGIS) show raw * scale + offset
            self._dst.scales = tuple(scale for scale, _ in band_scales)
            self._dst.offsets = tuple(offset for _, offset in band_scales)
        self._closed = False

    def write(self, array: np.ndarray, window: PixelWindow) -> None:
        """Write ``(bands, h, w)`` or ``(h, w)`` ``array`` at ``window``."""
        arr = array if array.ndim == 3 else array[np.newaxis]
        win = Window(window.col_off, window.row_off, window.width, window.height)
        with rasterio.Env(**GDAL_ENV):  # the bounded cache: memory flat in the scene size
            self._dst.write(arr, window=win)

    def update_tags(self, **tags: str) -> None:
        """Add dataset tags before committing (provenance known only at the end)."""
        self._dst.update_tags(**tags)

    def commit(self, *, cog: bool = False, overview_resampling: str = "nearest") -> Path:
        """Close and atomically move the file to its final name.

        With ``cog`` the file is rewritten as a Cloud Optimized GeoTIFF with overviews
        (GDAL's COG driver streams it; memory stays bounded by the GDAL cache).
        """
        with rasterio.Env(**GDAL_ENV):
            self._dst.close()
        self._closed = True
        if cog:
            from rasterio.shutil import copy as gdal_copy

            try:
                self._cog_tmp = cog_tmp = create_temporary(self.path)
                with rasterio.Env(**GDAL_ENV):
                    gdal_copy(
                        self.tmp_path,
                        cog_tmp,
                        driver="COG",
                        COMPRESS="DEFLATE",
                        BLOCKSIZE=512,
                        OVERVIEWS="AUTO",
                        OVERVIEW_RESAMPLING=overview_resampling.upper(),
                        BIGTIFF="IF_SAFER",
                        NUM_THREADS="ALL_CPUS",
                    )
            except (RasterioError, OSError) as err:
                self.abort()
                raise OutputWriteError(
                    f"cannot write {self.path} as COG: {_first_line(err)}"
                ) from err
            commit(cog_tmp, self.path)
            self.tmp_path.unlink(missing_ok=True)
        else:
            commit(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary files."""
        if not self._closed:
            self._dst.close()
            self._closed = True
        self.tmp_path.unlink(missing_ok=True)
        if self._cog_tmp is not None:
            self._cog_tmp.unlink(missing_ok=True)


def write_array(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | None = None,
) -> None:
    """Write a small in-memory ``(bands, h, w)`` array as a GeoTIFF (tests, training data)."""
    arr = array if array.ndim == 3 else array[np.newaxis]
    profile = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
    }
    with rasterio.Env(**GDAL_ENV), rasterio.open(path, "w", **_plain_bands(profile)) as dst:
        dst.write(arr)
