"""geoseg: segment large satellite GeoTIFFs into georeferenced polygons."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
