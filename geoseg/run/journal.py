"""Block-level resume of one scene: a crash-safe journal of completed blocks.

While a run is under way, every completed block's result (its class raster core, finished
polygons, seam pieces and border labels) is committed to an SQLite journal beside the
output (``.<name>.journal``). A run started with ``--resume`` whose plan matches the
journal's fingerprint loads those blocks instead of recomputing them; the output is then
identical to an uninterrupted run. The journal is deleted when the run completes.

Payloads are NumPy arrays in an ``.npz`` (``allow_pickle=False``) with geometries as WKB:
nothing is unpickled when resuming.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geoseg.errors import JournalError, OutputWriteError
from geoseg.run.results import BlockResult, ClassPolygons
from geoseg.vectorize.centerlines import BlockLines
from geoseg.vectorize.polygons import BlockPolygons

__all__ = [
    "Journal",
    "decode_arrays",
    "decode_result",
    "encode_arrays",
    "encode_result",
    "fingerprint",
    "journal_contents",
]


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable hash of a JSON-serialisable description of a run."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _wkb(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blobs = [bytes(b) for b in shapely.to_wkb(geoms)] if len(geoms) else []
    offsets = np.cumsum([0, *[len(b) for b in blobs]]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _from_wkb(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = buf.tobytes()
    blobs = [raw[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return np.asarray(shapely.from_wkb(blobs), dtype=object) if blobs else np.empty(0, object)


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays (object arrays of geometries included) -> compressed bytes."""
    flat: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        if arr.dtype == object:
            flat[f"{key}.wkb"], flat[f"{key}.off"] = _wkb(arr)
        else:
            flat[key] = arr
    buf = io.BytesIO()
    np.savez_compressed(buf, **flat)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`; never unpickles."""
    out: dict[str, np.ndarray] = {}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        for key in npz.files:
            if key.endswith(".off"):
                continue
            if key.endswith(".wkb"):
                name = key[: -len(".wkb")]
                out[name] = _from_wkb(npz[key], npz[f"{name}.off"])
            else:
                out[key] = npz[key]
    return out


def polygons_to_arrays(prefix: str, polys: BlockPolygons) -> dict[str, np.ndarray]:
    out = {
        f"{prefix}.geometries": polys.geometries,
        f"{prefix}.labels": polys.labels,
        f"{prefix}.pixels": polys.pixels,
        f"{prefix}.conf_sum": polys.conf_sum,
        f"{prefix}.seam": polys.seam,
    }
    for side, border in zip(("top", "bottom", "left", "right"), polys.borders, strict=True):
        if border is not None:
            out[f"{prefix}.border.{side}"] = border
    return out


def polygons_from_arrays(prefix: str, arrays: Mapping[str, np.ndarray]) -> BlockPolygons:
    borders = tuple(arrays.get(f"{prefix}.border.{s}") for s in ("top", "bottom", "left", "right"))
    return BlockPolygons(
        geometries=arrays[f"{prefix}.geometries"],
        labels=arrays[f"{prefix}.labels"],
        pixels=arrays[f"{prefix}.pixels"],
        conf_sum=arrays[f"{prefix}.conf_sum"],
        seam=arrays[f"{prefix}.seam"],
        borders=borders,  # type: ignore[arg-type]
    )


class Journal:
    """The SQLite journal of one output. One writer: the client.

    Besides the blocks it keeps named values (:meth:`set_meta`): the whole-scene statistics
    of the spectral methods, so a resumed run does not make that pass again.

    Raises
    ------
    OutputWriteError
        When the journal cannot be created or written (a read-only folder, a full disk), or
        its name is a symbolic link (never written through).
    """

    def __init__(self, path: Path, *, fingerprint: str, resume: bool) -> None:
        self.path = path
        if not resume:
            self._delete()
        for side in self._files():
            if side.is_symlink():
                raise OutputWriteError(
                    f"{str(side)!r} is a symbolic link; geoseg never writes through one: "
                    "remove it, then run again"
                )
        existed = path.exists()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS blocks (idx INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
            if row is not None and row[0] != fingerprint:
                # A journal of another plan (other model, options or input): start over.
                self._db.execute("DELETE FROM blocks")
                self._db.execute("DELETE FROM meta")
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('fingerprint', ?)",
                (fingerprint,),
            )
        except sqlite3.Error as err:
            if self._db is not None:
                self._db.close()
            if not existed:  # nothing --resume could use: leave nothing
                self._delete()
            raise OutputWriteError(f"cannot write the journal {str(path)!r}: {err}") from err

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:  # pragma: no cover - __init__ raised
            raise OutputWriteError(f"the journal {str(self.path)!r} is not open")
        return self._db

    def done(self) -> set[int]:
        return {r[0] for r in self._conn().execute("SELECT idx FROM blocks")}

    def load(self) -> Iterator[tuple[int, bytes]]:
        yield from self._conn().execute("SELECT idx, payload FROM blocks ORDER BY idx")

    def record(self, index: int, payload: bytes) -> None:
        try:
            self._conn().execute(
                "INSERT OR REPLACE INTO blocks (idx, payload) VALUES (?, ?)", (index, payload)
            )
        except sqlite3.Error as err:
            raise OutputWriteError(f"cannot write the journal {str(self.path)!r}: {err}") from err

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def has_meta(self, key: str) -> bool:
        try:
            return self._db is not None and self.get_meta(key) is not None
        except sqlite3.Error:
            return False

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._conn().execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )
        except sqlite3.Error as err:
            raise OutputWriteError(f"cannot write the journal {str(self.path)!r}: {err}") from err

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def finish(self) -> None:
        """Close and delete: the run is complete."""
        self.close()
        self._delete()

    def _files(self) -> list[Path]:
        return [Path(f"{self.path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]

    def _delete(self) -> None:
        for side in self._files():
            side.unlink(missing_ok=True)


def journal_contents(path: Path) -> tuple[int, tuple[str, ...]] | None:
    """What a journal left after a run holds: its block count and named values (other than
    its fingerprint); ``None`` when there is none. Opens it read-only; creates nothing."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        # immutable: no -wal/-shm files created beside a closed journal (checkpointed).
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            blocks = int(db.execute("SELECT count(*) FROM blocks").fetchone()[0])
            keys = tuple(
                str(r[0]) for r in db.execute("SELECT key FROM meta WHERE key != 'fingerprint'")
            )
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return blocks, keys


def encode_result(result: BlockResult) -> bytes:
    arrays: dict[str, np.ndarray] = {"classes": result.classes}
    if result.probabilities is not None:
        arrays["probabilities"] = result.probabilities
    if result.uncertainty is not None:
        arrays["uncertainty"] = result.uncertainty
    for name, cp in result.interior.items():
        arrays[f"i.{name}.geometries"] = cp.geometries
        arrays[f"i.{name}.area_m2"] = cp.area_m2
        arrays[f"i.{name}.confidence"] = cp.confidence
        arrays[f"i.{name}.pixels"] = cp.pixels
        arrays[f"i.{name}.keys"] = cp.keys
    for name, bp in result.seams.items():
        arrays.update(polygons_to_arrays(f"s.{name}", bp))
    for name, bl in result.lines.items():
        arrays[f"l.{name}.geometries"] = bl.geometries
        arrays[f"l.{name}.seam_start"] = bl.seam_start
        arrays[f"l.{name}.seam_end"] = bl.seam_end
        arrays[f"l.{name}.simplify_px"] = np.array([bl.simplify_px])
    meta = {"index": result.index, "device": result.device, "precision": result.precision}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return encode_arrays(arrays)


# What a damaged payload raises while decoding: not a zip or not an npz, bad compressed
# data, missing arrays or metadata, arrays of the wrong kind, invalid WKB.
_DAMAGED = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    EOFError,
    OSError,
    zipfile.BadZipFile,
    zlib.error,
    shapely.errors.GEOSException,
)


def decode_result(data: bytes, classes: Sequence[str]) -> BlockResult:
    """Inverse of :func:`encode_result`.

    Raises
    ------
    JournalError
        If ``data`` is not a block result (the journal was damaged or edited): resuming from
        it could not give the output of an uninterrupted run.
    """
    try:
        return _decode_result(data, classes)
    except _DAMAGED as err:
        raise JournalError(
            f"the journal holds a block it cannot read ({type(err).__name__}: "
            f"{str(err)[:120]}); run again without --resume to start over"
        ) from err


def _decode_result(data: bytes, classes: Sequence[str]) -> BlockResult:
    arrays = decode_arrays(data)
    meta = json.loads(arrays["meta"].tobytes())
    interior = {
        name: ClassPolygons(
            geometries=arrays[f"i.{name}.geometries"],
            area_m2=arrays[f"i.{name}.area_m2"],
            confidence=arrays[f"i.{name}.confidence"],
            pixels=arrays[f"i.{name}.pixels"],
            keys=arrays[f"i.{name}.keys"],
        )
        for name in classes
        if f"i.{name}.keys" in arrays
    }
    seams = {
        name: polygons_from_arrays(f"s.{name}", arrays)
        for name in classes
        if f"s.{name}.labels" in arrays
    }
    return BlockResult(
        index=int(meta["index"]),
        classes=arrays["classes"],
        interior=interior,
        seams=seams,
        timings={},
        device=meta["device"],
        precision=meta["precision"],
        probabilities=arrays.get("probabilities"),
        uncertainty=arrays.get("uncertainty"),
        lines={
            name: BlockLines(
                geometries=arrays[f"l.{name}.geometries"],
                seam_start=arrays[f"l.{name}.seam_start"],
                seam_end=arrays[f"l.{name}.seam_end"],
                simplify_px=float(arrays[f"l.{name}.simplify_px"][0]),
            )
            for name in classes
            if f"l.{name}.seam_start" in arrays
        },
    )
