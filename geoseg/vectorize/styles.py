"""QGIS default styles stored inside the GeoPackage.

QGIS looks for a ``layer_styles`` table in a GeoPackage and applies the style marked
``useAsDefault`` when a layer is loaded, so a user who drags the file into QGIS sees each
class in its model-card colour with no clicks. The styles are QML documents (QGIS's own
format) written with both the ``<Option>`` map (QGIS >= 3.16) and the legacy ``<prop>``
entries, so older 3.x releases read them too.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

__all__ = ["fill_qml", "line_qml", "paletted_qml", "ramp_qml", "rgba"]


def rgba(color: str, alpha: int) -> str:
    """``"#1f78b4", 128`` -> ``"31,120,180,128"`` (QGIS colour strings)."""
    c = color.lstrip("#")
    return f"{int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{alpha}"


def _props(props: dict[str, str]) -> str:
    options = "".join(
        f'<Option type="QString" name={quoteattr(k)} value={quoteattr(v)}/>'
        for k, v in props.items()
    )
    legacy = "".join(f"<prop k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in props.items())
    return f'<Option type="Map">{options}</Option>{legacy}'


def _document(symbol_type: str, layer_class: str, props: dict[str, str], label: str) -> str:
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        ' <renderer-v2 type="singleSymbol" symbollevels="0" forceraster="0" enableorderby="0">\n'
        "  <symbols>\n"
        f'   <symbol type="{symbol_type}" name="0" alpha="1" clip_to_extent="1" force_rhr="0">\n'
        f'    <layer class="{layer_class}" enabled="1" pass="0" locked="0">'
        f"{_props(props)}</layer>\n"
        "   </symbol>\n"
        "  </symbols>\n"
        "  <rotation/>\n"
        "  <sizescale/>\n"
        " </renderer-v2>\n"
        f" <layerGeometryType>{label}</layerGeometryType>\n"
        " <blendMode>0</blendMode>\n"
        " <featureBlendMode>0</featureBlendMode>\n"
        " <layerOpacity>1</layerOpacity>\n"
        "</qgis>\n"
    )


def fill_qml(color: str, *, fill_alpha: int = 110, outline_width_mm: float = 0.4) -> str:
    """A single-symbol style: semi-transparent fill and a solid outline in ``color``."""
    props = {
        "color": rgba(color, fill_alpha),
        "style": "solid",
        "outline_color": rgba(color, 255),
        "outline_style": "solid",
        "outline_width": f"{outline_width_mm}",
        "outline_width_unit": "MM",
        "joinstyle": "miter",
    }
    return _document("fill", "SimpleFill", props, "2")


def line_qml(color: str, *, width_mm: float = 0.6) -> str:
    """A single-symbol line style in ``color``."""
    props = {
        "line_color": rgba(color, 255),
        "line_style": "solid",
        "line_width": f"{width_mm}",
        "line_width_unit": "MM",
        "capstyle": "round",
        "joinstyle": "round",
    }
    return _document("line", "SimpleLine", props, "1")


def paletted_qml(entries: list[tuple[int, str, int, str]]) -> str:
    """A paletted raster style: ``(value, "#rrggbb", alpha, label)`` per class.

    Written next to a raster as ``<name>.qml``, QGIS applies it when the file is added.
    GeoTIFF colour tables carry no alpha, so this is how the background stays transparent.
    """
    rows = "".join(
        f'<paletteEntry value="{v}" color="{c}" alpha="{a}" label={quoteattr(label)}/>'
        for v, c, a, label in entries
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        " <pipe>\n"
        '  <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
        "   <rasterTransparency/>\n"
        f"   <colorPalette>{rows}</colorPalette>\n"
        "  </rasterrenderer>\n"
        '  <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
        '  <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>\n'
        '  <rasterresampler maxOversampling="2"/>\n'
        " </pipe>\n"
        " <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def ramp_qml(stops: list[tuple[int, str, str]], *, nodata_label: str = "") -> str:
    """A single-band pseudocolour style interpolating ``(value, "#rrggbb", label)`` stops.

    Written next to a raster as ``<name>.qml`` (the uncertainty raster: 0 sure, 254 unsure).
    """
    items = "".join(
        f'<item value="{v}" color="{c}" alpha="255" label={quoteattr(label)}/>'
        for v, c, label in stops
    )
    lo, hi = stops[0][0], stops[-1][0]
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        " <pipe>\n"
        f'  <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1"'
        f' classificationMin="{lo}" classificationMax="{hi}" nodataColor="">\n'
        "   <rasterTransparency/>\n"
        f'   <rastershader><colorrampshader colorRampType="INTERPOLATED" minimumValue="{lo}"'
        f' maximumValue="{hi}" clip="0">{items}</colorrampshader></rastershader>\n'
        "  </rasterrenderer>\n"
        '  <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
        '  <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>\n'
        '  <rasterresampler maxOversampling="2"/>\n'
        " </pipe>\n"
        " <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )
