"""Open geoseg outputs in real QGIS (headless) and report what QGIS sees.

Run with the Python that has the QGIS bindings (Debian: /usr/bin/python3 with python3-qgis):

    QT_QPA_PLATFORM=offscreen python3 qgis_check.py OUT.gpkg CLASSES.tif RENDER.png

Prints one JSON object: per vector layer (valid, CRS, feature count, renderer type and colours,
style source), the raster (valid, CRS, renderer, palette), and the rendered PNG's statistics.
The pytest side (test_qgis.py) asserts on it; this script only observes.
"""

from __future__ import annotations

import json
import os
import sys


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
    report: dict[str, object] = {"layers": {}}
    ds = ogr.Open(gpkg)
    names = [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]
    spatial = [n for n in names if ds.GetLayerByName(n).GetGeomType() != ogr.wkbNone]
    layers = []
    for name in spatial:
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        entry: dict[str, object] = {
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
        report["layers"][name] = entry  # type: ignore[index]
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
    settings = QgsMapSettings()
    settings.setLayers([*layers, rlayer])
    extent = QgsRectangle()
    for lyr in [*layers, rlayer]:
        if lyr.isValid() and not lyr.extent().isEmpty():
            extent.combineExtentWith(lyr.extent())
    settings.setExtent(extent)
    settings.setDestinationCrs(rlayer.crs())
    settings.setOutputSize(QSize(800, 600))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    image.save(png, "PNG")
    colours = set()
    for y in range(0, image.height(), 7):
        for x in range(0, image.width(), 7):
            colours.add(image.pixel(x, y))
    report["render"] = {"png": png, "distinct_colours": len(colours), "width": image.width()}
    print(json.dumps(report), flush=True)
    # QGIS 3.22 can crash while tearing down offscreen (exitQgis); the report is out, so
    # leave without running Qt's destructors.
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
