"""A model the user named is used for its classes or refused, never swapped for a default."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.config import run_config
from geoseg.errors import ClassNotAvailableError
from geoseg.run.plan import plan_run


def test_a_named_model_without_the_class_is_an_error_naming_what_it_gives(make_scene) -> None:
    scene, _ = make_scene(64, 64)
    message = "model 'ndvi-otsu' gives vegetation, not water"
    with pytest.raises(ClassNotAvailableError, match=message):
        plan_run(scene, run_config(classes="water", models=["ndvi"]))


def test_the_cli_says_so_in_one_line(make_scene, tmp_path: Path) -> None:
    scene, _ = make_scene(64, 64)
    out = tmp_path / "o.gpkg"
    args = ["run", str(scene), "-c", "water", "-m", "ndvi", "-o", str(out), "--scheduler", "sync"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "gives vegetation, not water" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_defaults_fill_only_classes_no_named_model_gives(tiny_model: Path, make_scene) -> None:
    scene, _ = make_scene(64, 64)
    config = run_config(classes="water,roads", models=["ndwi", str(tiny_model)], sensor="naip")
    plan = plan_run(scene, config)
    by_class = {c: u.card.name for u in plan.models for c, _ in u.outputs}
    # ndwi was named first and gives water; the tiny model was named and gives roads
    assert by_class == {"water": "ndwi-otsu", "roads": "synthetic-unet"}
