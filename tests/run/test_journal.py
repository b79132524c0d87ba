"""The block journal: what --resume reloads is what the run computed, and nothing is unpickled."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import shapely

from geoseg.run.journal import (
    Journal,
    decode_arrays,
    decode_result,
    encode_arrays,
    encode_result,
    fingerprint,
)
from geoseg.run.results import BlockResult, ClassPolygons
from geoseg.vectorize.centerlines import BlockLines
from geoseg.vectorize.polygons import BlockPolygons

CLASSES = ("water", "roads")


def _result(index: int = 3) -> BlockResult:
    """A block with every kind of payload: classes, probabilities, polygons, seams, lines."""
    rng = np.random.default_rng(index)
    classes = rng.integers(0, 3, size=(6, 7)).astype(np.uint8)
    classes[0, :2] = 255  # nodata
    lake = shapely.Polygon(
        [(0, 0), (40, 0), (40, 40), (0, 40)], holes=[[(10, 10), (20, 10), (20, 20), (10, 20)]]
    )
    pond = shapely.box(50.5, 0.25, 60.125, 9.75)
    seam = shapely.box(6, 0, 7, 3)
    return BlockResult(
        index=index,
        classes=classes,
        interior={
            "water": ClassPolygons(
                geometries=np.array([lake, pond], dtype=object),
                area_m2=np.array([1500.0, 92.78125]),
                confidence=np.array([0.91, 0.55]),
                pixels=np.array([15, 1], dtype=np.int64),
                keys=np.array([[index, 1], [index, 2]], dtype=np.int64),
            ),
            # a class with no interior polygon in this block still comes back, empty
            "roads": ClassPolygons(
                geometries=np.empty(0, dtype=object),
                area_m2=np.empty(0),
                confidence=np.empty(0),
                pixels=np.empty(0, dtype=np.int64),
                keys=np.empty((0, 2), dtype=np.int64),
            ),
        },
        seams={
            "water": BlockPolygons(
                geometries=np.array([seam], dtype=object),
                labels=np.array([3], dtype=np.int64),
                pixels=np.array([3], dtype=np.int64),
                conf_sum=np.array([2.25]),
                seam=np.array([True]),
                borders=(None, np.array([0, 0, 0, 0, 0, 0, 3], dtype=np.int32), None, None),
            )
        },
        lines={
            "roads": BlockLines(
                geometries=np.array(
                    [
                        shapely.LineString([(0.5, 0.5), (3.5, 2.5)]),
                        shapely.LineString([(1, 6), (7, 6.5)]),
                    ],
                    dtype=object,
                ),
                seam_start=np.array([False, False]),
                seam_end=np.array([False, True]),
                simplify_px=0.75,
            )
        },
        timings={"predict": 1.5},
        device="cuda:1",
        precision="fp16",
        probabilities=rng.integers(0, 255, size=(2, 6, 7)).astype(np.uint8),
    )


def _same_geoms(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and bool(shapely.equals_exact(a, b, tolerance=0).all())


def test_a_block_result_survives_the_codec_exactly() -> None:
    before = _result()
    after = decode_result(encode_result(before), CLASSES)

    assert after.index == 3 and after.device == "cuda:1" and after.precision == "fp16"
    np.testing.assert_array_equal(after.classes, before.classes)
    assert after.classes.dtype == np.uint8
    assert after.probabilities is not None and before.probabilities is not None
    np.testing.assert_array_equal(after.probabilities, before.probabilities)

    assert set(after.interior) == {"water", "roads"}
    for name in ("water", "roads"):
        a, b = after.interior[name], before.interior[name]
        assert _same_geoms(a.geometries, b.geometries)
        for field in ("area_m2", "confidence", "pixels", "keys"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # the hole and the non-integer coordinates are kept bit for bit
    assert len(after.interior["water"].geometries[0].interiors) == 1
    assert after.interior["roads"].keys.shape == (0, 2)

    (name,) = after.seams
    s, t = after.seams[name], before.seams[name]
    assert _same_geoms(s.geometries, t.geometries)
    np.testing.assert_array_equal(s.labels, t.labels)
    np.testing.assert_array_equal(s.conf_sum, t.conf_sum)
    np.testing.assert_array_equal(s.seam, t.seam)
    # the border labels the client merges seams with, and which sides are scene edges
    assert s.borders[0] is None and s.borders[2] is None and s.borders[3] is None
    np.testing.assert_array_equal(s.borders[1], t.borders[1])

    lines, orig = after.lines["roads"], before.lines["roads"]
    assert _same_geoms(lines.geometries, orig.geometries)
    assert lines.seam_end.tolist() == [False, True] and lines.seam_start.tolist() == [False, False]
    assert lines.simplify_px == 0.75


def test_a_block_without_probabilities_or_lines_comes_back_without_them() -> None:
    bare = BlockResult(
        index=0,
        classes=np.zeros((2, 2), dtype=np.uint8),
        interior={},
        seams={},
        timings={},
        device="cpu",
    )
    after = decode_result(encode_result(bare), CLASSES)
    assert after.probabilities is None and dict(after.lines) == {}
    assert dict(after.interior) == {} and dict(after.seams) == {}
    assert after.precision == "fp32"


def test_fingerprint_depends_on_content_not_key_order() -> None:
    a = fingerprint({"scene": ["a.tif", 10], "classes": ["water"], "tile": 512})
    assert a == fingerprint({"tile": 512, "classes": ["water"], "scene": ["a.tif", 10]})
    assert a != fingerprint({"scene": ["a.tif", 10], "classes": ["water"], "tile": 256})
    assert a != fingerprint({"scene": ["a.tif", 11], "classes": ["water"], "tile": 512})


def test_resume_reloads_the_recorded_blocks_in_order(tmp_path: Path) -> None:
    path = tmp_path / ".out.gpkg.journal"
    journal = Journal(path, fingerprint="f1", resume=False)
    for index in (5, 2):
        journal.record(index, encode_result(_result(index)))
    journal.close()

    again = Journal(path, fingerprint="f1", resume=True)
    assert again.done() == {2, 5}
    loaded = [(i, decode_result(p, CLASSES)) for i, p in again.load()]
    again.close()
    assert [i for i, _ in loaded] == [2, 5]
    for index, result in loaded:
        assert result.index == index
        np.testing.assert_array_equal(result.classes, _result(index).classes)


def test_a_block_recorded_twice_is_kept_once_with_the_last_payload(tmp_path: Path) -> None:
    path = tmp_path / ".out.gpkg.journal"
    journal = Journal(path, fingerprint="f1", resume=False)
    journal.record(1, b"old")
    journal.record(1, b"new")
    assert list(journal.load()) == [(1, b"new")]
    journal.close()


def test_a_journal_of_another_plan_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / ".out.gpkg.journal"
    journal = Journal(path, fingerprint="model-a", resume=False)
    journal.record(0, encode_result(_result(0)))
    journal.close()

    other = Journal(path, fingerprint="model-b", resume=True)
    assert other.done() == set() and list(other.load()) == []
    other.record(1, b"b")
    other.close()
    # the old plan's blocks are gone for good: going back to it starts over too
    back = Journal(path, fingerprint="model-a", resume=True)
    assert back.done() == set()
    back.close()


def test_a_run_without_resume_starts_over(tmp_path: Path) -> None:
    path = tmp_path / ".out.gpkg.journal"
    journal = Journal(path, fingerprint="f1", resume=False)
    journal.record(0, b"x")
    journal.close()
    fresh = Journal(path, fingerprint="f1", resume=False)
    assert fresh.done() == set()
    fresh.close()


def test_finish_deletes_the_journal_and_its_side_files(tmp_path: Path) -> None:
    path = tmp_path / ".out.gpkg.journal"
    journal = Journal(path, fingerprint="f1", resume=False)
    journal.record(0, b"x")
    assert path.exists()
    journal.finish()
    assert sorted(tmp_path.iterdir()) == []
    # and a later --resume finds nothing to resume
    later = Journal(path, fingerprint="f1", resume=True)
    assert later.done() == set()
    later.close()


def test_blocks_recorded_before_a_crash_are_resumed(tmp_path: Path) -> None:
    """A process killed without closing the journal loses none of the recorded blocks."""
    path = tmp_path / ".out.gpkg.journal"
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from geoseg.run.journal import Journal
        journal = Journal(Path({str(path)!r}), fingerprint="f1", resume=False)
        journal.record(0, b"zero")
        journal.record(1, b"one")
        os._exit(9)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    journal = Journal(path, fingerprint="f1", resume=True)
    assert list(journal.load()) == [(0, b"zero"), (1, b"one")]
    journal.close()


class _Touch:
    """Unpickling this creates a file: the proof that a payload was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _crafted(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        classes=np.zeros((2, 2), dtype=np.uint8),
        meta=np.frombuffer(b'{"index": 0, "device": "cpu", "precision": "fp32"}', np.uint8),
        evil=np.array([_Touch(marker)], dtype=object),
    )
    return buf.getvalue()


