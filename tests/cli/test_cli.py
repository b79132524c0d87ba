"""CLI errors: one clear line, the right exit code, no traceback, no partial output."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.tiling.io import write_array
from tests.helpers import UTM_TRANSFORM, synthetic_image, synthetic_truth


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _outputs(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in (".gpkg", ".tif") and not p.name.startswith("scene")
    )


@pytest.fixture
def scene(make_scene) -> Path:
    path, _ = make_scene(96, 96, seed=1)
    return path


def test_run_writes_gpkg_and_raster(tiny_model: Path, scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.gpkg"
    code, text = _run(
        "run",
        str(scene),
        "--classes",
        "water,roads",
        "-m",
        str(tiny_model),
        "-o",
        str(out),
        "--scheduler",
        "sync",
    )
    assert code == 0, text
    assert out.exists() and (tmp_path / "res_classes.tif").exists()
    # road centrelines are counted as lines, not polygons
    assert re.search(r"\(water: \d+, roads: \d+ polygons; roads_centerlines: \d+ lines\)", text)


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (
            lambda s, m, o: [
                "run",
                str(s),
                "--classes",
                "water,forest",
                "-m",
                str(m),
                "-o",
                str(o),
            ],
            1,
            "class 'forest' is not produced by the selected model(s) (available: roads, water)",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s.parent / "missing.tif"),
                "--classes",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
            ],
            1,
            "does not exist",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s.parent / "notes.tif"),
                "--classes",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
            ],
            1,
            "cannot read",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s.parent / "rgb.tif"),
                "--classes",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
            ],
            1,
            "the scene has 3 bands but model 'synthetic-unet' needs 4 (blue, green, red, nir)",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s),
                "--classes",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
                "--tile",
                "100",
            ],
            2,
            "tile size 100 is not a positive multiple of 32; try 96",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s),
                "-c",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
                "--block",
                "32",
            ],
            2,
            "block size 32 is too small; use at least 64",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s),
                "-c",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
                "--workers",
                "0",
            ],
            2,
            "--workers 0 must be at least 1",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s),
                "-c",
                "water",
                "-m",
                str(m),
                "-o",
                str(o),
                "--scheduler",
                "foo",
            ],
            2,
            "--scheduler 'foo' is not a scheduler address",
        ),
        (
            lambda s, m, o: [
                "run",
                str(s),
                "--classes",
                "water",
                "-m",
                str(m),
                "-o",
                str(o.with_suffix(".shp")),
            ],
            2,
            "must end in .gpkg",
        ),
        (lambda s, m, o: ["run", str(s), "-m", str(m)], 2, "Missing option '--classes'"),
        (
            lambda s, m, o: [
                "run",
                str(s),
                "--classes",
                "water",
                "-m",
                str(m),
                "--precision",
                "fp8",
            ],
            2,
            "'fp8' is not one of",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    tiny_model: Path, scene: Path, tmp_path: Path, make_args, code: int, message: str
) -> None:
    (tmp_path / "notes.tif").write_text("this is not a raster")
    truth = synthetic_truth(40, 40)
    write_array(
        tmp_path / "rgb.tif", synthetic_image(truth)[:3], crs="EPSG:32617", transform=UTM_TRANSFORM
    )
    out = tmp_path / "out.gpkg"
    got, text = _run(*make_args(scene, tiny_model, out))
    assert got == code, text
    assert message in text
    assert "Traceback" not in text
    if code == 1 or "geoseg: error" in text:
        assert text.count("\n") == 1, text
    assert not out.exists() and not (tmp_path / "out_classes.tif").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("scheduler", ["sync", "tcp://127.0.0.1:9"])
def test_existing_output_needs_overwrite(
    tiny_model: Path, scene: Path, tmp_path: Path, scheduler: str
) -> None:
    """Refused before any cluster is reached (there is none at port 9 to give this message)."""
    out = tmp_path / "keep.gpkg"
    out.write_bytes(b"precious")
    code, text = _run(
        "run",
        str(scene),
        "--classes",
        "water",
        "-m",
        str(tiny_model),
        "-o",
        str(out),
        "--scheduler",
        scheduler,
    )
    assert code == 1 and "exists; pass --overwrite to replace it" in text, text
    assert out.read_bytes() == b"precious"
    assert not (tmp_path / "keep_classes.tif").exists()
    if scheduler != "sync":
        return
    code, text = _run(
        "run",
        str(scene),
        "--classes",
        "water",
        "-m",
        str(tiny_model),
        "-o",
        str(out),
        "--scheduler",
        "sync",
        "--overwrite",
    )
    assert code == 0, text
    assert out.read_bytes()[:16].startswith(b"SQLite format 3")


def test_models_show_and_import(tiny_model: Path, tmp_path: Path) -> None:
    code, text = _run("models", "show", str(tiny_model))
    assert code == 0 and "synthetic-unet" in text and "blue, green, red, nir" in text
    code, text = _run("models", "list")
    assert code == 0 and "deeplabv3plus" in text and "pspnet" in text

    import torch
    from safetensors.torch import load_file

    state = load_file(str(tiny_model))
    pth = tmp_path / "plain.pth"
    torch.save(state, pth)
    out = tmp_path / "imported.safetensors"
    base = [
        "models",
        "import",
        str(pth),
        "--arch",
        "unet",
        "--encoder",
        "resnet18",
        "--bands",
        "blue,green,red,nir",
        "--classes",
        "background,water,roads",
        "-o",
        str(out),
    ]
    norm = ["--mean", "900,1000,1000,2000", "--std", "400,400,500,900"]
    # no silent mean 0 / std 1: the normalisation is part of the model
    code, text = _run(*base)
    assert code == 2 and "--mean and --std required" in text and "(x - mean) / std" in text
    code, text = _run(*base, "--std", "1,1,1,1")
    assert code == 2 and "--mean required" in text
    code, text = _run(*base, *norm, "--tile", "512", "--overlap", "300")
    assert code == 2
    assert "overlap 300 must be between 0 and half the tile size 512" in text
    assert "use an overlap of at most 256" in text
    assert not out.exists()
    # the tiny model has a non-default decoder, so a plain import must fail clearly
    code, text = _run(*base, *norm)
    assert code == 1 and "do not fit the card's architecture" in text
    assert not out.exists()
    out.write_bytes(b"precious")
    code, text = _run(*base, *norm)
    assert code == 1 and "exists; pass --overwrite to replace it" in text
    code, text = _run(*base, *norm, "--overwrite")
    assert code == 1 and "do not fit the card's architecture" in text, "--overwrite goes on"
    assert out.read_bytes() == b"precious"


def test_malformed_scheduler_is_one_usage_line(tiny_model: Path, scene: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", str(scene), "-c", "water", "-m", str(tiny_model), "--scheduler", "foo"]
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [
        "geoseg: error: --scheduler 'foo' is not a scheduler address (missing port number in "
        "address 'foo'); use local (a new cluster on this machine), sync (no Dask) or an "
        "address like tcp://host:8786"
    ]


def test_report_folder_is_checked_before_any_work(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.gpkg"
    code, text = _run(
        "run",
        str(scene),
        "-c",
        "water",
        "-m",
        str(tiny_model),
        "-o",
        str(out),
        "--scheduler",
        "sync",
        "--report",
        str(tmp_path / "missing" / "report.json"),
    )
    assert code == 1, text
    assert text.splitlines() == [
        f"geoseg: error: --report '{tmp_path / 'missing' / 'report.json'}': folder "
        f"'{tmp_path / 'missing'}' does not exist; create it first"
    ]
    assert not out.exists(), "nothing was run"


def test_scene_without_crs_warns_once(tiny_model: Path, tmp_path: Path) -> None:
    truth = synthetic_truth(64, 64)
    write_array(tmp_path / "nocrs.tif", synthetic_image(truth), crs=None, transform=UTM_TRANSFORM)
    code, text = _run(
        "run",
        str(tmp_path / "nocrs.tif"),
        "-c",
        "water",
        "-m",
        str(tiny_model),
        "-o",
        str(tmp_path / "n.gpkg"),
        "--scheduler",
        "sync",
    )
    assert code == 0, text
    assert text.count("has no CRS") == 1, text


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Every file in ``folder`` (hidden ones too) but ``keep``."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _local_run(scene: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """`geoseg run` as a console command on a local cluster of one single-thread worker."""
    return [
        sys.executable,
        "-m",
        "geoseg.cli",
        "run",
        str(scene),
        "-c",
        "water",
        "-m",
        str(model),
        "-o",
        str(out),
        "--block",
        "128",
        "--scheduler",
        "local",
        "--workers",
        "1",
        "--threads",
        "1",
        *extra,
    ]


@pytest.mark.parametrize("failure", ["truncated scene", "no GPU"])
def test_worker_errors_on_a_local_cluster_are_one_line_and_leave_nothing(
    tiny_model: Path, make_scene, tmp_path: Path, failure: str
) -> None:
    """A geoseg error in a Dask task (not the client) reaches the user as one line, exit 1.

    Before: the truncated scene's SceneReadError could not be unpickled (its GDAL cause) and
    came back as a bare Exception with a traceback; the device error was retried 3 times
    with a page of distributed.worker log each; both left the hidden journal behind.
    """
    from tests.tiling.test_io import write_truncated_scene

    if failure == "truncated scene":
        scene = write_truncated_scene(tmp_path / "cut.tif")
        extra: list[str] = []
    else:
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
        scene, _ = make_scene(200, 200, seed=2)
        extra = ["--device", "cuda"]
    keep = {p.name for p in tmp_path.iterdir()}
    proc = subprocess.run(
        _local_run(scene, tiny_model, tmp_path / "out.gpkg", *extra),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), proc.stderr
    if failure == "truncated scene":
        assert "cannot read" in lines[0] and "Read error" in lines[0]
    else:
        assert "device 'cuda' requested but CUDA is not available here" in lines[0]
    assert _leftovers(tmp_path, keep) == [], "no output, partial file or journal is left"


def test_relative_scene_path_works_on_an_attached_cluster(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of an attached cluster keep their own working directory."""
    import logging

    from distributed import LocalCluster

    here = tmp_path / "client"
    here.mkdir()
    truth = synthetic_truth(96, 96, seed=4)
    write_array(here / "rel.tif", synthetic_image(truth), crs="EPSG:32617", transform=UTM_TRANSFORM)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    ) as cluster:  # its workers' working directory is the test's, not `here`
        monkeypatch.chdir(here)
        code, text = _run(
            "run",
            "rel.tif",
            "-c",
            "water",
            "-m",
            str(tiny_model),
            "-o",
            "rel.gpkg",
            "--scheduler",
            cluster.scheduler_address,
            "-q",
        )
    assert code == 0, text
    assert (here / "rel.gpkg").exists()


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoseg.cli",
            "run",
            str(tmp_path / "x.tif"),
            "--classes",
            "water",
            "-m",
            str(tmp_path / "m.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def _interrupt_journalling(
    monkeypatch: pytest.MonkeyPatch, *, at_block: int, interrupt: Callable[[], None]
) -> Callable[[object], bytes]:
    """Make the run's journalling of its ``at_block``-th finished block call ``interrupt``
    (as a Ctrl-C landing there would); returns the real encoder, to put back."""
    import geoseg.run.pipeline

    encode = geoseg.run.pipeline.encode_result
    calls = []

    def interrupted_encode(result: object) -> bytes:
        calls.append(1)
        if len(calls) == at_block:
            interrupt()
        return encode(result)

    monkeypatch.setattr(geoseg.run.pipeline, "encode_result", interrupted_encode)
    return encode


