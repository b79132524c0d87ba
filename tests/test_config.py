"""One run configuration, built alike from the command line and from a workflow file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import geoseg.run.pipeline
from geoseg.batch.workflow_file import _SECTION_KEYS, _TOP_KEYS, load_workflow
from geoseg.cli import main
from geoseg.config import RUN_OPTIONS, RunConfig, run_config
from geoseg.errors import ConfigError, GeosegError
from tests.helpers import write_scene

# `geoseg run` options that are about one invocation, not what a run computes: the scene and
# output are the workflow's inputs and output.folder/name; the cluster has workflow keys of
# its own (scheduler, workers, threads); the rest have no meaning for a scheduled batch.
PER_INVOCATION = {
    "scene", "output", "scheduler", "workers", "threads", "dashboard", "resume", "report",
    "verbose", "quiet",
}  # fmt: skip


class _Planned(GeosegError):
    pass


def _run_params() -> dict[str, list[str]]:
    command = main.commands["run"]
    return {p.name: list(getattr(p, "opts", [])) for p in command.params if p.name}


def test_every_run_option_has_a_workflow_key_and_back() -> None:
    params = _run_params()
    # every option of `geoseg run` that changes the run is in the table, and only those
    changes_the_run = {
        next(o for o in params[name] if o.startswith("--")) for name in set(params) - PER_INVOCATION
    }
    assert changes_the_run == {option for option, _ in RUN_OPTIONS.values()}
    # and every workflow key in the table is one the workflow parser accepts
    for _, key in RUN_OPTIONS.values():
        section, _, sub = key.partition(".")
        assert section in _TOP_KEYS, key
        if sub:
            assert sub in _SECTION_KEYS[section], key


def test_the_builder_takes_every_option_in_the_table() -> None:
    import inspect

    assert set(inspect.signature(run_config).parameters) == set(RUN_OPTIONS)


def test_cli_and_workflow_build_the_same_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = tmp_path / "scene.tif"
    write_scene(scene, 64, 64)
    # Every value differs from its default, so a key dropped on either side shows.
    (tmp_path / "wf.yaml").write_text(
        f"""
version: 1
inputs: {{files: [{scene}]}}
classes: [water]
models: {{water: "ndwi:0.2"}}
bands: [2, 4]
sensor: landsat8
smoothing: {{method: morph, params: {{min_object_area_m2: 500}}}}
tiling: {{block: 1024, tile: 256, overlap: 32}}
inference: {{device: cpu, precision: fp32, batch_size: 3, tta: d4}}
min_area_m2: 5.5
simplify_m: 1.5
output:
  folder: {tmp_path / "out"}
  raster: false
  probabilities: true
  uncertainty: true
  cog: false
  crs: "EPSG:3857"
  centerlines: false
  prune_m: 7.5
  overwrite: true
"""
    )
    from_workflow = load_workflow(tmp_path / "wf.yaml").config

    seen: list[RunConfig] = []

    def plan_run(scene_path: str, config: RunConfig) -> None:
        seen.append(config)
        raise _Planned("planned")

    monkeypatch.setattr(geoseg.run.pipeline, "plan_run", plan_run)
    args = [
        "run", str(scene), "-o", str(tmp_path / "cli.gpkg"), "--classes", "water",
        "--model", "ndwi:0.2", "--bands", "2,4", "--sensor", "landsat8",
        "--smooth", "morph", "--smooth-param", "min_object_area_m2=500",
        "--block", "1024", "--tile", "256", "--overlap", "32",
        "--device", "cpu", "--precision", "fp32", "--batch-size", "3", "--tta", "d4",
        "--min-area", "5.5", "--simplify", "1.5", "--no-raster", "--probabilities", "--uncertainty",
        "--no-cog",
        "--dst-crs", "EPSG:3857", "--no-centerlines", "--prune", "7.5", "--overwrite",
        "--scheduler", "sync",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert "planned" in result.output, result.output
    assert seen == [from_workflow]
    assert from_workflow != run_config(classes="water")


def test_the_builder_reads_command_line_spellings() -> None:
    config = run_config(classes="water, roads", bands="4,3,2")
    assert config.classes == ("water", "roads")
    assert config.bands == (4, 3, 2)
    assert run_config(classes=["water"], bands=[1]) == run_config(classes="water", bands="1")
    with pytest.raises(ConfigError, match="listed twice"):
        run_config(classes="water,water")
