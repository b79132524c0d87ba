"""Provenance: how an output was made, stored in the GeoPackage and the raster tags."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from geoseg import __version__
from geoseg.config import RunConfig
from geoseg.run.plan import RunPlan

__all__ = ["FileDigest", "file_sha256", "run_provenance"]

_CHUNK = 8 << 20


def _is_virtual(path: str) -> bool:
    return path.startswith(("/vsi", "<VRTDataset")) or "://" in path


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a local file, streamed; ``None`` for GDAL virtual paths."""
    p = os.fspath(path)
    if _is_virtual(p) or not Path(p).is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FileDigest:
    """Hashes a file in a background thread while the run goes on."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._value: str | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()

    def _run(self, path: str | os.PathLike[str]) -> None:
        try:
            self._value = file_sha256(path)
        except OSError:
            self._value = None

    def result(self) -> str | None:
        self._thread.join()
        return self._value


def _exact(value: float) -> str:
    """A number as short as it can be written and still read back exactly ("250", "12.3456789")."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def run_provenance(
    plan: RunPlan,
    config: RunConfig,
    *,
    scene_sha256: str | None,
    model_sha256: Mapping[str, str | None],
    started: dt.datetime,
    seconds: float,
) -> dict[str, str]:
    """Key/value provenance of a run (all values strings)."""
    models = [
        {
            "name": u.card.name,
            "source": u.source,
            "sha256": model_sha256.get(u.source),
            "architecture": u.card.architecture,
            "encoder": u.card.encoder,
            "scene_bands": list(u.bands),
            "classes": [c for c, _ in u.outputs],
            "params": dict(u.card.params),
            # Weights made elsewhere travel with their licence and required attribution.
            **(
                {
                    "licence": u.card.licence,
                    "attribution": u.card.attribution,
                    "weights_source": u.card.source,
                }
                if u.card.licence
                else {}
            ),
        }
        for u in plan.models
    ]
    smoothing = {
        name: dataclasses.asdict(recipe) for u in plan.models for name, recipe in u.recipes.items()
    }
    # Absolute, so the record still names the file when read from another directory.
    input_path = plan.scene.path
    if not _is_virtual(input_path):
        input_path = os.path.abspath(input_path)
    return {
        "geoseg_version": __version__,
        "created_utc": started.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "run_seconds": f"{seconds:.2f}",
        "input_path": input_path,
        "input_sha256": scene_sha256 or "",
        "input_size": f"{plan.scene.width}x{plan.scene.height}x{plan.scene.count}",
        "input_crs": plan.scene.crs.to_string() if plan.scene.crs else "",
        "classes": ",".join(plan.classes),
        "models": json.dumps(models),
        "tiling": json.dumps(
            {
                "tile": plan.tiling.tile,
                "overlap": plan.tiling.overlap,
                "block_core": plan.blocks[0].core.height if plan.blocks else 0,
                "halo": plan.tiling.halo_px,
                "blocks": len(plan.blocks),
            }
        ),
        "smoothing": json.dumps(smoothing),
        "inference": json.dumps(dataclasses.asdict(plan.inference)),
        "min_area_m2": _exact(plan.min_area_m2),
        "simplify_m": _exact(config.simplify_m),
        "dst_crs": config.dst_crs or "",
    }
