"""Hostile files, names, numbers and faults: one clear line, the right exit code, and nothing
outside the run's own outputs changed.

Every case builds its files in ``tmp_path`` (the scene, planted links, victims, locks), runs
``geoseg`` in-process, and compares a snapshot of every file under ``tmp_path`` (content hash,
link target, mtime) before and after: a failed run changes nothing at all, a successful one
only the outputs the case names. ``BEFORE`` records what geoseg did at 9b6201f, before these
checks existed (the issue's matrix), for the table in the change's notes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from affine import Affine
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.tiling.io import write_array
from tests.helpers import UTM_TRANSFORM, synthetic_image, synthetic_truth

NDWI = ["-c", "water", "-m", "ndwi", "--bands", "2,4", "--scheduler", "sync"]
DEGREES = Affine(9e-5, 0.0, -70.0, 0.0, -9e-5, 40.0)


def _scene(
    path: Path,
    *,
    crs: str | None = "EPSG:32617",
    transform: Affine = UTM_TRANSFORM,
    size: int = 48,
) -> Path:
    truth = synthetic_truth(size, size, seed=3)
    write_array(path, synthetic_image(truth, seed=3), crs=crs, transform=transform)
    return path


@dataclass(frozen=True)
class Case:
    """``setup(folder, model) -> argv`` (after ``geoseg``); the expected exit code and line."""

    id: str
    setup: Callable[[Path, Path], list[str]]
    code: int
    line: str  # a regular expression the one line must match (search)
    changed: frozenset[str] = field(default_factory=frozenset)  # paths a success may change
    fault: str | None = None  # a fault injected while the command runs (see _faults)
    lines: int = 1  # lines on stderr (a workflow error is its header and one problem)


# --------------------------------------------------------------------------- the setups


def _alias(name: str) -> Callable[[Path, Path], list[str]]:
    """The scene itself is named like one of the outputs of ``-o s.gpkg``."""

    def setup(d: Path, m: Path) -> list[str]:
        _scene(d / name)
        extra = ["--probabilities"] if "probabilities" in name else []
        return ["run", name, *NDWI, "-o", "s.gpkg", "--overwrite", *extra]

    return setup


def _link_output_to_scene(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    (d / "o_classes.tif").symlink_to("s.tif")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--overwrite"]


def _link_gpkg_to_scene(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    (d / "o.gpkg").symlink_to(d / "s.tif")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--overwrite"]


def _hardlink_output_to_scene(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    os.link(d / "s.tif", d / "o_classes.tif")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--overwrite"]


def _dotdot_alias(d: Path, m: Path) -> list[str]:
    (d / "sub").mkdir()
    _scene(d / "s_classes.tif")
    return ["run", "sub/../s_classes.tif", *NDWI, "-o", "s.gpkg", "--overwrite"]


def _model_is_output(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    (d / "o_classes.tif").write_bytes(m.read_bytes())  # a model file under an output's name
    args = ["-c", "water", "-m", "o_classes.tif", "--scheduler", "sync"]
    return ["run", "s.tif", *args, "-o", "o.gpkg", "--overwrite"]


def _report_is_scene(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--report", "s.tif"]


def _report_is_output(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--report", "o_classes.tif"]


def _lock(host: str, *, held: bool, pid: int | None = None) -> Callable[[Path, Path], list[str]]:
    """A lock of another run: live (its flock held), dead, or from another host."""

    def setup(d: Path, m: Path) -> list[str]:
        import fcntl

        _scene(d / "s.tif")
        lock = d / ".o.gpkg.lock"
        who = os.getppid() if pid is None else pid
        lock.write_text(f"pid {who} host {host} since 2026-01-01T00:00:00Z\n")
        if held:  # flock is per open file: this open conflicts with the run's own
            fd = os.open(lock, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD.append(fd)
        os.utime(lock, ns=(10**18, 10**18))
        return ["run", "s.tif", *NDWI, "-o", "o.gpkg"]

    return setup


_HELD: list[int] = []


def _lock_is_a_link(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    (d / "victim.txt").write_text("precious")
    (d / ".o.gpkg.lock").symlink_to(d / "victim.txt")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg"]


def _planted_temporaries(d: Path, m: Path) -> list[str]:
    """Links at every temporary name geoseg 0.1 used: a run must not write through them."""
    _scene(d / "s.tif")
    (d / "victims").mkdir()
    for name in (
        ".o_classes.tif.partial",
        ".o_classes.tif.cog.partial",
        ".o_classes.qml.partial",
        ".o.gpkg.partial.gpkg",
        ".o.gpkg.staging.gpkg",
    ):
        victim = d / "victims" / f"{name.strip('.')}.txt"
        victim.write_text("precious")
        (d / name).symlink_to(victim)
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg"]


def _output_link(*, overwrite: bool, dangling: bool = False) -> Callable[[Path, Path], list[str]]:
    def setup(d: Path, m: Path) -> list[str]:
        _scene(d / "s.tif")
        victim = d / "victim.gpkg"
        if not dangling:
            victim.write_text("precious")
        (d / "o.gpkg").symlink_to(victim)
        return ["run", "s.tif", *NDWI, "-o", "o.gpkg", *(["--overwrite"] if overwrite else [])]

    return setup


def _journal_link(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    (d / "victim.db").write_text("precious")
    (d / ".o.gpkg.journal").symlink_to(d / "victim.db")
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--resume"]


def _output_named(name: str, *, folder: str | None = None) -> Callable[[Path, Path], list[str]]:
    def setup(d: Path, m: Path) -> list[str]:
        _scene(d / "s.tif")
        if folder:
            (d / folder).mkdir()
        return ["run", "s.tif", *NDWI, "-o", name]

    return setup


def _option(
    *extra: str, scene: str = "utm", size: int = 48, model: bool = False
) -> Callable[[Path, Path], list[str]]:
    def setup(d: Path, m: Path) -> list[str]:
        if scene == "utm":
            _scene(d / "s.tif", size=size)
        else:  # no CRS, pixels of 9e-5 units (degrees)
            _scene(d / "s.tif", crs=None, transform=DEGREES, size=size)
        how = ["-c", "water", "-m", str(m), "--scheduler", "sync"] if model else NDWI
        return ["run", "s.tif", *how, "-o", "o.gpkg", *extra]

    return setup


def _no_geotransform(d: Path, m: Path) -> list[str]:
    """A GeoTIFF with neither CRS nor geotransform: rasterio warns on every open."""
    import warnings

    import numpy as np
    import rasterio

    image = synthetic_image(synthetic_truth(48, 48, seed=3), seed=3)
    profile = {"driver": "GTiff", "width": 48, "height": 48, "count": 4, "dtype": "uint16"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(d / "s.tif", "w", **profile) as dst:
            dst.write(np.asarray(image))
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--smooth", "none"]


def _output_is_folder(d: Path, m: Path) -> list[str]:
    _scene(d / "s.tif")
    (d / "o_classes.tif").mkdir()
    return ["run", "s.tif", *NDWI, "-o", "o.gpkg", "--overwrite"]


def _workflow(body: str) -> Callable[[Path, Path], list[str]]:
    def setup(d: Path, m: Path) -> list[str]:
        _scene(d / "s.tif")
        head = 'version: 1\ninputs: {glob: "*.tif"}\nclasses: [water]\noutput: {folder: out}\n'
        (d / "wf.yaml").write_text(head + body)
        return ["batch", "run", "wf.yaml"]

    return setup


_BOMB = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, k in zip(["", "a", "b", "c", "d", "e", "f"], ["a", "b", "c", "d", "e", "f", "g"])
)

# --------------------------------------------------------------------------- the matrix

OUT = frozenset({"o.gpkg", "o_classes.tif", "o_classes.qml"})
FAR = "no such table|Traceback"

CASES = [
    # An output that is an input: refused whatever --overwrite says.
    Case("class raster is the scene", _alias("s_classes.tif"), 1, "would replace the input scene"),
    Case("gpkg is the scene", _alias("s.gpkg"), 1, "would replace the input scene"),
    Case("qml is the scene", _alias("s_classes.qml"), 1, "would replace the input scene"),
    Case(
        "probabilities are the scene",
        _alias("s_probabilities.tif"),
        1,
        "would replace the input scene",
    ),
    Case("class raster links to scene", _link_output_to_scene, 1, "would replace the input scene"),
    Case("gpkg links to scene", _link_gpkg_to_scene, 1, "would replace the input scene"),
    Case("class raster hard-links scene", _hardlink_output_to_scene, 1, "would replace the input"),
    Case("scene via sub/..", _dotdot_alias, 1, "would replace the input scene"),
    Case("model is an output", _model_is_output, 1, "would replace the input model"),
    Case("report is the scene", _report_is_scene, 1, "would replace the input scene"),
    Case("report is an output", _report_is_output, 1, "is one of the run's outputs"),
    # One run per output.
    Case(
        "output locked by a live run",
        _lock(socket.gethostname(), held=True),
        1,
        r"another geoseg run \(pid \d+ on .* since .*\) is writing",
    ),
    Case(
        "stale lock of a dead pid",
        _lock(socket.gethostname(), held=False, pid=4_194_000),
        0,
        r"^geoseg: wrote o\.gpkg",
        changed=OUT | {".o.gpkg.lock"},
    ),
    Case(
        "lock of another host",
        _lock("elsewhere.example", held=False),
        1,
        "locked by a geoseg run on elsewhere.example .* if that run is gone, remove",
    ),
    Case("lock is a symlink", _lock_is_a_link, 1, "is not a geoseg lock"),
    # Temporaries and links.
    Case(
        "links planted at old temporary names",
        _planted_temporaries,
        0,
        r"^geoseg: wrote o\.gpkg",
        changed=OUT,
    ),
    Case(
        "output is a link, no --overwrite",
        _output_link(overwrite=False),
        1,
        r"'o\.gpkg' exists; pass --overwrite",
    ),
    Case(
        "output is a link, --overwrite: replaced",
        _output_link(overwrite=True),
        0,
        r"^geoseg: wrote o\.gpkg",
        changed=OUT,
    ),
    Case(
        "output is a dangling link",
        _output_link(overwrite=False, dangling=True),
        1,
        r"'o\.gpkg' exists; pass --overwrite",
    ),
    Case("journal is a link, --resume", _journal_link, 1, "is a symbolic link; geoseg never"),
    Case("output is a folder", _output_is_folder, 1, "is a folder; choose another -o"),
    # Output names GDAL reads as something else.
    Case("';' in the name", _output_named("a;b.gpkg"), 2, "holds ';', which GDAL reads"),
    Case("'!' in the name", _output_named("a!b.gpkg"), 2, "holds '!', which GDAL reads"),
    Case("tab in the name", _output_named("a\tb.gpkg"), 2, r"holds '\\t', which GDAL reads"),
    Case("newline in the name", _output_named("a\nb.gpkg"), 2, r"holds '\\n', which GDAL"),
    Case("';' in the folder", _output_named("x;y/o.gpkg", folder="x;y"), 2, "holds ';'"),
    Case("/vsimem output", _output_named("/vsimem/o.gpkg"), 2, "local or mounted file system"),
    Case("not a .gpkg", _output_named("o.shp"), 2, r"must end in \.gpkg"),
    # Numbers.
    Case("--tile 0", _option("--tile", "0"), 2, "tile size 0 is not a positive multiple of 32"),
    Case("--tile -64", _option("--tile", "-64"), 2, "tile size -64 is not a positive multiple"),
    Case("--tile 65536", _option("--tile", "65536"), 2, "tile size 65536 is too large"),
    Case("--overlap -5", _option("--overlap", "-5"), 2, "--overlap -5 must be >= 0"),
    Case("--block 100000", _option("--block", "100000"), 2, "block size 100000 is too large"),
    Case("--simplify nan", _option("--simplify", "nan"), 2, "--simplify nan must be a finite"),
    Case("--min-area inf", _option("--min-area", "inf"), 2, "--min-area inf must be a finite"),
    Case("--min-area -1", _option("--min-area", "-1"), 2, r"--min-area -1\.0 must be a finite"),
    Case("--prune nan", _option("--prune", "nan"), 2, "--prune nan must be a finite"),
    Case(
        "--dst-crs EPSG:nonsense",
        _option("--dst-crs", "EPSG:nonsense"),
        2,
        "--dst-crs 'EPSG:nonsense' is not a CRS",
    ),
    Case("--dst-crs huge", _option("--dst-crs", "x" * 100_000), 2, "is not a CRS"),
    Case(
        "smoothing radius 1000 km",
        _option("--smooth-param", "open_radius_m=1e6"),
        2,
        r"open_radius_m=1e\+06 spans \d+ pixels .* more than the block",
    ),
    Case(
        "smoothing area nan",
        _option("--smooth-param", "min_object_area_m2=nan"),
        2,
        "must be finite",
    ),
    # A scene without a CRS whose pixels are degrees.
    Case(
        "no CRS, degree pixels, smoothing",
        _option(scene="degrees"),
        2,
        r"has no CRS .* too small to be metres .* --smooth none",
    ),
    Case(
        "no CRS, degree pixels, --min-area",
        _option("--smooth", "none", "--min-area", "100", scene="degrees"),
        2,
        "--min-area in metres cannot be turned into pixels",
    ),
    Case(
        "no CRS, degree pixels, nothing metric",
        _option("--smooth", "none", scene="degrees"),
        0,
        r"^geoseg: wrote o\.gpkg",
        changed=OUT,
        lines=2,  # the no-CRS warning, then the summary
    ),
    Case(
        "no geotransform: library warnings only with -v",
        _no_geotransform,
        0,
        r"^geoseg: wrote o\.gpkg",
        changed=OUT,
        lines=2,  # the no-CRS warning, then the summary; no NotGeoreferencedWarning
    ),
    # Devices, folders, disks.
    Case("--device cuda, no GPU", _option("--device", "cuda"), 1, "CUDA is not available here"),
    Case("--device cuda:7, no GPU", _option("--device", "cuda:7"), 1, "CUDA is not available"),
    Case("--device cuda:x", _option("--device", "cuda:x"), 2, "is not one of auto, cpu, cuda"),
    Case("output folder /proc", _output_named("/proc/o.gpkg"), 1, "'/proc' is not writable"),
    Case("output folder missing", _output_named("nowhere/o.gpkg"), 1, "does not exist"),
    Case("disk full at the start", _option(), 1, r"no space left on '.*'", fault="enospc-start"),
    Case(
        "disk full after a block",
        _option("--block", "64", "--tile", "64", size=160),
        1,
        r"no space left on '.*'; free some space, then run the same command with --resume",
        changed=frozenset({".o.gpkg.journal"}),
        fault="enospc-block",
    ),
    Case(
        "Ctrl-C before any block finished",
        _option(model=True),
        130,
        "no block had finished, so there is nothing for --resume to reuse",
        fault="interrupt",
    ),
    Case(
        "Ctrl-C after the index statistics",
        _option(),
        130,
        "the same command with --resume reuses the scene statistics$",
        changed=frozenset({".o.gpkg.journal"}),
        fault="interrupt",
    ),
    # Workflow files.
    Case(
        "YAML alias bomb in smoothing.params",
        _workflow(_BOMB + "smoothing: {params: {x: *g}}\n"),
        2,
        r"wf\.yaml:\d+: \(file\): the value anchored here",
        lines=2,
    ),
    Case(
        "YAML alias bomb in min_area_m2",
        _workflow(_BOMB + "min_area_m2: *g\n"),
        2,
        "workflow files may not use aliases",
        lines=2,
    ),
    Case(
        "YAML merge key",
        _workflow("base: &b {block: 128}\ntiling: {<<: *b}\n"),
        2,
        "may not use aliases",
        lines=2,
    ),
    Case(
        "huge list as min_area_m2",
        _workflow(f"min_area_m2: [{', '.join(['1'] * 10_000)}]\n"),
        2,
        r"min_area_m2: must be a number, not a list \(\[1, 1, .*\.\.\. \(\d+ characters\)\)",
        lines=2,
    ),
]


# --------------------------------------------------------------------------- the checks


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every file and link under ``root``: link target, or size, mtime and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None, Path], None]:
    """Inject a fault: a full disk at the first write, or after the first block's write; an
    interrupt in the first block."""

    def inject(kind: str | None, folder: Path) -> None:
        if kind is None:
            return
        import sqlite3

        import geoseg.run.pipeline
        import geoseg.tiling.io

        if kind == "enospc-start":
            real_open, real_connect = os.open, sqlite3.connect

            def full_open(path: object, flags: int, *a: object, **k: object) -> int:
                if flags & os.O_CREAT and Path(os.fspath(path)).parent.resolve() == folder:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
                return real_open(path, flags, *a, **k)  # type: ignore[arg-type]

            def full_connect(path: object, *a: object, **k: object) -> sqlite3.Connection:
                if Path(str(path)).parent.resolve() == folder:
                    raise sqlite3.OperationalError("database or disk is full")
                return real_connect(path, *a, **k)  # type: ignore[arg-type]

            monkeypatch.setattr(os, "open", full_open)
            monkeypatch.setattr(sqlite3, "connect", full_connect)
        elif kind == "enospc-block":
            real_write = geoseg.tiling.io.RasterWriter.write
            calls: list[int] = []

            def write(self: object, *a: object, **k: object) -> None:
                calls.append(1)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real_write(self, *a, **k)  # type: ignore[arg-type]

            monkeypatch.setattr(geoseg.tiling.io.RasterWriter, "write", write)
        elif kind == "interrupt":

            def interrupted(plan: object, block: object, **kw: object) -> None:
                raise KeyboardInterrupt

            monkeypatch.setattr(geoseg.run.pipeline, "process_block", interrupted)
        else:  # pragma: no cover
            raise AssertionError(kind)

    return inject


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(
    case: Case,
    tmp_path: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Callable[[str | None, Path], None],
) -> None:
    if "cuda" in case.id:
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    if "/proc" in case.id and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = case.setup(work, tiny_model)
    before = _snapshot(work)
    faults(case.fault, work.resolve())
    try:
        result = CliRunner().invoke(main, args)
    finally:
        while _HELD:
            os.close(_HELD.pop())
        logging.captureWarnings(False)
    err = result.stderr
    assert result.exit_code == case.code, err
    assert result.exception is None or isinstance(result.exception, SystemExit), err
    assert "Traceback" not in err and not re.search(FAR, err), err
    lines = err.splitlines()
    assert len(lines) == case.lines, err
    assert re.search(case.line, lines[-1] if case.lines == 1 else err, re.S | re.M), err
    assert max(len(line) for line in lines) <= 1100, "a bad value is quoted as an excerpt"
    after = _snapshot(work)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= case.changed, f"changed outside the run's outputs: {changed - case.changed}"
    if case.code == 0:
        new = after.keys() - before.keys()
        assert not [k for k in new if ".partial" in k or k.endswith(".lock")], new


def test_the_matrix_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_library_warnings_show_with_v(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: rasterio's NotGeoreferencedWarning went to stderr raw (twice, with source
    lines), from the client and from every worker."""
    monkeypatch.chdir(tmp_path)
    args = _no_geotransform(tmp_path, tmp_path)
    try:
        quiet = CliRunner().invoke(main, args)
        loud = CliRunner().invoke(main, [*args[:-4], "-o", "v.gpkg", "--smooth", "none", "-v"])
    finally:
        logging.captureWarnings(False)
    assert quiet.exit_code == 0 and loud.exit_code == 0, loud.stderr
    assert "NotGeoreferencedWarning" not in quiet.stderr
    assert "geoseg: WARNING: " in loud.stderr and "NotGeoreferencedWarning" in loud.stderr
