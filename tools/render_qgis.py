"""Render a geoseg run the way QGIS shows it: the scene, then the styled layers, to a PNG.

Run with the Python that has the QGIS bindings (Debian: /usr/bin/python3 with python3-qgis),
headless::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tools/render_qgis.py \\
        --scene samples/naip_rochester_mn.tif --gpkg demo-output/naip_roads_crops.gpkg \\
        --out /tmp/naip.png [--class-raster auto] [--size 1024x1024] \\
        [--extent XMIN,YMIN,XMAX,YMAX] [--rgb 3,2,1] [--layers roads,roads_centerlines]

Layers, bottom to top: the scene (its first three bands as red, green, blue, or ``--rgb``),
the class raster if asked (``auto``: ``<gpkg stem>_classes.tif``; QGIS applies the ``.qml``
beside it), every polygon layer of the GeoPackage, then every line layer, each with the
default style stored in the GeoPackage's ``layer_styles`` table (``loadDefaultStyle``, as
QGIS does when a user drags the file in). The extent is the scene's unless ``--extent`` is
given (scene CRS units); the output keeps the extent's aspect ratio within ``--size``.

Prints one JSON object: the PNG path, its size, the extent, map units per pixel, dpi, and per
layer whether it loaded and which style QGIS applied (the style's name and the renderer
type). Reads and writes nothing else; ``tests/qgis/test_render.py`` asserts on the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", required=True, help="the scene GeoTIFF")
    p.add_argument("--gpkg", required=True, help="a geoseg GeoPackage")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument(
        "--class-raster",
        default=None,
        help="the class raster to draw under the polygons ('auto': <gpkg stem>_classes.tif)",
    )
    p.add_argument("--size", default="1024x1024", help="max width x height in pixels")
    p.add_argument("--extent", default=None, help="xmin,ymin,xmax,ymax in the scene's CRS")
    p.add_argument("--rgb", default="1,2,3", help="scene bands shown as red,green,blue")
    p.add_argument(
        "--layers",
        default=None,
        help="only these GeoPackage layers (comma list); 'none' for the scene alone",
    )
    return p.parse_args(argv)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise SystemExit(f"--size {text!r} must be WIDTHxHEIGHT, e.g. 1024x768") from err
    return w, h


def main(argv: list[str]) -> None:
    args = _args(argv)
    from osgeo import ogr
    from qgis.core import (
        QgsApplication,
        QgsContrastEnhancement,
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsMultiBandColorRenderer,
        QgsRasterLayer,
        QgsRectangle,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    app = QgsApplication([], False)
    app.initQgis()
    report: dict[str, Any] = {"layers": {}}

    scene = QgsRasterLayer(args.scene, "scene")
    if not scene.isValid():
        raise SystemExit(f"QGIS cannot open the scene {args.scene}")
    bands = [int(b) for b in args.rgb.split(",")]
    provider = scene.dataProvider()
    if provider.bandCount() >= 3:
        renderer = QgsMultiBandColorRenderer(provider, *bands)
        for band, setter in zip(
            bands,
            (
                renderer.setRedContrastEnhancement,
                renderer.setGreenContrastEnhancement,
                renderer.setBlueContrastEnhancement,
            ),
            strict=True,
        ):
            # 8-bit renders and raw values alike: stretch each band between its 2nd and
            # 98th percentile, QGIS's "cumulative cut" default for the layer panel.
            ce = QgsContrastEnhancement(provider.dataType(band))
            ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
            lo, hi = provider.cumulativeCut(band, 0.02, 0.98, scene.extent(), 250_000)
            ce.setMinimumValue(lo)
            ce.setMaximumValue(hi)
            setter(ce)
        scene.setRenderer(renderer)
    layers: list[Any] = []  # top first, as QgsMapSettings wants them

    ds = ogr.Open(args.gpkg)
    if ds is None:
        raise SystemExit(f"not a GeoPackage: {args.gpkg}")
    wanted = set(args.layers.split(",")) - {"none"} if args.layers else None
    polygons, lines = [], []
    for i in range(ds.GetLayerCount()):
        ogr_layer = ds.GetLayerByIndex(i)
        name = ogr_layer.GetName()
        if ogr_layer.GetGeomType() == ogr.wkbNone or (wanted is not None and name not in wanted):
            continue
        layer = QgsVectorLayer(f"{args.gpkg}|layername={name}", name, "ogr")
        message, loaded = layer.loadDefaultStyle()
        renderer = layer.renderer()
        report["layers"][name] = {
            "valid": layer.isValid(),
            "features": layer.featureCount(),
            "default_style_loaded": bool(loaded),
            "style_message": message,
            "renderer": renderer.type() if renderer else None,
        }
        # Lines over polygons whatever the table order.
        (lines if layer.geometryType() == 1 else polygons).append(layer)
    layers += lines[::-1] + polygons[::-1]

    raster_path = args.class_raster
    if raster_path == "auto":
        gpkg = Path(args.gpkg)
        raster_path = str(gpkg.with_name(f"{gpkg.stem}_classes.tif"))
    if raster_path:
        classes = QgsRasterLayer(raster_path, "classes")
        rr = classes.renderer()
        qml = Path(raster_path).with_suffix(".qml")
        report["layers"]["classes"] = {
            "valid": classes.isValid(),
            "renderer": rr.type() if rr else None,
            "style": str(qml) if qml.exists() else None,
        }
        layers.append(classes)
    layers.append(scene)

    if args.extent:
        xmin, ymin, xmax, ymax = (float(v) for v in args.extent.split(","))
        extent = QgsRectangle(xmin, ymin, xmax, ymax)
    else:
        extent = scene.extent()
    width, height = _size(args.size)
    aspect = extent.width() / extent.height()
    if width / height > aspect:
        width = max(1, round(height * aspect))
    else:
        height = max(1, round(width / aspect))

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(scene.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not image.save(args.out, "PNG"):
        raise SystemExit(f"could not write {args.out}")
    seen = settings.visibleExtent()
    report.update(
        png=args.out,
        width=image.width(),
        height=image.height(),
        extent=[seen.xMinimum(), seen.yMinimum(), seen.xMaximum(), seen.yMaximum()],
        map_units_per_pixel=settings.mapUnitsPerPixel(),
        dpi=settings.outputDpi(),
        crs=scene.crs().authid(),
    )
    print(json.dumps(report), flush=True)
    # QGIS 3.22 can crash while tearing down offscreen (exitQgis); the PNG and the report
    # are out, so leave without running Qt's destructors.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
