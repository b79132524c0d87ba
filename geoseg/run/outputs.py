"""The files a run writes, written by the client only, under temporary names.

- ``<name>.gpkg``: one polygon layer per class (plus ``roads_centerlines`` when roads are
  requested), QGIS default styles in ``layer_styles``, a ``geoseg_provenance`` table.
- ``<name>_classes.tif``: the class raster as a Cloud Optimized GeoTIFF (overviews by mode,
  colour table, nodata 255), provenance in its tags.
- ``<name>_probabilities.tif`` (optional): per-class probability, uint8 ``p * 254``,
  nodata 255, one band per requested class; the bands' GDAL scale is ``1 / 254``, so
  QGIS shows (and ``gdalinfo`` / rasterio report) probabilities 0-1.

Nothing appears under a final name until every output of the run is complete. Temporaries
are new files with unpredictable names (:mod:`geoseg.tiling.atomic`); beside the outputs a
run keeps its block journal (``.<name>.gpkg.journal``, for ``--resume``) and, while it runs,
its lock (``.<name>.gpkg.lock``, :mod:`geoseg.run.lock`).

:func:`check_outputs` runs before any work: no output may be an input of the run (the scene,
a model file), whatever the flags; an existing output needs ``overwrite``; a symbolic link
at an output's name counts as an existing file and is replaced, never written through.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import shapely
from rasterio.crs import CRS

from geoseg import __version__
from geoseg.errors import ConfigError, OutputExistsError, OutputWriteError
from geoseg.run.plan import NODATA_CLASS, RunPlan
from geoseg.run.results import BlockResult, ClassPolygons, finish_polygons
from geoseg.tiling.atomic import write_text_atomic
from geoseg.tiling.io import RasterWriter
from geoseg.vectorize.centerlines import (
    BlockLines,
    bridge_centerlines,
    line_lengths_m,
    merge_centerlines,
)
from geoseg.vectorize.geometry import pixels_to_crs
from geoseg.vectorize.gpkg import GeoPackageWriter, PolygonStore
from geoseg.vectorize.merge import MergedPolygons, SeamMerger
from geoseg.vectorize.styles import centerline_qml, paletted_qml, polygon_qml, ramp_qml

__all__ = ["OutputPaths", "RunOutputs", "check_outputs", "output_paths"]

PROB_NODATA = 255
PROB_SCALE = 254.0


class OutputPaths:
    """Where a run's files go, derived from the ``-o`` GeoPackage path."""

    def __init__(
        self, gpkg: Path, *, raster: bool, probabilities: bool, uncertainty: bool = False
    ) -> None:
        self.gpkg = gpkg
        self.raster = gpkg.with_name(f"{gpkg.stem}_classes.tif") if raster else None
        # QGIS applies <raster name>.qml next to a raster as its default style.
        self.raster_style = self.raster.with_suffix(".qml") if self.raster else None
        self.probabilities = (
            gpkg.with_name(f"{gpkg.stem}_probabilities.tif") if probabilities else None
        )
        self.uncertainty = gpkg.with_name(f"{gpkg.stem}_uncertainty.tif") if uncertainty else None
        self.uncertainty_style = self.uncertainty.with_suffix(".qml") if self.uncertainty else None
        # Beside the outputs: the block journal (kept for --resume) and the run's lock.
        self.journal = gpkg.with_name(f".{gpkg.name}.journal")
        self.lock = gpkg.with_name(f".{gpkg.name}.lock")

    def all(self) -> list[Path]:
        """The output files (those a finished run leaves)."""
        paths = (
            self.gpkg,
            self.raster,
            self.raster_style,
            self.probabilities,
            self.uncertainty,
            self.uncertainty_style,
        )
        return [p for p in paths if p is not None]

    def side_files(self) -> list[Path]:
        """Files a run keeps beside its outputs: the journal and the lock."""
        return [self.journal, self.lock]


# Characters GDAL (or pyogrio's path parsing) takes for something else in a file name: ';'
# cuts the name (a run on 'a;b.gpkg' wrote '.a'), '!' names a member of an archive, and
# control characters are stripped or end the name.
_GDAL_UNSAFE = re.compile(r"[;!\x00-\x1f\x7f]")