def test_a_payload_carrying_a_pickled_object_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = _crafted(marker)
    path = tmp_path / ".out.gpkg.journal"
    journal = Journal(path, fingerprint="f1", resume=False)
    journal.record(0, payload)
    journal.close()

    resumed = Journal(path, fingerprint="f1", resume=True)
    ((_, stored),) = list(resumed.load())
    resumed.close()
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_result(stored, CLASSES)
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_arrays(stored)
    assert not marker.exists()
    # the control: a loader that allows pickles would have run the payload
    with np.load(io.BytesIO(stored), allow_pickle=True) as npz:
        npz["evil"]
    assert marker.exists()


def test_encode_arrays_stores_geometries_as_wkb_not_pickles() -> None:
    geoms = np.array([shapely.Point(1, 2), shapely.box(0, 0, 1, 1)], dtype=object)
    data = encode_arrays({"g": geoms, "n": np.arange(3)})
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    out = decode_arrays(data)
    assert set(out) == {"g", "n"}
    assert _same_geoms(out["g"], geoms)
    np.testing.assert_array_equal(out["n"], np.arange(3))


def _damaged_payloads() -> dict[str, bytes]:
    good = encode_result(_result(0))
    arrays = decode_arrays(good)
    no_meta = encode_arrays({k: v for k, v in arrays.items() if k != "meta"})
    name = next(k for k in arrays if k.endswith(".geometries"))
    flat = io.BytesIO()
    with np.load(io.BytesIO(good), allow_pickle=False) as npz:
        parts = {k: npz[k] for k in npz.files}
    parts[f"{name}.wkb"] = np.full_like(parts[f"{name}.wkb"], 7)
    np.savez_compressed(flat, **parts)  # type: ignore[arg-type]
    return {
        "random bytes": bytes(range(256)) * 4,
        "truncated": good[: len(good) // 2],
        "no metadata": no_meta,
        "invalid WKB": flat.getvalue(),
        "metadata not JSON": encode_arrays({**arrays, "meta": np.frombuffer(b"{nope", np.uint8)}),
    }


@pytest.mark.parametrize("kind", list(_damaged_payloads()))
def test_a_damaged_payload_is_one_journal_error_naming_the_way_out(kind: str) -> None:
    from geoseg.errors import GeosegError, JournalError

    with pytest.raises(JournalError, match="run again without --resume") as caught:
        decode_result(_damaged_payloads()[kind], CLASSES)
    assert isinstance(caught.value, GeosegError)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_links_planted_at_the_sidecar_names_after_the_check_are_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The journal refuses links at its four names before opening; a link planted after that
    # check (a race) meets SQLite, which opens its -wal and -shm files without following links.
    from geoseg.errors import OutputWriteError

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / ".out.gpkg.journal"
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").symlink_to(victim if side == "-wal" else tmp_path / "created")
    monkeypatch.setattr(Path, "is_symlink", lambda self: False)  # the check saw nothing
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(OutputWriteError, match="cannot write the journal"):
        Journal(path, fingerprint="f", resume=True)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "created").exists()
