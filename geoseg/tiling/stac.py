"""STAC items as scenes: which assets of an item to segment, and where GDAL finds them.

``geoseg run item.json`` (or an ``https://`` item URL) and a batch workflow's ``inputs.stac``
both go through here. :func:`stac_asset` reads one item document into the scene it points
at, with what output names and the manifest need from it: the item id, the acquisition date
and a version for remote assets. An item with one GeoTIFF asset is that file; an item whose
bands are separate assets (Sentinel-2, Landsat on most catalogues) becomes one virtual
raster: a VRT given to GDAL as its XML text, which names each band asset (no pixel is
copied, no file is written) and describes each band by its role (``red``, ``nir``,
``swir1`` ...), so the models find their bands without ``--sensor``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import escape

from geoseg.errors import SceneReadError

__all__ = ["StacAsset", "is_remote", "is_stac_item", "read_item", "scene_from_item", "stac_asset"]

_REMOTE = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}


@dataclass(frozen=True, kw_only=True, slots=True)
class StacAsset:
    """The GeoTIFF a STAC item points at.

    ``path`` opens with GDAL (a local path, or ``/vsicurl/``, ``/vsis3/``, ``/vsigs/``);
    ``item`` is the item file, ``item_id`` its id, ``date`` its acquisition date
    (``YYYY-MM-DD``) if it has one, ``checksum`` what identifies a remote asset's version
    (``file:checksum``, else the item's ``updated``), if anything.
    """

    path: str
    item: str
    item_id: str
    date: str | None = None
    checksum: str | None = None


def is_remote(path: str) -> bool:
    """Whether ``path`` is a GDAL virtual path or URL (not checked for existence)."""
    return path.startswith("/vsi") or "://" in path


def stac_asset(doc: Any, file: Path, asset_key: str | None) -> StacAsset | None:
    """The scene the STAC item ``doc`` (read from ``file``) points at.

    ``asset_key`` picks the asset; by default the item's only GeoTIFF asset, or its only
    GeoTIFF asset with the role ``data``. Catalogs and collections give ``None``.

    Raises
    ------
    ValueError
        Saying what is wrong with the item.
    """
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind in ("Catalog", "Collection"):
        return None
    assets = doc.get("assets") if isinstance(doc, dict) else None
    if kind != "Feature" or not isinstance(assets, dict):
        raise ValueError("not a STAC item (a Feature with assets)")
    if asset_key is not None:
        if asset_key not in assets:
            raise ValueError(f"has no asset {asset_key!r}; it has {', '.join(assets)}")
        key = asset_key
    else:
        tiffs = [k for k, a in assets.items() if isinstance(a, dict) and _is_geotiff(a)]
        data = [k for k in tiffs if "data" in (assets[k].get("roles") or [])]
        if len(tiffs) != 1 and len(data) != 1:
            bands = _band_assets(assets)
            if len(bands) >= 2:
                return _item_asset(doc, file, _compose(bands, file.parent), remote=False)
            found = ", ".join(tiffs) or "none"
            raise ValueError(f"needs one GeoTIFF asset (found: {found}); pick with stac_asset")
        key = tiffs[0] if len(tiffs) == 1 else data[0]
    path = _asset_path(assets[key], key, file.parent)
    return _item_asset(doc, file, path, remote=is_remote(path), asset=assets[key])


def _asset_path(asset: Any, key: str, item_dir: Path) -> str:
    href = asset.get("href") if isinstance(asset, dict) else None
    path = _href_path(href, item_dir) if isinstance(href, str) and href else None
    if path is None:
        raise ValueError(f"asset {key!r} has no usable href ({href!r})")
    if not is_remote(path) and not os.path.isfile(path):
        raise ValueError(f"asset {key!r}: {href!r} does not exist")
    return path


def _item_asset(
    doc: Mapping[str, Any],
    file: Path,
    path: str,
    *,
    remote: bool,
    asset: Mapping[str, Any] | None = None,
) -> StacAsset:
    props = doc.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    version = (asset or {}).get("file:checksum") or props.get("updated")
    return StacAsset(
        path=path,
        item=str(file),
        item_id=str(doc.get("id") or file.stem),
        date=str(when)[:10] if when else None,
        checksum=f"stac:{version}" if version and remote else None,
    )


# STAC band names and common names -> geoseg band roles (geoseg.models.bands); the three
# red-edge bands share the common name "rededge", so their names tell them apart.
_ROLE_OF = {
    "coastal": "coastal", "blue": "blue", "green": "green", "red": "red", "nir": "nir",
    "nir08": "nir08", "swir16": "swir1", "swir22": "swir2", "swir1": "swir1", "swir2": "swir2",
    "rededge1": "rededge1", "rededge2": "rededge2", "rededge3": "rededge3",
    "b01": "coastal", "b02": "blue", "b03": "green", "b04": "red", "b05": "rededge1",
    "b06": "rededge2", "b07": "rededge3", "b08": "nir", "b8a": "nir08", "b11": "swir1",
    "b12": "swir2",
}  # fmt: skip
_ORDER = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
    "swir1", "swir2",
)  # fmt: skip


def _band_role(key: str, asset: Mapping[str, Any]) -> str | None:
    bands = asset.get("eo:bands") or asset.get("bands") or []
    names = [key]
    if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
        names += [str(bands[0].get("name", "")), str(bands[0].get("common_name", ""))]
    for name in names:
        if (role := _ROLE_OF.get(name.lower())) is not None:
            return role
    return None


def _band_assets(assets: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(role, key, asset)`` of each single-band GeoTIFF asset with a spectral role, in
    geoseg's band order (one asset per role)."""
    found: dict[str, tuple[str, str, Mapping[str, Any]]] = {}
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not _is_geotiff(asset):
            continue
        if (role := _band_role(key, asset)) is not None:
            found.setdefault(role, (role, key, asset))
    return [found[r] for r in _ORDER if r in found]


def _compose(bands: Sequence[tuple[str, str, Mapping[str, Any]]], item_dir: Path) -> str:
    """A VRT (its XML text) stacking single-band assets on the finest asset's grid."""
    import rasterio

    from geoseg.tiling.io import GDAL_ENV

    heads = []
    with rasterio.Env(**GDAL_ENV):
        for role, key, asset in bands:
            path = _asset_path(asset, key, item_dir)
            try:
                with rasterio.open(path) as src:
                    heads.append((role, path, src.width, src.height, src.transform, src.crs,
                                  src.dtypes[0], src.nodata))  # fmt: skip
            except rasterio.errors.RasterioIOError as err:
                raise ValueError(f"asset {key!r} ({path}) cannot be opened: {err}") from err
    finest = min(heads, key=lambda h: abs(h[4].a))
    _, _, width, height, transform, crs, _, _ = finest
    if any(h[5] != crs for h in heads):
        raise ValueError("its band assets are in different CRSs; pick one with stac_asset")
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(crs.to_wkt()) if crs else ''}</SRS>",
        f"<GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>",
    ]
    for i, (role, path, w, h, _, _, dtype, nodata) in enumerate(heads, start=1):
        gdal_type = {"uint8": "Byte", "int8": "Int8"}.get(dtype, dtype.capitalize())
        nd = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        parts.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{i}"><Description>{role}'
            f"</Description>{nd}"
            f'<ComplexSource resampling="bilinear"><SourceFilename relativeToVRT="0">'
            f"{escape(path)}</SourceFilename><SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f"{f'<NODATA>{nodata!r}</NODATA>' if nodata is not None else ''}"
            "</ComplexSource></VRTRasterBand>"
        )
    parts.append("</VRTDataset>")
    return "".join(parts)


