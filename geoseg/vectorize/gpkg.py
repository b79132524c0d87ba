"""Writing the GeoPackage: one polygon layer per class, written atomically.

Layers are written into a hidden temporary file next to the target and the file is renamed
when every layer is in: a failed or interrupted run never leaves a GeoPackage that looks
finished. Temporaries are new files with unpredictable names (:mod:`geoseg.tiling.atomic`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from geoseg.errors import OutputWriteError
from geoseg.tiling.atomic import commit, create_temporary

__all__ = ["GeoPackageWriter", "PolygonStore"]


def _write_raw(
    path: Path,
    wkb: np.ndarray,
    columns: Mapping[str, np.ndarray],
    *,
    layer: str,
    crs: CRS | None,
    **options: Any,
) -> None:
    """Features as WKB and column arrays into a GeoPackage layer (pyogrio's raw writer)."""
    import pyogrio.raw

    with warnings.catch_warnings():  # a scene without a CRS is reported once, by the CLI
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        pyogrio.raw.write(
            path,
            wkb,
            [np.asarray(v) for v in columns.values()],
            list(columns),
            driver="GPKG",
            layer=layer,
            crs=crs.to_wkt() if crs is not None else None,
            **options,
        )


class GeoPackageWriter:
    """Accumulates layers in a new temporary (``.<name>.partial-<random>.gpkg``), renamed
    on :meth:`commit`.
    """

    def __init__(self, path: str | os.PathLike[str], *, crs: CRS | None) -> None:
        self.path = Path(path)
        self.crs = crs
        self.layers: list[str] = []
        try:
            self.tmp_path = create_temporary(self.path, suffix=".gpkg")
        except OSError as err:
            raise OutputWriteError(f"cannot create {self.path}: {err.strerror or err}") from err

    def write_layer(
        self,
        name: str,
        geometries: np.ndarray,
        columns: Mapping[str, np.ndarray],
        *,
        geometry_type: str = "Polygon",
        metadata: Mapping[str, str] | None = None,
        append: bool = False,
    ) -> None:
        """Write one layer (an empty layer when ``geometries`` is empty), or append to it."""
        import shapely

        wkb = shapely.to_wkb(np.asarray(geometries, dtype=object))
        self.write_wkb(
            name,
            wkb,
            columns,
            geometry_type=geometry_type,
            metadata=metadata,
            append=append,
        )

    def write_wkb(
        self,
        name: str,
        wkb: np.ndarray,
        columns: Mapping[str, np.ndarray],
        *,
        geometry_type: str = "Polygon",
        metadata: Mapping[str, str] | None = None,
        append: bool = False,
    ) -> None:
        """:meth:`write_layer` for geometries already in WKB: nothing is parsed here."""
        try:
            _write_raw(
                self.tmp_path,
                wkb,
                columns,
                layer=name,
                crs=self.crs,
                geometry_type=geometry_type,
                layer_metadata=dict(metadata) if metadata and not append else None,
                # GeoPackage 1.2: readable by the GDAL of older QGIS 3 releases too.
                dataset_options={"VERSION": "1.2"} if not self.layers else None,
                append=append,
            )
        except Exception as err:  # pyogrio raises DataSourceError, DataLayerError, OSError ...
            raise OutputWriteError(f"cannot write layer {name!r} to {self.path}: {err}") from err
        if name not in self.layers:
            self.layers.append(name)

    def _write_table(self, name: str, columns: Mapping[str, list[Any]]) -> None:
        import pandas as pd
        import pyogrio

        try:
            pyogrio.write_dataframe(pd.DataFrame(dict(columns)), self.tmp_path, layer=name)
        except Exception as err:
            raise OutputWriteError(f"cannot write table {name!r} to {self.path}: {err}") from err

    def write_styles(self, styles: Mapping[str, tuple[str, str]]) -> None:
        """Store ``{layer: (qml, description)}`` as the layers' default QGIS styles.

        Uses QGIS's ``layer_styles`` table convention; ``useAsDefault`` makes QGIS apply
        the style when the layer is loaded.
        """
        import datetime as dt

        now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
        layers = [name for name in styles if name in self.layers]
        self._write_table(
            "layer_styles",
            {
                "f_table_catalog": [""] * len(layers),
                "f_table_schema": [""] * len(layers),
                "f_table_name": layers,
                "f_geometry_column": ["geom"] * len(layers),
                "styleName": [f"geoseg {name}" for name in layers],
                "styleQML": [styles[name][0] for name in layers],
                "styleSLD": [""] * len(layers),
                "useAsDefault": [True] * len(layers),
                "description": [styles[name][1] for name in layers],
                "owner": ["geoseg"] * len(layers),
                "ui": [""] * len(layers),
                "update_time": [now] * len(layers),
            },
        )

    def write_provenance(self, provenance: Mapping[str, str]) -> None:
        """A ``geoseg_provenance`` key/value table: how this file was made."""
        self._write_table(
            "geoseg_provenance",
            {"key": list(provenance), "value": [str(v) for v in provenance.values()]},
        )

    def commit(self) -> Path:
        """Move the finished GeoPackage to its final name."""
        if not self.layers:
            raise OutputWriteError(f"nothing was written to {self.path}")
        commit(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Delete the temporary file (and SQLite side files)."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.tmp_path}{suffix}").unlink(missing_ok=True)


class PolygonStore:
    """Finished features per layer, spilled to a staging GeoPackage as they come.

    Blocks complete in any order; features are appended to a hidden staging file in
    batches (memory stays bounded by the batch, never by the scene) with an integer sort
    ``key``. :meth:`copy_sorted` then streams each layer into the output in key order, so
    the output is the same whatever order the blocks completed in.
    """

    BATCH = 20_000

    def __init__(self, path: Path, *, crs: CRS | None) -> None:
        """``path``: the output this store stages for; the store is a new temporary next to
        it (``.<name>.partial-<random>.gpkg``)."""
        try:
            self.path = create_temporary(path, suffix=".gpkg")
        except OSError as err:
            raise OutputWriteError(f"cannot create a staging file for {path}: {err}") from err
        self.crs = crs
        self._buffers: dict[str, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {}
        self._buffered: dict[str, int] = {}
        self._written: set[str] = set()

    def add(self, layer: str, geometries: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Queue features; ``columns`` must hold an int64 ``key``."""
        if len(geometries) == 0:
            return
        self._buffers.setdefault(layer, []).append((geometries, dict(columns)))
        self._buffered[layer] = self._buffered.get(layer, 0) + len(geometries)
        if self._buffered[layer] >= self.BATCH:
            self._flush(layer)

    def _flush(self, layer: str) -> None:
        import shapely

        parts = self._buffers.pop(layer, [])
        self._buffered[layer] = 0
        if not parts:
            return
        wkb = shapely.to_wkb(np.concatenate([g for g, _ in parts]))
        cols = {k: np.concatenate([c[k] for _, c in parts]) for k in parts[0][1]}
        del parts
        try:
            _write_raw(
                self.path,
                wkb,
                cols,
                layer=layer,
                crs=self.crs,
                geometry_type="Unknown",
                append=layer in self._written,
                layer_options={"SPATIAL_INDEX": "NO"},
            )
        except Exception as err:
            raise OutputWriteError(f"cannot stage layer {layer!r} in {self.path}: {err}") from err
        self._written.add(layer)

    def copy_sorted(
        self,
        layer: str,
        out: GeoPackageWriter,
        *,
        geometry_type: str = "Polygon",
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Write ``layer`` into ``out`` in ``key`` order, in batches; returns the count."""
        import sqlite3

        import pyogrio.raw

        self._flush(layer)
        if layer not in self._written:
            return -1
        with sqlite3.connect(self.path) as db:
            db.execute(f'CREATE INDEX IF NOT EXISTS "{layer}_key" ON "{layer}"(key)')
        last, count = -1, 0
        while True:
            # Raw WKB in and out: an object of millions of vertices is never parsed.
            meta, _, wkb, values = pyogrio.raw.read(
                self.path,
                sql=f'SELECT * FROM "{layer}" WHERE key > {last} ORDER BY key LIMIT {self.BATCH}',
                sql_dialect="SQLITE",
            )
            if len(wkb) == 0:
                return count
            fields = dict(zip(meta["fields"], values, strict=True))
            last = int(fields.pop("key")[-1])
            out.write_wkb(
                layer,
                wkb,
                fields,
                geometry_type=geometry_type,
                metadata=metadata,
                append=count > 0,
            )
            count += len(wkb)

    def discard(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
