"""Writing the GeoPackage: one polygon layer per class, written atomically.

Layers are written into a hidden temporary file next to the target and the file is renamed
when every layer is in: a failed or interrupted run never leaves a GeoPackage that looks
finished.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from geoseg.errors import OutputWriteError

__all__ = ["GeoPackageWriter"]


class GeoPackageWriter:
    """Accumulates layers in ``.<name>.partial`` and renames it on :meth:`commit`."""

    def __init__(self, path: str | os.PathLike[str], *, crs: CRS | None) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.partial.gpkg")
        self.crs = crs
        self.layers: list[str] = []
        self.tmp_path.unlink(missing_ok=True)

    def write_layer(
        self,
        name: str,
        geometries: np.ndarray,
        columns: Mapping[str, np.ndarray],
        *,
        geometry_type: str = "Polygon",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write one layer (an empty layer when ``geometries`` is empty)."""
        import geopandas as gpd
        import pyogrio

        crs: Any = self.crs.to_wkt() if self.crs is not None else None
        frame = gpd.GeoDataFrame(
            {k: np.asarray(v) for k, v in columns.items()},
            geometry=gpd.GeoSeries(list(geometries), crs=crs),
        )
        try:
            pyogrio.write_dataframe(
                frame,
                self.tmp_path,
                layer=name,
                driver="GPKG",
                geometry_type=geometry_type,
                layer_metadata=dict(metadata) if metadata else None,
                # GeoPackage 1.2: readable by the GDAL of older QGIS 3 releases too.
                dataset_options={"VERSION": "1.2"} if not self.layers else None,
            )
        except Exception as err:  # pyogrio raises DataSourceError, DataLayerError, OSError ...
            raise OutputWriteError(f"cannot write layer {name!r} to {self.path}: {err}") from err
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
        if not self.tmp_path.exists():
            raise OutputWriteError(f"nothing was written to {self.path}")
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Delete the temporary file (and SQLite side files)."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.tmp_path}{suffix}").unlink(missing_ok=True)
