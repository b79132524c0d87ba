"""The files a run writes, written by the client only, under temporary names.

- ``<name>.gpkg``: one polygon layer per class (plus ``roads_centerlines`` when roads are
  requested), QGIS default styles in ``layer_styles``, a ``geoseg_provenance`` table.
- ``<name>_classes.tif``: the class raster as a Cloud Optimized GeoTIFF (overviews by mode,
  colour table, nodata 255), provenance in its tags.
- ``<name>_probabilities.tif`` (optional): per-class probability, uint8 ``p * 254``,
  nodata 255, one band per requested class; the bands' GDAL scale is ``1 / 254``, so
  QGIS shows (and ``gdalinfo`` / rasterio report) probabilities 0-1.

Nothing appears under a final name until every output of the run is complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import shapely
from rasterio.crs import CRS

from geoseg import __version__
from geoseg.errors import ConfigError, OutputExistsError
from geoseg.run.plan import NODATA_CLASS, RunPlan
from geoseg.run.results import BlockResult, ClassPolygons, finish_polygons
from geoseg.tiling.io import RasterWriter
from geoseg.vectorize.centerlines import BlockLines, line_lengths_m, merge_centerlines
from geoseg.vectorize.geometry import pixels_to_crs
from geoseg.vectorize.gpkg import GeoPackageWriter, PolygonStore
from geoseg.vectorize.merge import MergedPolygons, SeamMerger
from geoseg.vectorize.styles import fill_qml, line_qml, paletted_qml

__all__ = ["OutputPaths", "RunOutputs", "check_outputs", "output_paths"]

PROB_NODATA = 255
PROB_SCALE = 254.0


class OutputPaths:
    """Where a run's files go, derived from the ``-o`` GeoPackage path."""

    def __init__(self, gpkg: Path, *, raster: bool, probabilities: bool) -> None:
        self.gpkg = gpkg
        self.raster = gpkg.with_name(f"{gpkg.stem}_classes.tif") if raster else None
        # QGIS applies <raster name>.qml next to a raster as its default style.
        self.raster_style = self.raster.with_suffix(".qml") if self.raster else None
        self.probabilities = (
            gpkg.with_name(f"{gpkg.stem}_probabilities.tif") if probabilities else None
        )

    def all(self) -> list[Path]:
        paths = (self.gpkg, self.raster, self.raster_style, self.probabilities)
        return [p for p in paths if p is not None]


def output_paths(
    output: str | os.PathLike[str], *, raster: bool = True, probabilities: bool = False
) -> OutputPaths:
    """The output files for ``-o output`` (which must be a ``.gpkg``)."""
    gpkg = Path(output)
    if gpkg.suffix.lower() != ".gpkg":
        raise ConfigError(f"output {str(gpkg)!r} must end in .gpkg, e.g. {gpkg.stem}.gpkg")
    return OutputPaths(gpkg, raster=raster, probabilities=probabilities)


def _dst_crs(text: str | None) -> CRS | None:
    if text is None:
        return None
    try:
        return CRS.from_user_input(text)
    except Exception as err:  # rasterio raises CRSError, subclasses vary
        raise ConfigError(f"--dst-crs {text!r} is not a CRS (e.g. EPSG:3857): {err}") from err


def _geotiff_profile(plan: RunPlan, *, count: int) -> dict[str, Any]:
    scene = plan.scene
    tiled = scene.width >= 256 and scene.height >= 256
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": count,
        "dtype": "uint8",
        "crs": scene.crs,
        "transform": scene.transform,
        "compress": "deflate",
        "tiled": tiled,
        "BIGTIFF": "IF_SAFER",
    }
    if tiled:
        profile.update(blockxsize=256, blockysize=256)
    return profile