def is_stac_item(scene: str) -> bool:
    """Whether a ``geoseg run`` scene argument names a STAC item (a ``.json`` file or URL)."""
    return scene.lower().split("?")[0].endswith(".json")


def read_item(location: str) -> tuple[Any, Path]:
    """The JSON document of a STAC item file or ``http(s)://`` URL, and the item's path
    (a remote item's relative hrefs are made absolute against its URL).

    Raises
    ------
    SceneReadError
        If the item cannot be read or is not JSON.
    """
    try:
        if location.startswith(("http://", "https://")):
            from urllib.parse import urljoin
            from urllib.request import urlopen

            with urlopen(location, timeout=30) as response:
                doc = json.loads(response.read().decode("utf-8"))
            for asset in (doc.get("assets") or {}).values() if isinstance(doc, dict) else ():
                if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                    asset["href"] = urljoin(location, asset["href"])
            return doc, Path(urlparse(location).path)
        path = Path(location)
        return json.loads(path.read_text(encoding="utf-8")), path.resolve()
    except (OSError, ValueError) as err:
        raise SceneReadError(f"cannot read STAC item {location!r}: {err}") from err


def scene_from_item(location: str, *, asset_key: str | None = None) -> StacAsset:
    """The scene a STAC item file or URL points at (see :func:`stac_asset`).

    Raises
    ------
    SceneReadError
        Saying what is wrong with the item.
    """
    doc, file = read_item(location)
    try:
        asset = stac_asset(doc, file, asset_key)
    except ValueError as err:
        raise SceneReadError(f"STAC item {location!r} {err}") from err
    if asset is None:
        raise SceneReadError(f"{location!r} is a STAC catalog or collection, not an item")
    return asset


def _is_geotiff(asset: Mapping[str, Any]) -> bool:
    media = str(asset.get("type", "")).lower()
    href = str(asset.get("href", "")).lower().split("?")[0]
    return "geotiff" in media or media.startswith("image/tiff") or href.endswith((".tif", ".tiff"))


def _href_path(href: str, item_dir: Path) -> str | None:
    """A STAC asset href as a path GDAL opens: relative hrefs resolve against the item."""
    parsed = urlparse(href)
    if parsed.scheme in _REMOTE:
        if parsed.scheme in ("http", "https"):
            return _REMOTE[parsed.scheme] + href
        return f"{_REMOTE[parsed.scheme]}{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        return str(Path(unquote(parsed.path)).resolve())
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # relative, absolute, or C:\...
        return str((item_dir / href).resolve())
    return None
