"""The GeoPackage writer: atomic, readable back with pyogrio, styled and self-describing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from rasterio.crs import CRS

from geoseg.errors import GeosegError, OutputWriteError
from geoseg.vectorize.gpkg import GeoPackageWriter, PolygonStore
from geoseg.vectorize.styles import fill_qml

UTM = CRS.from_epsg(32617)


def _squares(n: int, start: int = 0) -> np.ndarray:
    return np.array(
        [shapely.box(500000 + 10 * i, 4000000, 500010 + 10 * i, 4000010) for i in range(start, n)],
        dtype=object,
    )


def _layers(path: Path) -> dict[str, str]:
    return {str(name): str(kind) for name, kind in pyogrio.list_layers(path)}


def test_layers_appear_under_the_final_name_only_on_commit(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    writer = GeoPackageWriter(out, crs=UTM)
    writer.write_layer(
        "water",
        _squares(3),
        {"area_m2": np.array([100.0, 100.0, 100.0]), "confidence": np.array([0.9, 0.8, 0.7])},
        metadata={"class": "water"},
    )
    writer.write_layer("roads", np.empty(0, dtype=object), {"area_m2": np.empty(0)})
    # until the commit, nothing looks finished: only hidden partial files exist
    assert not out.exists()
    assert all(p.name.startswith(".scene.gpkg.") for p in tmp_path.iterdir())
    assert writer.commit() == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.gpkg"]

    assert set(_layers(out)) == {"water", "roads"}
    water = pyogrio.read_dataframe(out, layer="water")
    assert len(water) == 3 and water.crs.to_epsg() == 32617
    assert water["confidence"].tolist() == [0.9, 0.8, 0.7]
    assert shapely.equals(np.asarray(water.geometry.values), _squares(3)).all()
    assert _layers(out)["water"] == "Polygon"
    # an empty class is an empty layer, not a missing one
    assert len(pyogrio.read_dataframe(out, layer="roads")) == 0
    assert pyogrio.read_info(out, layer="water")["layer_metadata"] == {"class": "water"}


def test_appending_adds_features_to_a_layer(tmp_path: Path) -> None:
    out = tmp_path / "lines.gpkg"
    writer = GeoPackageWriter(out, crs=UTM)
    lines = np.array([shapely.LineString([(0, 0), (1, 1)]), shapely.LineString([(2, 2), (3, 2)])])
    for part, length, append in ((lines[:1], 1.4, False), (lines[1:], 1.0, True)):
        writer.write_layer(
            "roads_centerlines",
            part,
            {"length_m": np.array([length])},
            geometry_type="LineString",
            append=append,
        )
    writer.commit()
    got = pyogrio.read_dataframe(out, layer="roads_centerlines")
    assert got["length_m"].tolist() == [1.4, 1.0]
    assert writer.layers == ["roads_centerlines"]


def test_a_scene_without_a_crs_still_writes(tmp_path: Path) -> None:
    out = tmp_path / "nocrs.gpkg"
    writer = GeoPackageWriter(out, crs=None)
    writer.write_layer("water", _squares(1), {"area_m2": np.array([100.0])})
    writer.commit()
    assert pyogrio.read_dataframe(out, layer="water").crs is None


def test_abort_leaves_nothing_behind_and_keeps_an_earlier_output(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    out.write_bytes(b"the previous run's output")
    writer = GeoPackageWriter(out, crs=UTM)
    writer.write_layer("water", _squares(2), {"area_m2": np.array([1.0, 2.0])})
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.gpkg"]
    assert out.read_bytes() == b"the previous run's output"


def test_a_stale_partial_file_from_a_killed_run_is_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    first = GeoPackageWriter(out, crs=UTM)
    first.write_layer("stale", _squares(1), {"area_m2": np.array([1.0])})
    # killed here; a new run writes the same output
    second = GeoPackageWriter(out, crs=UTM)
    second.write_layer("water", _squares(1), {"area_m2": np.array([1.0])})
    second.commit()
    assert set(_layers(out)) == {"water"}


def test_committing_nothing_is_an_error(tmp_path: Path) -> None:
    writer = GeoPackageWriter(tmp_path / "scene.gpkg", crs=UTM)
    with pytest.raises(OutputWriteError, match="nothing was written"):
        writer.commit()


def test_an_output_that_cannot_be_written_is_an_output_write_error(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "folder" / "scene.gpkg"

    def write() -> None:
        writer = GeoPackageWriter(target, crs=UTM)
        writer.write_layer("water", _squares(1), {"area_m2": np.array([1.0])})

    with pytest.raises(OutputWriteError, match=r"cannot .*no/such/folder/scene\.gpkg") as err:
        write()
    assert isinstance(err.value, GeosegError) and isinstance(err.value, OSError)


def test_commit_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "precious.gpkg"
    elsewhere.write_bytes(b"not ours")
    out = tmp_path / "scene.gpkg"
    out.symlink_to(elsewhere)
    writer = GeoPackageWriter(out, crs=UTM)
    writer.write_layer("water", _squares(1), {"area_m2": np.array([1.0])})
    writer.commit()
    assert not out.is_symlink() and set(_layers(out)) == {"water"}
    assert elsewhere.read_bytes() == b"not ours"


def test_styles_are_stored_as_qgis_defaults_for_written_layers(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    writer = GeoPackageWriter(out, crs=UTM)
    writer.write_layer("water", _squares(1), {"area_m2": np.array([1.0])})
    writer.write_styles(
        {
            "water": (fill_qml("#1f78b4"), "geoseg default style: water"),
            "ghost": (fill_qml("#000000"), "a layer that was never written"),
        }
    )
    writer.write_provenance({"geoseg_version": "0.1.0", "run_seconds": 1.5})  # type: ignore[dict-item]
    writer.commit()
    with sqlite3.connect(out) as db:
        rows = db.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML, description "
            "FROM layer_styles"
        ).fetchall()
        provenance = dict(db.execute("SELECT key, value FROM geoseg_provenance").fetchall())
    assert len(rows) == 1
    table, geom_column, default, qml, description = rows[0]
    assert table == "water" and bool(default) and description == "geoseg default style: water"
    assert "31,120,180,110" in qml
    # QGIS finds the layer's geometry under the column the style names
    assert geom_column == pyogrio.read_info(out, layer="water")["geometry_name"]
    assert provenance == {"geoseg_version": "0.1.0", "run_seconds": "1.5"}


def test_the_store_gives_features_back_in_key_order_whatever_order_they_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PolygonStore, "BATCH", 4)  # several staged and copied batches
    store = PolygonStore(tmp_path / ".scene.staging.gpkg", crs=UTM)
    geoms = _squares(11)
    keys = np.array([7, 3, 10, 0, 5, 1, 9, 2, 8, 4, 6], dtype=np.int64)
    order = [slice(0, 2), slice(2, 3), slice(3, 9), slice(9, 11)]  # blocks finishing
    for part in order:
        store.add("water", geoms[part], {"key": keys[part], "area_m2": keys[part] * 10.0})
    store.add("water", np.empty(0, dtype=object), {"key": np.empty(0, dtype=np.int64)})

    out = tmp_path / "scene.gpkg"
    writer = GeoPackageWriter(out, crs=UTM)
    assert store.copy_sorted("water", writer, metadata={"class": "water"}) == 11
    writer.commit()
    store.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.gpkg"]  # staging is gone
    got = pyogrio.read_dataframe(out, layer="water")
    assert got["area_m2"].tolist() == [10.0 * k for k in range(11)]
    assert "key" not in got.columns  # the sort key is staging bookkeeping
    expected = geoms[np.argsort(keys)]
    assert shapely.equals(np.asarray(got.geometry.values), expected).all()
    assert _layers(out)["water"] == "Polygon"
    assert pyogrio.read_info(out, layer="water")["layer_metadata"] == {"class": "water"}


def test_the_store_reports_a_layer_that_got_no_feature(tmp_path: Path) -> None:
    store = PolygonStore(tmp_path / ".staging.gpkg", crs=UTM)
    writer = GeoPackageWriter(tmp_path / "scene.gpkg", crs=UTM)
    assert store.copy_sorted("water", writer) == -1
    assert writer.layers == []


def test_a_new_store_starts_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PolygonStore, "BATCH", 1)  # staged at once
    out = tmp_path / "scene.gpkg"
    old = PolygonStore(out, crs=UTM)
    old.add("water", _squares(1), {"key": np.array([0], dtype=np.int64)})
    new = PolygonStore(out, crs=UTM)  # a new run on the same output
    writer = GeoPackageWriter(out, crs=UTM)
    assert new.copy_sorted("water", writer) == -1  # nothing of the old run's features
    for done in (old.discard, new.discard, writer.abort):
        done()
    assert os.listdir(tmp_path) == []
