"""STAC items as scenes: which GeoTIFF asset of an item to segment, and where GDAL finds it.

A batch workflow's ``inputs.stac`` names STAC item JSON files (or folders of them);
:func:`stac_asset` reads one item document into the scene it points at, with what the
output name template and the manifest need from it: the item id, the acquisition date and
a version for remote assets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["StacAsset", "is_remote", "stac_asset"]

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
            found = ", ".join(tiffs) or "none"
            raise ValueError(f"needs one GeoTIFF asset (found: {found}); pick with stac_asset")
        key = tiffs[0] if len(tiffs) == 1 else data[0]
    asset = assets[key]
    href = asset.get("href") if isinstance(asset, dict) else None
    path = _href_path(href, file.parent) if isinstance(href, str) and href else None
    if path is None:
        raise ValueError(f"asset {key!r} has no usable href ({href!r})")
    if not is_remote(path) and not os.path.isfile(path):
        raise ValueError(f"asset {key!r}: {href!r} does not exist")
    props = doc.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    version = asset.get("file:checksum") or props.get("updated")
    return StacAsset(
        path=path,
        item=str(file),
        item_id=str(doc.get("id") or file.stem),
        date=str(when)[:10] if when else None,
        checksum=f"stac:{version}" if version and is_remote(path) else None,
    )


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
