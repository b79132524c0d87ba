"""CLI errors: one clear line, the right exit code, no traceback, no partial output."""

from __future__ import annotations

import subprocess
import sys
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
        "water",
        "-m",
        str(tiny_model),
        "-o",
        str(out),
        "--scheduler",
        "sync",
    )
    assert code == 0, text
    assert out.exists() and (tmp_path / "res_classes.tif").exists()
    assert "wrote" in text and "water:" in text


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
            1,
            "tile size 100 is not a positive multiple of 32; try 96",
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
            1,
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
    assert not out.exists() and not (tmp_path / "out_classes.tif").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_existing_output_needs_overwrite(tiny_model: Path, scene: Path, tmp_path: Path) -> None:
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
        "sync",
    )
    assert code == 1 and "exists; pass --overwrite to replace it" in text
    assert out.read_bytes() == b"precious"
    assert not (tmp_path / "keep_classes.tif").exists()
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
    code, text = _run(
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
    )
    # the tiny model has a non-default decoder, so a plain import must fail clearly
    assert code == 1 and "do not fit the card's architecture" in text
    assert not out.exists()


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