def check_output_name(path: str | os.PathLike[str]) -> None:
    """Refuse an output path GDAL would read as something else (exit 2 in the CLI).

    Raises
    ------
    ConfigError
        For a GDAL virtual path or URL, or a path holding ``;``, ``!`` or a control character.
    """
    text = os.fspath(path)
    if text.startswith("/vsi") or "://" in text:
        raise ConfigError(
            f"output {_short(text)!r} must be a file on a local or mounted file system "
            "(geoseg renames finished outputs into place); copy them elsewhere afterwards"
        )
    bad = _GDAL_UNSAFE.search(os.path.abspath(text))
    if bad:
        raise ConfigError(
            f"output {_short(text)!r} holds {bad.group()!r}, which GDAL reads as part of a "
            "path syntax, not a file name; use a name (and folder) without ';', '!' or "
            "control characters"
        )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def output_paths(
    output: str | os.PathLike[str],
    *,
    raster: bool = True,
    probabilities: bool = False,
    uncertainty: bool = False,
) -> OutputPaths:
    """The output files for ``-o output`` (which must be a ``.gpkg``; see
    :func:`check_output_name`)."""
    gpkg = Path(output)
    if gpkg.suffix.lower() != ".gpkg":
        raise ConfigError(
            f"output {_short(str(gpkg))!r} must end in .gpkg, e.g. {_short(gpkg.stem)}.gpkg"
        )
    check_output_name(gpkg)
    return OutputPaths(gpkg, raster=raster, probabilities=probabilities, uncertainty=uncertainty)


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
        self.store = PolygonStore(paths.gpkg, crs=self.dst_crs or plan.scene.crs)
        self.scene_name = Path(plan.scene.path).name
        self.lines: dict[str, list[BlockLines]] = {c: [] for c in plan.centerlines}
        self.raster: RasterWriter | None = None
        self.probabilities: RasterWriter | None = None
        self.uncertainty: RasterWriter | None = None
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
        if paths.uncertainty is not None:
            self.uncertainty = RasterWriter(
                paths.uncertainty,
                profile=_geotiff_profile(plan, count=1) | {"nodata": PROB_NODATA},
                tags=tags | {"SCALE": f"normalised class entropy = value / {PROB_SCALE:g}"},
                band_descriptions=["uncertainty"],
                band_scales=[(1.0 / PROB_SCALE, 0.0)],
            )

    def add(self, result: BlockResult) -> None:
        """Write one block's rasters and keep its polygons."""
        block = self.plan.blocks[result.index]
        if self.raster is not None:
            self.raster.write(result.classes, block.core)
        if self.probabilities is not None and result.probabilities is not None:
            self.probabilities.write(result.probabilities, block.core)
        if self.uncertainty is not None and result.uncertainty is not None:
            self.uncertainty.write(result.uncertainty[np.newaxis], block.core)
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
            name: (
                polygon_qml(name, color, under_lines=name in self.plan.centerlines),
                f"geoseg default style: {name}",
            )
            for name, color in colors.items()
        }
        styles.update(
            {
                f"{name}_centerlines": (centerline_qml(colors[name]), f"geoseg: {name} centrelines")
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
        if self.uncertainty is not None and self.paths.uncertainty_style is not None:
            self.uncertainty.update_tags(**tags)
            stops = [(0, "#1a9850", "sure"), (127, "#fee08b", ""), (254, "#d73027", "unsure")]
            write_text_atomic(self.paths.uncertainty_style, ramp_qml(stops))
            self.uncertainty.commit(cog=self.cog, overview_resampling="average")
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
        write_text_atomic(style, paletted_qml(entries))

    def abort(self) -> None:
        """Remove every temporary file."""
        self.gpkg.abort()
        self.store.discard()
        for writer in (self.raster, self.probabilities, self.uncertainty):
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
            # Small gaps (BRIDGE_M) between facing dead ends, on the whole scene's lines.
            lines_px = bridge_centerlines(lines_px, pixel_size_m=self.plan.pixel_size_m)
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


def check_outputs(
    paths: Sequence[Path],
    *,
    overwrite: bool,
    inputs: Iterable[tuple[str, str | os.PathLike[str]]] = (),
    side: Sequence[Path] = (),
) -> None:
    """Fail before any work when an output cannot or must not be written.

    Parameters
    ----------
    paths
        The run's outputs.
    overwrite
        Existing outputs may be replaced.
    inputs
        ``(what, path)`` of the run's inputs (``("scene", ...)``, ``("model", ...)``): no
        output may be one of them, whatever ``overwrite`` says. Paths are compared after
        resolving symbolic links (and as the same file when both exist); GDAL virtual paths
        and built-in method names are skipped.
    side
        Files the run keeps beside its outputs (journal, lock): checked against the inputs
        only (an existing journal is what ``--resume`` reads).

    Raises
    ------
    ConfigError
        An output folder is missing, or an output is an input.
    OutputExistsError
        An output exists (a file, a link, a folder) and ``overwrite`` is not set, or it is a
        folder.
    OutputWriteError
        An output folder is not writable.
    """
    local = [(what, Path(p)) for what, p in inputs if _is_local_file(p)]
    for p in [*paths, *side]:
        for what, inp in local:
            if _same_file(p, inp):
                raise ConfigError(
                    f"output {_short(str(p))!r} would replace the input {what} "
                    f"{_short(str(inp))!r}; choose another -o (geoseg never replaces its input)"
                )
    for p in paths:
        folder = p.parent
        if not folder.is_dir():
            raise ConfigError(f"output folder {_short(str(folder))!r} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputWriteError(
                f"output folder {_short(str(folder))!r} is not writable; choose another -o"
            )
        if p.is_dir():
            raise OutputExistsError(f"{_short(str(p))!r} is a folder; choose another -o")
        if os.path.lexists(p) and not overwrite:
            raise OutputExistsError(f"{_short(str(p))!r} exists; pass --overwrite to replace it")


def _is_local_file(path: str | os.PathLike[str]) -> bool:
    text = os.fspath(path)
    return not (text.startswith("/vsi") or "://" in text) and os.path.isfile(text)


def _same_file(a: Path, b: Path) -> bool:
    """Whether writing ``a`` would replace ``b``: the same path once links are resolved, or
    (both existing) the same file."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # ``a`` does not exist yet
        return False