class RunOutputs:
    """Collects block results and writes the run's files.

    Parameters
    ----------
    plan
        The run being written.
    paths
        Output file names.
    dst_crs
        Reproject the vector layers to this CRS (rasters stay on the scene grid).
    cog
        Convert rasters to Cloud Optimized GeoTIFF when complete.
    """

    def __init__(
        self, plan: RunPlan, paths: OutputPaths, *, dst_crs: str | None = None, cog: bool = True
    ) -> None:
        self.plan = plan
        self.paths = paths
        self.cog = cog
        self.dst_crs = _dst_crs(dst_crs)
        if self.dst_crs is not None and plan.scene.crs is None:
            # Nothing to reproject from: the layers would hold pixel coordinates labelled
            # with the target CRS.
            raise ConfigError(
                f"--dst-crs {dst_crs} needs the scene's CRS, but {plan.scene.path} has none; "
                "assign it first (gdal_edit.py -a_srs EPSG:xxxx) or drop --dst-crs"
            )
        self.gpkg = GeoPackageWriter(paths.gpkg, crs=self.dst_crs or plan.scene.crs)
        self.merger = SeamMerger.for_blocks(plan.blocks)
        self.store = PolygonStore(
            paths.gpkg.with_name(f".{paths.gpkg.name}.staging.gpkg"),
            crs=self.dst_crs or plan.scene.crs,
        )
        self.scene_name = Path(plan.scene.path).name
        self.lines: dict[str, list[BlockLines]] = {c: [] for c in plan.centerlines}
        self.raster: RasterWriter | None = None
        self.probabilities: RasterWriter | None = None
        tags = {f"CLASS_{v}": name for v, name in enumerate(plan.classes, start=1)}
        tags.update(CLASS_0="background", GEOSEG_VERSION=__version__)
        if paths.raster is not None:
            colormap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
            for value, color in enumerate(plan.colors, start=1):
                c = color.lstrip("#")
                colormap[value] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255)
            colormap[NODATA_CLASS] = (0, 0, 0, 0)
            self.raster = RasterWriter(
                paths.raster,
                profile=_geotiff_profile(plan, count=1) | {"nodata": NODATA_CLASS},
                colormap=colormap,
                tags=tags,
                band_descriptions=["class"],
            )
        if paths.probabilities is not None:
            self.probabilities = RasterWriter(
                paths.probabilities,
                profile=_geotiff_profile(plan, count=len(plan.classes)) | {"nodata": PROB_NODATA},
                tags=tags | {"SCALE": f"probability = value / {PROB_SCALE:g}"},
                band_descriptions=list(plan.classes),
                # GDAL band scale: QGIS and rasterio/GDAL users see probabilities 0-1.
                band_scales=[(1.0 / PROB_SCALE, 0.0)] * len(plan.classes),
            )

    def add(self, result: BlockResult) -> None:
        """Write one block's rasters and keep its polygons."""
        block = self.plan.blocks[result.index]
        if self.raster is not None:
            self.raster.write(result.classes, block.core)
        if self.probabilities is not None and result.probabilities is not None:
            self.probabilities.write(result.probabilities, block.core)
        for name, polys in result.seams.items():
            self.merger.add(name, block=block.index, row=block.row, col=block.col, polygons=polys)
        for name, finished in result.interior.items():
            self._store(name, finished)
        self.merger.block_done(block.row, block.col)
        for name, merged in self.merger.pop_finished().items():
            self._store_merged(name, merged)
        for name, pieces in result.lines.items():
            self.lines[name].append(pieces)

    def finish(self, provenance: Mapping[str, str]) -> dict[str, int]:
        """Write the layers, styles and provenance; move every file to its final name."""
        counts = self._write_layers(provenance)
        counts.update(self._write_centerlines(provenance))
        colors = dict(zip(self.plan.classes, self.plan.colors, strict=True))
        styles = {
            name: (fill_qml(color), f"geoseg default style: {name}")
            for name, color in colors.items()
        }
        styles.update(
            {
                f"{name}_centerlines": (line_qml(colors[name]), f"geoseg: {name} centrelines")
                for name in self.plan.centerlines
            }
        )
        self.gpkg.write_styles(styles)
        self.gpkg.write_provenance(provenance)
        tags = {f"GEOSEG_{k.upper()}": v for k, v in provenance.items()}
        if self.raster is not None:
            self.raster.update_tags(**tags)
            self._write_raster_style()
            self.raster.commit(cog=self.cog, overview_resampling="mode")
        if self.probabilities is not None:
            self.probabilities.update_tags(**tags)
            self.probabilities.commit(cog=self.cog, overview_resampling="average")
        self.gpkg.commit()
        return counts

    def _write_raster_style(self) -> None:
        style = self.paths.raster_style
        if style is None:
            return
        entries = [(0, "#000000", 0, "background")]
        entries += [
            (v, color, 255, name)
            for v, (name, color) in enumerate(
                zip(self.plan.classes, self.plan.colors, strict=True), start=1
            )
        ]
        tmp = style.with_name(f".{style.name}.partial")
        tmp.write_text(paletted_qml(entries), encoding="utf-8")
        os.replace(tmp, style)

    def abort(self) -> None:
        """Remove every temporary file."""
        self.gpkg.abort()
        self.store.discard()
        for writer in (self.raster, self.probabilities):
            if writer is not None:
                writer.abort()

    def _to_dst(self, geoms: np.ndarray) -> np.ndarray:
        if self.dst_crs is None or self.plan.scene.crs is None or len(geoms) == 0:
            return geoms
        tr = pyproj.Transformer.from_crs(
            self.plan.scene.crs.to_wkt(), self.dst_crs.to_wkt(), always_xy=True
        )

        def fn(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return tr.transform(x, y)

        return shapely.transform(geoms, fn, interleaved=False)

    def _write_centerlines(self, provenance: Mapping[str, str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        scene = self.plan.scene
        for name, pieces in self.lines.items():
            lines_px = merge_centerlines(pieces) if pieces else np.empty(0, dtype=object)
            lines = pixels_to_crs(lines_px, scene.transform)
            length = line_lengths_m(lines, crs=scene.crs)
            n = len(lines)
            layer = f"{name}_centerlines"
            self.gpkg.write_layer(
                layer,
                self._to_dst(lines),
                {
                    "class": np.full(n, name, dtype=object),
                    "length_m": np.asarray(length, dtype=np.float64),
                    "scene": np.full(n, Path(scene.path).name, dtype=object),
                },
                geometry_type="LineString",
                metadata=provenance,
            )
            counts[layer] = n
        return counts

    def _store(self, name: str, polys: ClassPolygons) -> None:
        n = len(polys.keys)
        keys = polys.keys.reshape(-1, 2).astype(np.int64)
        self.store.add(
            name,
            self._to_dst(polys.geometries),
            {
                "key": (keys[:, 0] << 32) + keys[:, 1],
                "class": np.full(n, name, dtype=object),
                "area_m2": np.asarray(polys.area_m2, dtype=np.float64),
                "confidence": np.asarray(polys.confidence, dtype=np.float64),
                "pixels": np.asarray(polys.pixels, dtype=np.int64),
                "block_id": keys[:, 0],
                "scene": np.full(n, self.scene_name, dtype=object),
            },
        )

    def _store_merged(self, name: str, merged: MergedPolygons) -> None:
        if len(merged):
            self._store(
                name,
                finish_polygons(
                    merged.geometries, merged.pixels, merged.conf_sum, merged.keys, plan=self.plan
                ),
            )

    def _write_layers(self, provenance: Mapping[str, str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in self.plan.classes:
            self._store_merged(name, self.merger.finish(name))
            n = self.store.copy_sorted(name, self.gpkg, metadata=provenance)
            if n < 0:  # no feature at all: still an (empty) layer
                empty = np.empty(0, dtype=object)
                self.gpkg.write_layer(
                    name,
                    empty,
                    {
                        "class": empty,
                        "area_m2": np.empty(0, np.float64),
                        "confidence": np.empty(0, np.float64),
                        "pixels": np.empty(0, np.int64),
                        "block_id": np.empty(0, np.int64),
                        "scene": empty,
                    },
                    metadata=provenance,
                )
                n = 0
            counts[name] = n
        self.store.discard()
        return counts


def check_outputs(paths: Sequence[Path], *, overwrite: bool) -> None:
    """Fail before any work when an output folder is missing or a file would be replaced."""
    for p in paths:
        if not p.parent.is_dir():
            raise ConfigError(f"output folder {str(p.parent)!r} does not exist")
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{str(p)!r} exists; pass --overwrite to replace it")
