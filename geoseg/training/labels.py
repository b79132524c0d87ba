"""Training labels on the grid of an image, window by window.

Labels come either as a class raster on the same grid as the image, or as a vector file
(GeoPackage, Shapefile, GeoJSON ...) whose class attribute is rasterised on the fly into
the requested window of the image grid, in the image's CRS (vectors in another CRS are
densified and reprojected once, when the reader is created).

A :class:`ClassMap` turns source values (raster values or attribute values) into class
indices: ``0`` is the background, ``IGNORE_INDEX`` (255) marks pixels that must not
contribute to training or validation (nodata, outside the scene, unlabelled).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import ConfigError, SceneReadError
from geoseg.models.card import ClassInfo
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import SceneInfo, read_scene_info, read_window

__all__ = [
    "IGNORE_INDEX",
    "VECTOR_SUFFIXES",
    "ClassMap",
    "LabelReader",
    "LabelSource",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite")
_FILLS = ("background", "ignore")


def _key(value: Any) -> float | str:
    """Normalised lookup key: numbers (and numeric strings) as float, other values as str."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassMap:
    """Source value -> class.

    Parameters
    ----------
    classes
        Output classes; ``classes[0]`` is the background.
    values
        Source value (raster value or attribute value) -> class name, class index or
        ``"ignore"``. Several values may map to one class. Numbers and numeric strings are
        the same key (``6`` and ``"6"``). Empty: raster values and numeric attributes are
        class indices, string attributes are class names.
    unmapped
        What a value not in ``values`` becomes: ``"background"`` (class 0) or ``"ignore"``.
    """

    classes: tuple[ClassInfo, ...]
    values: Mapping[Any, str | int] = field(default_factory=dict)
    unmapped: str = "background"
    lookup: Mapping[float | str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError("a class map needs a background class and at least one class")
        if len(self.classes) >= IGNORE_INDEX:
            raise ConfigError(f"{len(self.classes)} classes; at most {IGNORE_INDEX - 1} fit")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate class names in the class map: {names}")
        if self.unmapped not in _FILLS:
            raise ConfigError(f"unmapped={self.unmapped!r}; use one of {', '.join(_FILLS)}")
        lookup: dict[float | str, int] = {}
        for source, target in self.values.items():
            index = self._target_index(target)
            key = _key(source)
            if lookup.get(key, index) != index:
                raise ConfigError(
                    f"source value {source!r} is mapped twice, to different classes; "
                    f"keep one entry per value"
                )
            lookup[key] = index
        object.__setattr__(self, "lookup", lookup)

    def _target_index(self, target: str | int) -> int:
        names = [c.name for c in self.classes]
        if isinstance(target, str):
            if target == "ignore":
                return IGNORE_INDEX
            if target in names:
                return names.index(target)
            raise ConfigError(
                f"class map target {target!r} is not a class; valid: {', '.join(names)}, ignore"
            )
        if isinstance(target, int) and (0 <= target < len(names) or target == IGNORE_INDEX):
            return target
        raise ConfigError(
            f"class map target {target!r} is not a class index 0..{len(names) - 1} "
            f"or {IGNORE_INDEX} (ignore)"
        )

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def fill(self) -> int:
        """The class of unmapped values."""
        return 0 if self.unmapped == "background" else IGNORE_INDEX

    def map_value(self, value: Any) -> int:
        """Class index of one source value (an attribute value)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.fill
        key = _key(value)
        if self.lookup:
            return self.lookup.get(key, self.fill)
        if isinstance(key, str):
            names = self.class_names
            return names.index(key) if key in names else self.fill
        return int(key) if key.is_integer() and 0 <= key < self.n_classes else self.fill

    def map_array(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Class indices (uint8) of a raster of source values; invalid pixels -> ignore."""
        if self.lookup:
            out = np.full(values.shape, self.fill, dtype=np.uint8)
            for key, index in self.lookup.items():
                if isinstance(key, float):
                    out[values == key] = index
        else:
            known = (values >= 0) & (values < self.n_classes)
            if np.issubdtype(values.dtype, np.floating):
                known &= np.floor(values) == values
            out = np.where(known, values, self.fill).astype(np.uint8)
        if valid is not None:
            out[~valid] = IGNORE_INDEX
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for the model card)."""
        return {
            "classes": [{"name": c.name, "color": c.color} for c in self.classes],
            "values": {str(k): v for k, v in self.values.items()},
            "unmapped": self.unmapped,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelSource:
    """Where the labels of one image come from.

    Parameters
    ----------
    path
        A class raster on the image's grid, or a vector file (by suffix: GeoPackage,
        Shapefile, GeoJSON, FlatGeobuf ...).
    attribute
        Vector files: the column holding the class value. Required for vectors.
    layer
        Vector files: the layer to read (default: the first).
    band
        Rasters: the band holding the classes (1-based).
    outside
        Vector files: what pixels outside every polygon are: ``"background"`` for
        wall-to-wall labels, ``"ignore"`` for sparse training polygons.
    all_touched
        Vector files: burn every pixel a polygon touches, not only those whose centre is
        inside (use for thin features such as road lines).
    boundary_px, boundary_class
        Vector files: label the pixels inside a polygon that lie within ``boundary_px``
        pixels (a disk) of a pixel of another polygon or of no polygon as
        ``boundary_class``, a class of the class map. Touching polygons (neighbouring
        fields) then get a band of ``2 * boundary_px`` pixels between them, and a network
        trained on it separates them: at run time the boundary class is not an output, so
        neighbours come out as separate connected components. The polygons' union is
        unchanged (interior + boundary). The image edge is not a boundary.
    """

    path: str
    attribute: str | None = None
    layer: str | None = None
    band: int = 1
    outside: str = "background"
    all_touched: bool = False
    boundary_px: int = 0
    boundary_class: str | None = None

    def __post_init__(self) -> None:
        if not str(self.path):
            raise ConfigError("label source has an empty path")
        object.__setattr__(self, "path", str(self.path))
        if self.is_vector and not self.attribute:
            raise ConfigError(
                f"vector labels {self.path!r} need attribute=<column holding the class>"
            )
        if self.band < 1:
            raise ConfigError(f"label band {self.band} must be >= 1 (bands are 1-based)")
        if self.outside not in _FILLS:
            raise ConfigError(f"outside={self.outside!r}; use one of {', '.join(_FILLS)}")
        if self.boundary_px < 0:
            raise ConfigError(f"boundary_px {self.boundary_px} must be >= 0 pixels")
        if (self.boundary_px > 0) != (self.boundary_class is not None):
            raise ConfigError(
                "give boundary_px (> 0) and boundary_class together, e.g. boundary_px: 2, "
                "boundary_class: field_boundary"
            )
        if self.boundary_px and not self.is_vector:
            raise ConfigError(
                f"boundary_px needs vector labels (polygons); {self.path!r} is a raster"
            )

    @property
    def is_vector(self) -> bool:
        return Path(self.path).suffix.lower() in VECTOR_SUFFIXES

    def to_dict(self) -> dict[str, Any]:
        """The fields that matter for this kind of source; ``LabelSource(**d)`` rebuilds it."""
        out: dict[str, Any] = {"path": self.path}
        if self.is_vector:
            out.update(attribute=self.attribute, layer=self.layer, outside=self.outside)
            # Only when set, like ``band``: configurations recorded before it was written
            # out (all False) keep their fingerprint, so their checkpoints still resume.
            if self.all_touched:
                out["all_touched"] = True
            if self.boundary_px:
                out.update(boundary_px=self.boundary_px, boundary_class=self.boundary_class)
        elif self.band != 1:
            out["band"] = self.band
        return out


def _same_grid(a: SceneInfo, b: SceneInfo) -> bool:
    if (a.width, a.height) != (b.width, b.height):
        return False
    tol = 1e-6 * max(a.res)
    if not a.transform.almost_equals(b.transform, precision=tol):
        return False
    return a.crs is None or b.crs is None or a.crs == b.crs


class LabelReader:
    """The labels of one image, read or rasterised per window of the image grid.

    Parameters
    ----------
    source
        The label raster or vector file.
    image
        The image the labels belong to (its grid and CRS).
    class_map
        Source value -> class index.

    Raises
    ------
    ConfigError
        If a label raster is not on the image's grid, the attribute is missing, or no
        label value maps to a class.
    SceneReadError
        If the label file cannot be read.
    """

    def __init__(self, source: LabelSource, *, image: SceneInfo, class_map: ClassMap) -> None:
        self.source = source
        self.image = image
        self.class_map = class_map
        self._shapes: Any = None
        self._boundary = 0
        if source.boundary_class is not None:
            names = class_map.class_names
            if source.boundary_class not in names[1:]:
                raise ConfigError(
                    f"boundary_class {source.boundary_class!r} is not a class of the class "
                    f"map; valid: {', '.join(names[1:])}"
                )
            self._boundary = names.index(source.boundary_class)
        if source.is_vector:
            self._load_vectors()
        else:
            info = read_scene_info(source.path)
            if not _same_grid(info, image):
                raise ConfigError(
                    f"labels {source.path!r} ({info.width}x{info.height}, {info.crs}, "
                    f"origin {info.transform.c:g},{info.transform.f:g}, res {info.res}) are "
                    f"not on the grid of image {image.path!r} ({image.width}x{image.height}, "
                    f"{image.crs}, origin {image.transform.c:g},{image.transform.f:g}, "
                    f"res {image.res}); resample them onto it, e.g. gdalwarp -r near "
                    f"-te <image bounds> -ts {image.width} {image.height}"
                )
            if source.band > info.count:
                raise ConfigError(
                    f"label band {source.band} does not exist; {source.path!r} has "
                    f"{info.count} band(s)"
                )

    def _load_vectors(self) -> None:
        import pyogrio
        from pyogrio.errors import DataLayerError, DataSourceError
        from pyproj import CRS as ProjCRS
        from rasterio.warp import transform_bounds

        src, attr = self.source, self.source.attribute
        if not Path(src.path).exists():
            raise SceneReadError(f"label file {src.path!r} does not exist")
        try:
            layer = src.layer
            if layer is None:
                # Name the first layer ourselves: pyogrio would warn with a Python warning.
                layers = [str(row[0]) for row in pyogrio.list_layers(src.path)]
                if len(layers) > 1:
                    log.warning(
                        "labels %s hold layers %s; reading %r (choose with layer=, or "
                        "--layer in geoseg evaluate)",
                        src.path,
                        ", ".join(map(repr, layers)),
                        layers[0],
                    )
                layer = layers[0] if layers else None
            meta = pyogrio.read_info(src.path, layer=layer)
            if attr not in list(meta["fields"]):
                raise ConfigError(
                    f"labels {src.path!r} have no attribute {attr!r}; "
                    f"attributes: {', '.join(map(str, meta['fields'])) or 'none'}"
                )
            gdf = pyogrio.read_dataframe(src.path, layer=layer, columns=[attr])
        except (DataSourceError, DataLayerError) as err:
            raise SceneReadError(f"cannot read labels {src.path!r}: {err}") from err
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        crs = ProjCRS.from_wkt(self.image.crs.to_wkt()) if self.image.crs is not None else None
        if gdf.crs is None:
            log.warning("labels %s have no CRS; assuming the image CRS %s", src.path, crs)
        elif crs is not None and not gdf.crs.equals(crs):
            # Densify before reprojecting so long straight edges follow the curve they
            # become in the image CRS: segments of at most ~8 image pixels.
            x0, y0, x1, y1 = self._image_bounds()
            sx0, sy0, sx1, sy1 = transform_bounds(self.image.crs, gdf.crs.to_wkt(), x0, y0, x1, y1)
            scale = max((sx1 - sx0) / max(x1 - x0, 1e-12), (sy1 - sy0) / max(y1 - y0, 1e-12))
            step = 8 * min(self.image.res) * scale
            if step > 0 and math.isfinite(step):
                gdf = gdf.set_geometry(gdf.geometry.segmentize(step))
            gdf = gdf.to_crs(crs)
        classes = np.array([self.class_map.map_value(v) for v in gdf[attr]], dtype=np.uint8)
        if gdf.empty or not np.any((classes > 0) & (classes != IGNORE_INDEX)):
            sample = ", ".join(repr(v) for v in list(dict.fromkeys(gdf[attr]))[:5])
            raise ConfigError(
                f"no feature of {src.path!r} maps to a class: attribute {attr!r} holds "
                f"{sample or 'nothing'}; map those values in the class map"
            )
        self._shapes = gdf.geometry.reset_index(drop=True)
        self._classes = classes

    def _image_bounds(self) -> tuple[float, float, float, float]:
        t, w, h = self.image.transform, self.image.width, self.image.height
        xs = [t.c, t.c + t.a * w + t.b * h]
        ys = [t.f, t.f + t.d * w + t.e * h]
        return min(xs), min(ys), max(xs), max(ys)

    def read(self, window: PixelWindow) -> np.ndarray:
        """Class indices ``(height, width)`` uint8 over ``window`` of the image grid.

        Pixels outside the image, label nodata and unmapped values (when ``unmapped`` is
        ``"ignore"``) are :data:`IGNORE_INDEX`.
        """
        if self._shapes is None:
            values, valid = read_window(self.source.path, window, bands=[self.source.band])
            return self.class_map.map_array(values[0], valid)
        return self._rasterize(window)

    def _rasterize(self, window: PixelWindow) -> np.ndarray:
        from affine import Affine
        from rasterio.features import rasterize
        from shapely.geometry import box

        src = self.source
        fill = 0 if src.outside == "background" else IGNORE_INDEX
        transform = self.image.transform @ Affine.translation(window.col_off, window.row_off)
        corners = [transform @ (0, 0), transform @ (window.width, window.height)]
        xs, ys = zip(*corners, strict=True)
        hits = self._shapes.sindex.query(box(min(xs), min(ys), max(xs), max(ys)))
        out = np.full((window.height, window.width), fill, dtype=np.uint8)
        if len(hits):
            hits = np.sort(hits)  # file order: later features paint over earlier ones
            shapes = zip(self._shapes.iloc[hits], self._classes[hits].tolist(), strict=True)
            rasterize(
                shapes,
                out=out,
                transform=transform,
                all_touched=src.all_touched,
            )
        if self._boundary:
            edge = self._boundary_pixels(window)
            out[edge & (out != IGNORE_INDEX)] = self._boundary
        scene = self.image.window
        inner = window.intersection(scene)
        if inner is None:
            out[:] = IGNORE_INDEX
        elif inner != window:
            keep = np.zeros(out.shape, dtype=bool)
            keep[inner.relative_to(window)] = True
            out[~keep] = IGNORE_INDEX
        return out

    def _boundary_pixels(self, window: PixelWindow) -> np.ndarray:
        """Pixels of ``window`` inside a polygon within ``boundary_px`` of another polygon or
        of no polygon (a disk), neighbours outside the image not counted.

        The polygons are rasterised by feature (later features over earlier ones) in the
        window grown by ``boundary_px``, so the answer does not depend on the window.
        """
        from affine import Affine
        from rasterio.features import rasterize
        from scipy import ndimage
        from shapely.geometry import box

        n = self.source.boundary_px
        grown = PixelWindow(
            row_off=window.row_off - n,
            col_off=window.col_off - n,
            height=window.height + 2 * n,
            width=window.width + 2 * n,
        )
        transform = self.image.transform @ Affine.translation(grown.col_off, grown.row_off)
        corners = [transform @ (0, 0), transform @ (grown.width, grown.height)]
        xs, ys = zip(*corners, strict=True)
        hits = np.sort(self._shapes.sindex.query(box(min(xs), min(ys), max(xs), max(ys))))
        keep = [int(i) for i in hits if 0 < self._classes[i] != IGNORE_INDEX]
        ids = np.zeros((grown.height, grown.width), dtype=np.int32)
        if keep:
            rasterize(
                zip(self._shapes.iloc[keep], [i + 1 for i in keep], strict=True),
                out=ids,
                transform=transform,
            )
        outside = np.ones(ids.shape, dtype=bool)
        inner = grown.intersection(self.image.window)
        if inner is not None:
            outside[inner.relative_to(grown)] = False
        yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
        disk = yy**2 + xx**2 <= n * n
        top = ndimage.maximum_filter(np.where(outside, -1, ids), footprint=disk, mode="nearest")
        low = ndimage.minimum_filter(
            np.where(outside, np.iinfo(np.int32).max, ids), footprint=disk, mode="nearest"
        )
        edge = (ids > 0) & ((top != ids) | (low != ids))
        return edge[n : n + window.height, n : n + window.width]

    def polygons(self, class_index: int) -> list[Any]:
        """The label geometries of class ``class_index``, in the image's CRS (vector labels).

        Raises
        ------
        ConfigError
            If the labels are a raster (they hold no polygons).
        """
        if self._shapes is None:
            raise ConfigError(
                f"labels {self.source.path!r} are a raster; object scores need polygon labels"
            )
        keep = np.flatnonzero(self._classes == class_index)
        return list(self._shapes.iloc[keep])
