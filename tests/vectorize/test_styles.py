"""QGIS styles: well-formed QML that draws each class in its model-card colour."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from geoseg.vectorize.styles import (
    centerline_qml,
    fill_qml,
    line_qml,
    paletted_qml,
    polygon_qml,
    rgba,
    shade,
    tint,
)


def _symbol_layer(qml: str) -> tuple[ET.Element, dict[str, str]]:
    """The single symbol layer of a vector style, and its properties.

    Both encodings QGIS reads must say the same: the ``<Option>`` map (QGIS >= 3.16) and
    the legacy ``<prop>`` entries (older 3.x).
    """
    root = ET.fromstring(qml)
    assert root.tag == "qgis"
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "singleSymbol"
    (layer,) = renderer.iter("layer")
    options = {o.get("name"): o.get("value") for o in layer.iter("Option") if o.get("name")}
    legacy = {p.get("k"): p.get("v") for p in layer.iter("prop")}
    assert options == legacy and options
    return root, options  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("color", "expected"),
    [("#1f78b4", "31,120,180"), ("#E31A1C", "227,26,28"), ("000000", "0,0,0")],
)
def test_rgba_is_qgis_s_colour_string(color: str, expected: str) -> None:
    assert rgba(color, 128) == f"{expected},128"


def test_a_polygon_style_fills_and_outlines_in_the_class_colour() -> None:
    root, props = _symbol_layer(fill_qml("#1f78b4"))
    (symbol,) = root.iter("symbol")
    assert symbol.get("type") == "fill"
    assert next(root.iter("layer")).get("class") == "SimpleFill"
    assert props["color"] == "31,120,180,110"  # see-through fill, the map stays readable
    assert props["outline_color"] == "31,120,180,255"
    assert props["outline_width"] == "0.4" and props["outline_width_unit"] == "MM"
    assert root.findtext("layerGeometryType") == "2"  # polygons


def test_fill_transparency_and_outline_width_are_options() -> None:
    _, props = _symbol_layer(fill_qml("#e31a1c", fill_alpha=0, outline_width_mm=1.5))
    assert props["color"] == "227,26,28,0"
    assert props["outline_width"] == "1.5"


def test_a_line_style_draws_in_the_class_colour() -> None:
    root, props = _symbol_layer(line_qml("#e31a1c", width_mm=0.8))
    (symbol,) = root.iter("symbol")
    assert symbol.get("type") == "line"
    assert next(root.iter("layer")).get("class") == "SimpleLine"
    assert props["line_color"] == "227,26,28,255" and props["line_width"] == "0.8"
    assert root.findtext("layerGeometryType") == "1"  # lines


def test_a_paletted_raster_style_lists_every_class_and_keeps_background_clear() -> None:
    entries = [
        (0, "#000000", 0, "background"),
        (1, "#1f78b4", 255, "water"),
        (2, "#e31a1c", 255, 'roads & "tracks" <paved>'),
    ]
    root = ET.fromstring(paletted_qml(entries))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    assert renderer.get("band") == "1"
    got = [
        (int(e.get("value", "")), e.get("color"), int(e.get("alpha", "")), e.get("label"))
        for e in renderer.iter("paletteEntry")
    ]
    # labels with XML metacharacters survive as written
    assert got == entries


def test_shade_and_tint_move_a_colour_towards_black_and_white() -> None:
    assert shade("#e31a1c", 0.5) == "#720d0e"
    assert shade("#e31a1c", 1) == "#e31a1c" and shade("#e31a1c", 0) == "#000000"
    assert tint("#e31a1c", 0.5) == "#f18c8e"
    assert tint("#e31a1c", 0) == "#e31a1c" and tint("#e31a1c", 1) == "#ffffff"
    with pytest.raises(ValueError, match="between 0"):
        shade("#e31a1c", 1.5)


def _lightness(qgis_color: str) -> int:
    return sum(int(v) for v in qgis_color.split(",")[:3])


def test_roads_are_a_light_area_under_dark_centrelines() -> None:
    _, area = _symbol_layer(polygon_qml("roads", "#e31a1c", under_lines=True))
    _, line = _symbol_layer(centerline_qml("#e31a1c"))
    assert area["outline_style"] == "no", "no outline competing with the centreline"
    assert area["outline_color"] == "227,26,28,255"  # the card colour, if a user turns it on
    assert int(area["color"].split(",")[3]) < 128, "see-through: the road stays visible"
    assert (
        _lightness(area["color"])
        > _lightness(rgba("#e31a1c", 255))
        > _lightness(line["line_color"])
    )
    assert line["line_color"].endswith(",255") and 0.6 <= float(line["line_width"]) <= 0.8
    # Without centrelines (--no-centerlines) roads are drawn like any other class.
    assert polygon_qml("roads", "#e31a1c") == fill_qml("#e31a1c")


def test_crop_fields_are_outlined_with_a_faint_fill() -> None:
    _, props = _symbol_layer(polygon_qml("crops", "#e49635"))
    assert props["outline_style"] == "solid" and props["outline_color"] == "228,150,53,255"
    assert float(props["outline_width"]) >= 0.5
    assert int(props["color"].split(",")[3]) <= 40, "faint: the field itself shows through"
    assert polygon_qml("water", "#1f78b4") == fill_qml("#1f78b4")
