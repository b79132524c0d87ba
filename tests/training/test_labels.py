"""Labels on the image grid: class rasters and vector files rasterised in the image CRS."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from geoseg.errors import ConfigError
from geoseg.models.card import ClassInfo
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info, write_array
from geoseg.training.labels import IGNORE_INDEX, ClassMap, LabelReader, LabelSource

UTM = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
CLASSES = (
    ClassInfo(name="background", color="#000000"),
    ClassInfo(name="water", color="#1f78b4"),
    ClassInfo(name="crops", color="#33a02c"),
)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.tif"
    write_array(path, np.ones((3, 64, 64), dtype=np.uint8), crs=UTM, transform=TRANSFORM)
    return read_scene_info(path)


def _window(r: int, c: int, h: int, w: int) -> PixelWindow:
    return PixelWindow(row_off=r, col_off=c, height=h, width=w)


def _write_vectors(path, geoms, values, *, crs, column="kind"):
    gpd.GeoDataFrame({column: values}, geometry=geoms, crs=crs).to_file(path, engine="pyogrio")


def test_vector_labels_in_another_crs_land_on_the_right_pixels(tmp_path, image):
    # Rectangles on pixel edges, built in UTM, stored in EPSG:4326.
    px = lambda r, c: (TRANSFORM.c + 10 * c, TRANSFORM.f - 10 * r)  # noqa: E731
    lake = box(*px(30, 20), *px(10, 45))  # rows 10..29, cols 20..44
    field = box(*px(60, 2), *px(40, 12))  # rows 40..59, cols 2..11
    utm = gpd.GeoSeries([lake, field], crs=UTM).segmentize(10.0)
    geo = utm.to_crs("EPSG:4326")
    assert geo.total_bounds[0] < 20  # really in degrees
    gpkg = tmp_path / "labels.gpkg"
    _write_vectors(gpkg, geo.values, ["Lake", "Wheat"], crs="EPSG:4326")

    class_map = ClassMap(classes=CLASSES, values={"Lake": "water", "Wheat": "crops"})
    reader = LabelReader(
        LabelSource(path=str(gpkg), attribute="kind"), image=image, class_map=class_map
    )
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[10:30, 20:45] = 1
    expected[40:60, 2:12] = 2
    np.testing.assert_array_equal(reader.read(image.window), expected)

    # A window reaching past the scene: the same pixels inside, ignore outside.
    part = reader.read(_window(-8, 40, 32, 32))
    np.testing.assert_array_equal(part[8:, :24], expected[0:24, 40:64])
    assert np.all(part[:8] == IGNORE_INDEX) and np.all(part[:, 24:] == IGNORE_INDEX)


def test_sparse_polygons_leave_the_rest_unlabelled(tmp_path, image):
    gj = tmp_path / "polys.geojson"
    x0, y0 = TRANSFORM.c, TRANSFORM.f
    _write_vectors(gj, [box(x0, y0 - 100, x0 + 100, y0)], ["water"], crs=UTM, column="class")
    # No value map: string attributes are class names.
    reader = LabelReader(
        LabelSource(path=str(gj), attribute="class", outside="ignore"),
        image=image,
        class_map=ClassMap(classes=CLASSES),
    )
    labels = reader.read(image.window)
    assert np.all(labels[:10, :10] == 1)
    assert np.all(labels[10:, :] == IGNORE_INDEX) and np.all(labels[:, 10:] == IGNORE_INDEX)


def test_raster_labels_are_mapped_and_nodata_is_ignored(tmp_path, image):
    values = np.zeros((64, 64), dtype=np.int16)
    values[:, 10:20] = 6  # water
    values[:, 20:30] = 7  # also water
    values[:, 30:40] = 2  # crops
    values[:, 40:50] = 9  # ignore on purpose
    values[:, 50:60] = 4  # not in the map
    values[:, 60:] = -1  # nodata
    path = tmp_path / "landcover.tif"
    write_array(path, values, crs=UTM, transform=TRANSFORM, nodata=-1)
    mapping = {6: "water", "7": 1, 2: "crops", 9: "ignore"}  # "7" and 7 are the same key
    for unmapped, fill in (("background", 0), ("ignore", IGNORE_INDEX)):
        class_map = ClassMap(classes=CLASSES, values=mapping, unmapped=unmapped)
        reader = LabelReader(LabelSource(path=str(path)), image=image, class_map=class_map)
        row = reader.read(_window(5, 0, 1, 64))[0]
        expected = [fill] * 10 + [1] * 20 + [2] * 10 + [IGNORE_INDEX] * 10 + [fill] * 10
        assert row.tolist() == [*expected, *([IGNORE_INDEX] * 4)]


def test_identity_class_map_for_rasters(tmp_path, image):
    values = np.array([[0, 1, 2, 3, 200]], dtype=np.uint8).repeat(64, axis=0)
    values = np.pad(values, ((0, 0), (0, 59)))
    path = tmp_path / "classes.tif"
    write_array(path, values, crs=UTM, transform=TRANSFORM)
    reader = LabelReader(
        LabelSource(path=str(path)), image=image, class_map=ClassMap(classes=CLASSES)
    )
    assert reader.read(_window(0, 0, 1, 5))[0].tolist() == [0, 1, 2, 0, 0]


def test_raster_labels_on_another_grid_are_refused(tmp_path, image):
    path = tmp_path / "shifted.tif"
    shifted = TRANSFORM @ Affine.translation(1, 0)
    write_array(path, np.zeros((64, 64), dtype=np.uint8), crs=UTM, transform=shifted)
    with pytest.raises(ConfigError, match=r"not on the grid of image .* gdalwarp"):
        LabelReader(LabelSource(path=str(path)), image=image, class_map=ClassMap(classes=CLASSES))


def test_vector_errors_name_the_fix(tmp_path, image):
    gpkg = tmp_path / "l.gpkg"
    x0, y0 = TRANSFORM.c, TRANSFORM.f
    _write_vectors(gpkg, [box(x0, y0 - 50, x0 + 50, y0)], ["Forest"], crs=UTM)
    with pytest.raises(ConfigError, match="need attribute"):
        LabelSource(path=str(gpkg))
    with pytest.raises(ConfigError, match="no attribute 'class'; attributes: kind"):
        LabelReader(
            LabelSource(path=str(gpkg), attribute="class"),
            image=image,
            class_map=ClassMap(classes=CLASSES),
        )
    with pytest.raises(ConfigError, match="holds 'Forest'; map those values"):
        LabelReader(
            LabelSource(path=str(gpkg), attribute="kind"),
            image=image,
            class_map=ClassMap(classes=CLASSES),
        )


def test_class_map_validation():
    with pytest.raises(ConfigError, match="'lake' is not a class; valid: background, water"):
        ClassMap(classes=CLASSES, values={1: "lake"})
    with pytest.raises(ConfigError, match="mapped twice"):
        ClassMap(classes=CLASSES, values={1: "water", "1": "crops"})
    with pytest.raises(ConfigError, match="unmapped"):
        ClassMap(classes=CLASSES, unmapped="nodata")


def test_label_sources_round_trip_through_their_record():
    sources = [
        LabelSource(path="roads.gpkg", attribute="kind", all_touched=True),
        LabelSource(path="polys.shp", attribute="cls", layer="train", outside="ignore"),
        LabelSource(path="landcover.tif", band=2),
        LabelSource(path="landcover.tif"),
    ]
    for source in sources:
        assert LabelSource(**source.to_dict()) == source
    assert sources[0].to_dict()["all_touched"] is True
    # Defaults stay out of the record, so records written before all_touched was kept
    # (every run without it) read back the same.
    assert "all_touched" not in sources[1].to_dict()


def test_all_touched_reaches_the_card_record_and_the_resume_fingerprint(tmp_path):
    from geoseg.training.config import TrainConfig

    # The README's example: road lines burnt with all_touched.
    example = {
        "inputs": [{"image": "b.tif", "labels": {"path": "roads.gpkg", "attribute": "kind"}}],
        "class_map": {"classes": [{"name": "background"}, {"name": "roads"}]},
        "bands": ["red", "green", "blue"],
        "output": str(tmp_path / "m.safetensors"),
    }
    plain = TrainConfig.from_dict(example)
    example["inputs"][0]["labels"]["all_touched"] = True
    touched = TrainConfig.from_dict(example)
    record = touched.to_dict()
    assert record["inputs"][0]["labels"]["all_touched"] is True
    assert TrainConfig.from_dict(record).inputs[0].labels.all_touched
    assert touched.fingerprint() != plain.fingerprint(), "a resumed run must notice"


BOUNDARY_CLASSES = (
    ClassInfo(name="background", color="#000000"),
    ClassInfo(name="crops", color="#33a02c"),
    ClassInfo(name="field_boundary", color="#ffff99"),
)


def _two_touching_fields(tmp_path):
    """Fields at rows 10..39, cols 10..29 and cols 30..49: they share the edge at col 30."""
    px = lambda r, c: (TRANSFORM.c + 10 * c, TRANSFORM.f - 10 * r)  # noqa: E731
    west = box(*px(40, 10), *px(10, 30))
    east = box(*px(40, 30), *px(10, 50))
    gpkg = tmp_path / "fields.gpkg"
    _write_vectors(gpkg, [west, east], ["field", "field"], crs=UTM, column="class")
    return gpkg


def test_touching_fields_get_a_boundary_between_them(tmp_path, image):
    gpkg = _two_touching_fields(tmp_path)
    source = LabelSource(
        path=str(gpkg), attribute="class", boundary_px=2, boundary_class="field_boundary"
    )
    cmap = ClassMap(classes=BOUNDARY_CLASSES, values={"field": "crops"})
    labels = LabelReader(source, image=image, class_map=cmap).read(image.window)

    # The fields' union keeps its extent: crops or boundary inside, background outside.
    inside = np.zeros((64, 64), dtype=bool)
    inside[10:40, 10:50] = True
    assert np.all(labels[~inside] == 0)
    assert np.all(np.isin(labels[inside], [1, 2]))
    # A 4-pixel band (2 on each side) along the shared edge, and 2 pixels along the others.
    np.testing.assert_array_equal(
        labels[25, 8:52], [0, 0] + [2, 2] + [1] * 16 + [2] * 4 + [1] * 16 + [2, 2] + [0, 0]
    )
    np.testing.assert_array_equal(labels[8:42, 20], [0, 0] + [2, 2] + [1] * 26 + [2, 2] + [0, 0])
    # The interiors are two separate components: the boundary cuts every path between them.
    from scipy import ndimage

    _, n = ndimage.label(labels == 1)
    assert n == 2


def test_boundary_labels_do_not_depend_on_the_window(tmp_path, image):
    gpkg = _two_touching_fields(tmp_path)
    source = LabelSource(
        path=str(gpkg), attribute="class", boundary_px=2, boundary_class="field_boundary"
    )
    cmap = ClassMap(classes=BOUNDARY_CLASSES, values={"field": "crops"})
    reader = LabelReader(source, image=image, class_map=cmap)
    whole = reader.read(image.window)
    # A window whose edge runs one pixel from the shared field edge.
    part = reader.read(_window(0, 29, 64, 35))
    np.testing.assert_array_equal(part, whole[:, 29:64])


def test_the_image_edge_is_not_a_boundary(tmp_path, image):
    px = lambda r, c: (TRANSFORM.c + 10 * c, TRANSFORM.f - 10 * r)  # noqa: E731
    gpkg = tmp_path / "edge.gpkg"
    _write_vectors(gpkg, [box(*px(20, 0), *px(0, 20))], ["field"], crs=UTM, column="class")
    source = LabelSource(
        path=str(gpkg), attribute="class", boundary_px=1, boundary_class="field_boundary"
    )
    cmap = ClassMap(classes=BOUNDARY_CLASSES, values={"field": "crops"})
    labels = LabelReader(source, image=image, class_map=cmap).read(image.window)
    assert np.all(labels[0, :19] == 1) and np.all(labels[:19, 0] == 1)  # cut by the image
    assert np.all(labels[19, :20] == 2) and np.all(labels[:20, 19] == 2)  # a real edge


def test_boundary_options_are_checked_and_recorded(tmp_path, image):
    gpkg = _two_touching_fields(tmp_path)
    with pytest.raises(ConfigError, match="together"):
        LabelSource(path=str(gpkg), attribute="class", boundary_px=2)
    with pytest.raises(ConfigError, match="vector labels"):
        LabelSource(path="labels.tif", boundary_px=2, boundary_class="field_boundary")
    source = LabelSource(path=str(gpkg), attribute="class", boundary_px=2, boundary_class="edge")
    with pytest.raises(ConfigError, match="'edge' is not a class"):
        LabelReader(source, image=image, class_map=ClassMap(classes=BOUNDARY_CLASSES))
    good = LabelSource(
        path=str(gpkg), attribute="class", boundary_px=2, boundary_class="field_boundary"
    )
    assert LabelSource(**good.to_dict()) == good
    plain = LabelSource(path=str(gpkg), attribute="class")
    assert "boundary_px" not in plain.to_dict()  # older records keep their fingerprint
