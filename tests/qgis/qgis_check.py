"""Open geoseg outputs in real QGIS (headless) and report what QGIS sees.

Run with the Python that has the QGIS bindings (Debian: /usr/bin/python3 with python3-qgis):

    QT_QPA_PLATFORM=offscreen python3 qgis_check.py OUT.gpkg CLASSES.tif RENDER.png

Prints one JSON object: per vector layer (valid, CRS, feature count, renderer type and colours,
style source), the raster (valid, CRS, renderer, palette), and what was rendered: the whole
map to RENDER.png, then every layer alone on white to ``RENDER_<layer>.png``, all with the
same extent, each with its pixel colour histogram. The pytest side (test_qgis.py) knows what
colours and areas to expect and asserts on it; this script only observes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOP_COLOURS = 24


def _histogram(image: Any) -> list[tuple[str, int]]:
    """The most frequent ``#aarrggbb`` colours of a rendered image, with pixel counts."""
    import numpy as np
    from qgis.PyQt.QtGui import QImage

    img = image.convertToFormat(QImage.Format_ARGB32)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    rows = np.frombuffer(bytes(ptr), dtype=np.uint32).reshape(img.height(), -1)
    values, counts = np.unique(rows[:, : img.width()], return_counts=True)
    top = np.argsort(-counts, kind="stable")[:TOP_COLOURS]
    return [(f"#{int(values[i]):08x}", int(counts[i])) for i in top]


def main(gpkg: str, raster: str, png: str) -> None:
    from osgeo import ogr
    from qgis.core import (
        QgsApplication,
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsRasterLayer,
        QgsRectangle,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    app = QgsApplication([], False)
    app.initQgis()
    report: dict[str, Any] = {"layers": {}}
    ds = ogr.Open(gpkg)
    names = [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]
    spatial = [n for n in names if ds.GetLayerByName(n).GetGeomType() != ogr.wkbNone]
    layers = []
    for name in spatial:
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        entry: dict[str, Any] = {
            "valid": layer.isValid(),
            "crs": layer.crs().authid(),
            "features": layer.featureCount(),
            "geometry_type": layer.geometryType(),
        }
        renderer = layer.renderer()
        entry["renderer"] = renderer.type() if renderer else None
        symbol = renderer.symbol() if renderer and renderer.type() == "singleSymbol" else None
        if symbol is not None:
            sl = symbol.symbolLayer(0)
            entry["fill_color"] = sl.color().name(QColor.HexArgb)
            stroke = getattr(sl, "strokeColor", None)
            entry["stroke_color"] = stroke().name(QColor.HexArgb) if stroke else None
        stored = layer.listStylesInDatabase()
        entry["styles_in_db"] = int(stored[0]) if stored else 0
        report["layers"][name] = entry
        layers.append(layer)
    rlayer = QgsRasterLayer(raster, "classes")
    rr = rlayer.renderer()
    palette = []
    if rr is not None and rr.type() == "paletted":
        palette = [(c.value, c.color.name(QColor.HexArgb)) for c in rr.classes()]
    report["raster"] = {
        "valid": rlayer.isValid(),
        "crs": rlayer.crs().authid(),
        "renderer": rr.type() if rr else None,
        "palette": palette,
        "overviews": rlayer.dataProvider().hasPyramids() if rlayer.isValid() else False,
    }

    extent = QgsRectangle()
    for lyr in [*layers, rlayer]:
        if lyr.isValid() and not lyr.extent().isEmpty():
            extent.combineExtentWith(lyr.extent())

    def render(which: list[Any], path: str) -> dict[str, Any]:
        settings = QgsMapSettings()
        settings.setLayers(which)
        settings.setExtent(extent)
        settings.setDestinationCrs(rlayer.crs())
        settings.setOutputSize(QSize(800, 600))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        image = job.renderedImage()
        saved = image.save(path, "PNG")
        seen = settings.visibleExtent()
        return {
            "png": path if saved else None,
            "width": image.width(),
            "height": image.height(),
            "extent": [seen.xMinimum(), seen.yMinimum(), seen.xMaximum(), seen.yMaximum()],
            "map_units_per_pixel": settings.mapUnitsPerPixel(),
            "dpi": settings.outputDpi(),
            "colours": _histogram(image),
        }

    # The whole map first, so the artefact exists whatever is asserted on the rest.
    report["render"] = render([*layers, rlayer], png)
    stem = png[:-4] if png.lower().endswith(".png") else png
    report["solo"] = {
        lyr.name(): render([lyr], f"{stem}_{lyr.name()}.png") for lyr in [*layers, rlayer]
    }
    print(json.dumps(report), flush=True)
    # QGIS 3.22 can crash while tearing down offscreen (exitQgis); the report is out, so
    # leave without running Qt's destructors.
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