def test_an_interrupt_masked_by_a_cleanup_error_is_still_an_interrupt(
    tiny_model: Path, make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C landing inside np.savez's zip file made zipfile raise a ValueError while
    # handling it: the run printed a traceback and exit 1 instead of the interrupt's line.
    import geoseg.run.pipeline

    def masked() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ValueError("Can't close the ZIP file while there is an open handle") from None

    encode = _interrupt_journalling(monkeypatch, at_block=2, interrupt=masked)
    path, _ = make_scene(200, 200, seed=2)
    out = tmp_path / "o.gpkg"
    args = ["run", str(path), "--classes", "water", "-m", str(tiny_model), "-o", str(out)]
    code, text = _run(*args, "--block", "64", "--scheduler", "sync")
    assert code == 130, text
    assert "interrupted" in text and "--resume" in text
    assert "Traceback" not in text and "ZIP" not in text
    assert not out.exists()
    monkeypatch.setattr(geoseg.run.pipeline, "encode_result", encode)
    code, text = _run(*args, "--block", "64", "--scheduler", "sync", "--resume")
    assert code == 0, text
    assert "1 blocks resumed" in text


def test_resuming_from_a_damaged_journal_is_one_line_then_a_fresh_run_works(
    tiny_model: Path, make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A journal row damaged on disk (or edited) made --resume end in a bare ValueError's
    # traceback from the npz reader.
    import geoseg.run.pipeline

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    encode = _interrupt_journalling(monkeypatch, at_block=3, interrupt=ctrl_c)
    path, _ = make_scene(200, 200, seed=2)
    out = tmp_path / "o.gpkg"
    args = ["run", str(path), "--classes", "water", "-m", str(tiny_model), "-o", str(out)]
    code, text = _run(*args, "--block", "64", "--scheduler", "sync")
    assert code == 130, text
    monkeypatch.setattr(geoseg.run.pipeline, "encode_result", encode)
    (journal,) = tmp_path.glob(".o.gpkg*journal")
    with sqlite3.connect(journal) as db:
        (table,) = [
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if any(c[1] == "payload" for c in db.execute(f"PRAGMA table_info({r[0]})"))
        ]
        db.execute(f"UPDATE {table} SET payload = substr(payload, 1, 40)")
    code, text = _run(*args, "--block", "64", "--scheduler", "sync", "--resume")
    assert code == 1, text
    assert "journal" in text and "without --resume" in text
    assert "Traceback" not in text and text.strip().count("\n") == 0, text
    assert not out.exists()
    code, text = _run(*args, "--block", "64", "--scheduler", "sync")
    assert code == 0, text


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet-dask", "-v"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupt_mutes_dask_until_the_command_ends(signame: str, verbose: bool) -> None:
    """Stopping cancels blocks a thread may be gathering, which Dask logs at ERROR: muted
    from the signal on (before the cancelling), unless -v; levels and handlers restored."""
    import logging
    import os
    import signal
    import time

    import distributed.client  # noqa: F401  (its logger exists)

    from geoseg.cli._base import _interrupts

    sig = getattr(signal, signame)
    log = logging.getLogger("distributed.client")
    level, handler = log.level, signal.getsignal(sig)
    seen = []

    def signalled() -> None:
        with _interrupts(verbose=verbose):
            seen.append(log.isEnabledFor(logging.ERROR))
            try:
                os.kill(os.getpid(), sig)
                time.sleep(5)  # interrupted at once
            finally:
                seen.append(log.isEnabledFor(logging.CRITICAL))

    with pytest.raises(KeyboardInterrupt):
        signalled()
    assert seen == [True, verbose]
    assert (log.level, signal.getsignal(sig)) == (level, handler)
    assert log.isEnabledFor(logging.ERROR)


@pytest.mark.parametrize("how", ["Ctrl-C to the terminal's group", "SIGTERM to geoseg"])
def test_interrupted_run_on_a_local_cluster_is_one_line_and_resumes(
    tiny_model: Path, make_scene, tmp_path: Path, how: str
) -> None:
    """Ctrl-C reaches the workers too: they ignore it and the client stops them cleanly.

    Before: a worker killed by the Ctrl-C took the scattered plan with it and Dask logged an
    ERROR about lost data; SIGTERM killed geoseg outright, leaving hidden partial files.
    """
    import os
    import signal
    import time

    scene, _ = make_scene(1024, 1024, seed=5)
    keep = {p.name for p in tmp_path.iterdir()}
    cmd = _local_run(scene, tiny_model, tmp_path / "out.gpkg", "--smooth", "none", "-q")
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True
    )
    journal = tmp_path / ".out.gpkg.journal"

    def blocks_done() -> int:
        if not journal.exists():
            return 0
        try:
            db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
            try:  # closed at once: an open reader would keep the writer's WAL file
                return int(db.execute("SELECT count(*) FROM blocks").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:  # not created yet
            return 0

    deadline = time.monotonic() + 120
    while blocks_done() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run must still be going when it is interrupted"
    if how.startswith("Ctrl-C"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: interrupted;"), err
    assert "--resume" in lines[0]
    assert _leftovers(tmp_path, keep) == [".out.gpkg.journal"], "only the journal stays"
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.gpkg").exists() and not journal.exists()
