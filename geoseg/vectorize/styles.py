"""QGIS default styles stored inside the GeoPackage.

QGIS looks for a ``layer_styles`` table in a GeoPackage and applies the style marked
``useAsDefault`` when a layer is loaded, so a user who drags the file into QGIS sees each
class in its model-card colour with no clicks. The styles are QML documents (QGIS's own
format) written with both the ``<Option>`` map (QGIS >= 3.16) and the legacy ``<prop>``
entries, so older 3.x releases read them too.

Which look a layer gets is chosen by :func:`polygon_qml` and :func:`centerline_qml`, so that
the layers stay apart when drawn together over the image: a class with centrelines (roads)
is a light see-through area without an outline, and its centrelines a dark solid line on
top; parcel classes (crop fields) are outlines with a faint fill, so that neighbouring
fields read as separate; any other class a see-through fill with a solid outline.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

__all__ = [
    "OUTLINED_CLASSES",
    "centerline_qml",
    "fill_qml",
    "line_qml",
    "paletted_qml",
    "polygon_qml",
    "ramp_qml",
    "rgba",
    "shade",
    "tint",
]

# Parcel classes: drawn as outlines with a faint fill, so that touching parcels stay apart.
OUTLINED_CLASSES = frozenset({"crops"})
# The fill of an area drawn under its centrelines: the class colour this far towards white
# (0 unchanged, 1 white), this opaque (0-255): light, for the dark lines to stand out.
AREA_UNDER_LINES_TINT = 0.45
AREA_UNDER_LINES_ALPHA = 110
# Centrelines: the class colour this dark (0 black, 1 unchanged), this wide.
CENTERLINE_SHADE = 0.45
CENTERLINE_WIDTH_MM = 0.7
# Parcels: a faint fill and a clear outline in the class colour.
PARCEL_FILL_ALPHA = 30
PARCEL_OUTLINE_WIDTH_MM = 0.6


def rgba(color: str, alpha: int) -> str:
    """``"#1f78b4", 128`` -> ``"31,120,180,128"`` (QGIS colour strings)."""
    c = color.lstrip("#")
    return f"{int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{alpha}"


def shade(color: str, factor: float) -> str:
    """``color`` darkened towards black by ``factor`` (0 black, 1 unchanged), as ``#rrggbb``."""
    if not 0 <= factor <= 1:
        raise ValueError(f"shade factor {factor!r} must be between 0 (black) and 1 (unchanged)")
    c = color.lstrip("#")
    return "#" + "".join(f"{round(int(c[i : i + 2], 16) * factor):02x}" for i in (0, 2, 4))


def tint(color: str, factor: float) -> str:
    """``color`` lightened towards white by ``factor`` (0 unchanged, 1 white), as ``#rrggbb``."""
    if not 0 <= factor <= 1:
        raise ValueError(f"tint factor {factor!r} must be between 0 (unchanged) and 1 (white)")
    c = color.lstrip("#")
    return "#" + "".join(
        f"{round(int(c[i : i + 2], 16) + (255 - int(c[i : i + 2], 16)) * factor):02x}"
        for i in (0, 2, 4)
    )


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


def fill_qml(
    color: str,
    *,
    fill_alpha: int = 110,
    outline_width_mm: float = 0.4,
    outline_color: str | None = None,
) -> str:
    """A single-symbol style: semi-transparent fill and a solid outline in ``color``.

    ``outline_color`` (default ``color``) draws the outline in another colour;
    ``outline_width_mm=0`` draws none.
    """
    props = {
        "color": rgba(color, fill_alpha),
        "style": "solid",
        "outline_color": rgba(outline_color or color, 255),
        "outline_style": "solid" if outline_width_mm > 0 else "no",
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


def polygon_qml(name: str, color: str, *, under_lines: bool = False) -> str:
    """The default style of class ``name``'s polygon layer, in the class colour ``color``.

    ``under_lines``: the class also has a centreline layer drawn over it (roads): a light
    fill (a tint of ``color``) without outline, so the centreline (:func:`centerline_qml`)
    is what the eye follows. A parcel class (:data:`OUTLINED_CLASSES`, crop fields): a
    faint fill and a clear outline, so touching fields read as separate. Otherwise the
    :func:`fill_qml` default.
    """
    if under_lines:
        return fill_qml(
            tint(color, AREA_UNDER_LINES_TINT),
            fill_alpha=AREA_UNDER_LINES_ALPHA,
            outline_width_mm=0,
            outline_color=color,  # not drawn; the colour if a user turns it on
        )
    if name in OUTLINED_CLASSES:
        return fill_qml(
            color, fill_alpha=PARCEL_FILL_ALPHA, outline_width_mm=PARCEL_OUTLINE_WIDTH_MM
        )
    return fill_qml(color)


def centerline_qml(color: str) -> str:
    """The default style of a centreline layer of a class coloured ``color``: a dark shade
    of it, solid and wide enough to read over the class's light polygons."""
    return line_qml(shade(color, CENTERLINE_SHADE), width_mm=CENTERLINE_WIDTH_MM)


def _raster_document(renderer: str) -> str:
    """A QGIS raster style document around one ``<rasterrenderer>`` element (its lines)."""
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        " <pipe>\n"
        f"{renderer}"
        '  <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
        '  <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>\n'
        '  <rasterresampler maxOversampling="2"/>\n'
        " </pipe>\n"
        " <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def paletted_qml(entries: list[tuple[int, str, int, str]]) -> str:
    """A paletted raster style: ``(value, "#rrggbb", alpha, label)`` per class.

    Written next to a raster as ``<name>.qml``, QGIS applies it when the file is added.
    GeoTIFF colour tables carry no alpha, so this is how the background stays transparent.
    """
    rows = "".join(
        f'<paletteEntry value="{v}" color="{c}" alpha="{a}" label={quoteattr(label)}/>'
        for v, c, a, label in entries
    )
    return _raster_document(
        '  <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
        "   <rasterTransparency/>\n"
        f"   <colorPalette>{rows}</colorPalette>\n"
        "  </rasterrenderer>\n"
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
    return _raster_document(
        f'  <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1"'
        f' classificationMin="{lo}" classificationMax="{hi}" nodataColor="">\n'
        "   <rasterTransparency/>\n"
        f'   <rastershader><colorrampshader colorRampType="INTERPOLATED" minimumValue="{lo}"'
        f' maximumValue="{hi}" clip="0">{items}</colorrampshader></rastershader>\n'
        "  </rasterrenderer>\n"
    )
