"""STAC items as scenes: which asset is segmented, and the path GDAL is given for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from geoseg.tiling.stac import StacAsset, is_remote, stac_asset

COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _item(assets: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2B_20240501_T31UFU",
        "properties": {"datetime": "2024-05-01T10:56:19Z", **properties},
        "assets": assets,
    }


@pytest.fixture
def item_dir(tmp_path: Path) -> Path:
    """An item folder with local assets beside it and in a sibling folder."""
    items = tmp_path.resolve() / "items"  # resolved: the paths given to GDAL are
    items.mkdir()
    (items / "visual.tif").write_bytes(b"II*\x00")
    (items / "B08.tif").write_bytes(b"II*\x00")
    (items.parent / "rasters").mkdir()
    (items.parent / "rasters" / "scene one.tif").write_bytes(b"II*\x00")
    return items


def _asset(item_dir: Path, doc: dict[str, Any], key: str | None = None) -> StacAsset:
    found = stac_asset(doc, item_dir / "item.json", key)
    assert found is not None
    return found


def test_the_only_geotiff_asset_is_chosen_among_other_assets(item_dir: Path) -> None:
    doc = _item(
        {
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            "metadata": {"href": "meta.xml", "type": "application/xml"},
            "visual": {"href": "visual.tif", "type": COG},
        }
    )
    asset = _asset(item_dir, doc)
    assert asset.path == str(item_dir / "visual.tif")
    assert asset.item == str(item_dir / "item.json")
    assert asset.item_id == "S2B_20240501_T31UFU" and asset.date == "2024-05-01"
    assert asset.checksum is None  # a local file is identified by its own bytes


def test_with_several_geotiffs_the_one_with_the_data_role_is_chosen(item_dir: Path) -> None:
    doc = _item(
        {
            "visual": {"href": "visual.tif", "type": COG, "roles": ["visual"]},
            "nir": {"href": "B08.tif", "type": "image/tiff", "roles": ["data"]},
        }
    )
    assert _asset(item_dir, doc).path == str(item_dir / "B08.tif")


def test_an_ambiguous_or_geotiff_less_item_names_what_it_found(item_dir: Path) -> None:
    two = _item(
        {
            "visual": {"href": "visual.tif", "type": COG, "roles": ["data"]},
            "nir": {"href": "B08.tif", "type": COG, "roles": ["data"]},
        }
    )
    with pytest.raises(ValueError, match=r"one GeoTIFF asset \(found: visual, nir\).*stac_asset"):
        stac_asset(two, item_dir / "item.json", None)
    # an explicit key settles it
    assert _asset(item_dir, two, "nir").path == str(item_dir / "B08.tif")

    pictures = _item(
        {
            "thumbnail": {"href": "thumb.png", "type": "image/png"},
            "preview": {"href": "preview.jp2", "type": "image/jp2"},
            "cloud": {"href": "cloud.tif.aux.xml", "type": "application/xml"},
        }
    )
    with pytest.raises(ValueError, match=r"found: none"):
        stac_asset(pictures, item_dir / "item.json", None)


def test_a_geotiff_is_recognised_by_media_type_or_file_name(item_dir: Path) -> None:
    by_name = _item({"a": {"href": "visual.tif"}, "b": {"href": "x.json"}})
    assert _asset(item_dir, by_name).path == str(item_dir / "visual.tif")
    # a signed URL's query string is not part of the file name
    remote = _item({"a": {"href": "https://example.com/x/B08.TIF?sig=1"}, "b": {"href": "y.png"}})
    assert _asset(item_dir, remote).path == "/vsicurl/https://example.com/x/B08.TIF?sig=1"
    typed = _item({"a": {"href": "https://example.com/get?id=7", "type": "image/tiff"}})
    assert _asset(item_dir, typed).path == "/vsicurl/https://example.com/get?id=7"


def test_an_unknown_asset_key_lists_the_item_s_assets(item_dir: Path) -> None:
    doc = _item({"visual": {"href": "visual.tif", "type": COG}, "B08": {"href": "B08.tif"}})
    with pytest.raises(ValueError, match=r"no asset 'red'; it has visual, B08"):
        stac_asset(doc, item_dir / "item.json", "red")


@pytest.mark.parametrize(
    ("href", "path"),
    [
        ("https://data.example.com/s2/B08.tif", "/vsicurl/https://data.example.com/s2/B08.tif"),
        ("http://data.example.com/s2/B08.tif", "/vsicurl/http://data.example.com/s2/B08.tif"),
        ("s3://sentinel-cogs/tiles/31/U/FU/B08.tif", "/vsis3/sentinel-cogs/tiles/31/U/FU/B08.tif"),
        ("gs://gcp-public-data/L8/B5.TIF", "/vsigs/gcp-public-data/L8/B5.TIF"),
    ],
)
def test_remote_hrefs_become_gdal_virtual_paths(item_dir: Path, href: str, path: str) -> None:
    doc = _item({"data": {"href": href, "type": COG, "file:checksum": "1220abcd"}})
    asset = _asset(item_dir, doc)
    assert asset.path == path and is_remote(asset.path)
    # a remote asset's version comes from the item, so a changed asset is run again
    assert asset.checksum == "stac:1220abcd"


def test_a_remote_asset_without_a_checksum_is_versioned_by_the_item_s_updated_time(
    item_dir: Path,
) -> None:
    doc = _item({"data": {"href": "s3://b/k.tif", "type": COG}}, updated="2024-05-03T00:00:00Z")
    assert _asset(item_dir, doc).checksum == "stac:2024-05-03T00:00:00Z"
    bare = _item({"data": {"href": "s3://b/k.tif", "type": COG}})
    assert _asset(item_dir, bare).checksum is None


def test_relative_hrefs_resolve_against_the_item_not_the_working_directory(
    item_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = item_dir.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    doc = _item({"data": {"href": "../rasters/scene one.tif", "type": COG}})
    asset = _asset(item_dir, doc)
    assert asset.path == str(item_dir.parent / "rasters" / "scene one.tif")
    assert os.path.isabs(asset.path) and not is_remote(asset.path)
    dotted = _item({"data": {"href": "./visual.tif", "type": COG}})
    assert _asset(item_dir, dotted).path == str(item_dir / "visual.tif")


def test_file_uris_are_decoded_and_absolute_paths_kept(item_dir: Path) -> None:
    target = item_dir.parent / "rasters" / "scene one.tif"
    uri = _item({"data": {"href": target.as_uri(), "type": COG}})  # file:///.../scene%20one.tif
    assert "%20" in target.as_uri()
    assert _asset(item_dir, uri).path == str(target)
    absolute = _item({"data": {"href": str(target), "type": COG}})
    assert _asset(item_dir, absolute).path == str(target)


def test_a_missing_local_asset_or_an_unusable_href_is_refused(item_dir: Path) -> None:
    missing = _item({"data": {"href": "gone.tif", "type": COG}})
    with pytest.raises(ValueError, match=r"asset 'data': 'gone.tif' does not exist"):
        stac_asset(missing, item_dir / "item.json", None)
    ftp = _item({"data": {"href": "ftp://example.com/a.tif", "type": COG}})
    with pytest.raises(ValueError, match=r"asset 'data' has no usable href"):
        stac_asset(ftp, item_dir / "item.json", None)
    empty = _item({"data": {"href": "", "type": COG}})
    with pytest.raises(ValueError, match=r"no usable href"):
        stac_asset(empty, item_dir / "item.json", None)


def test_catalogs_and_collections_are_skipped_and_other_json_refused(item_dir: Path) -> None:
    for kind in ("Catalog", "Collection"):
        assert stac_asset({"type": kind, "links": []}, item_dir / "c.json", None) is None
    for doc in ({"type": "FeatureCollection", "features": []}, [1, 2], {"type": "Feature"}):
        with pytest.raises(ValueError, match="not a STAC item"):
            stac_asset(doc, item_dir / "x.json", None)


def test_dates_and_ids_fall_back_sensibly(item_dir: Path) -> None:
    ranged = _item({"data": {"href": "visual.tif", "type": COG}}, datetime=None)
    ranged["properties"]["start_datetime"] = "2023-12-31T23:00:00Z"
    del ranged["id"]
    asset = _asset(item_dir, ranged)
    assert asset.date == "2023-12-31" and asset.item_id == "item"
    undated = _item({"data": {"href": "visual.tif", "type": COG}}, datetime=None)
    assert _asset(item_dir, undated).date is None


def test_is_remote_tells_gdal_virtual_paths_and_urls_from_local_paths() -> None:
    assert is_remote("/vsicurl/https://x/a.tif") and is_remote("/vsis3/b/k.tif")
    assert is_remote("https://x/a.tif")
    assert not is_remote("/data/scenes/a.tif") and not is_remote("scenes/a.tif")
