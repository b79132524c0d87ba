"""Provenance: the record of how an output was made names the input, models and options."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import geoseg.run.provenance as provenance
from geoseg.config import InferenceOptions, RunConfig
from geoseg.run.plan import RunPlan, plan_run
from geoseg.run.provenance import FileDigest, file_sha256, run_provenance

MakeScene = Callable[..., tuple[Path, object]]

CONFIG = RunConfig(
    classes=("water",),
    models=("ndwi:0.3",),
    sensor="naip",
    block=64,
    inference=InferenceOptions(tile=64, overlap=16),
    min_area_m2=250.0,
    simplify_m=5.0,
    dst_crs="EPSG:4326",
)
STARTED = dt.datetime(2024, 5, 1, 14, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))


@pytest.fixture
def plan(make_scene: MakeScene) -> RunPlan:
    scene, _ = make_scene(150, 170)
    return plan_run(scene, CONFIG)


def _record(plan: RunPlan, **kw: object) -> dict[str, str]:
    args: dict = {
        "scene_sha256": "ab" * 32,
        "model_sha256": {},
        "started": STARTED,
        "seconds": 12.3456,
    }
    args.update(kw)
    return run_provenance(plan, CONFIG, **args)


def test_file_sha256_is_the_digest_of_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 41  # not a multiple of the chunk size below
    path = tmp_path / "scene.tif"
    path.write_bytes(data)
    monkeypatch.setattr(provenance, "_CHUNK", 1000)  # several chunks
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_virtual_missing_and_non_file_paths_have_no_digest(tmp_path: Path) -> None:
    assert file_sha256("/vsicurl/https://example.com/scene.tif") is None
    assert file_sha256("https://example.com/scene.tif") is None
    assert file_sha256(tmp_path / "missing.tif") is None
    assert file_sha256(tmp_path) is None


def test_file_digest_hashes_in_the_background_with_the_same_result(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    assert FileDigest(path).result() == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert FileDigest(tmp_path / "missing").result() is None


def test_the_record_names_input_models_and_options_as_strings(plan: RunPlan) -> None:
    record = _record(plan)
    assert all(isinstance(v, str) for v in record.values())
    assert record["input_path"] == plan.scene.path
    assert record["input_sha256"] == "ab" * 32
    assert record["input_size"] == "170x150x4"
    assert record["input_crs"] == "EPSG:32617"
    assert record["classes"] == "water"
    # the clock reading is in UTC whatever the local zone
    assert record["created_utc"] == "2024-05-01T12:30:05+00:00"
    assert record["run_seconds"] == "12.35"
    assert record["min_area_m2"] == "250" and record["simplify_m"] == "5"
    assert record["dst_crs"] == "EPSG:4326"
    assert record["geoseg_version"]

    (model,) = json.loads(record["models"])
    assert model["source"] == "ndwi:0.3" and model["architecture"] == "spectral"
    assert model["scene_bands"] == [2, 4] and model["classes"] == ["water"]
    assert model["sha256"] is None  # a built-in method has no file
    tiling = json.loads(record["tiling"])
    assert tiling["tile"] == 64 and tiling["overlap"] == 16
    assert tiling["blocks"] == len(plan.blocks) > 1
    assert tiling["halo"] == plan.tiling.halo_px
    assert json.loads(record["inference"])["tile"] == 64
    assert set(json.loads(record["smoothing"])) == {"water"}


def test_a_model_file_s_digest_is_recorded_under_its_source(plan: RunPlan) -> None:
    record = _record(plan, model_sha256={"ndwi:0.3": "cd" * 32})
    (model,) = json.loads(record["models"])
    assert model["sha256"] == "cd" * 32


def test_a_relative_scene_path_is_recorded_absolute(
    plan: RunPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Path(plan.scene.path).parent
    monkeypatch.chdir(folder)
    relative = replace(plan, scene=replace(plan.scene, path=Path(plan.scene.path).name))
    record = _record(relative)
    assert Path(record["input_path"]).is_absolute()
    assert Path(record["input_path"]).resolve() == Path(plan.scene.path).resolve()


def test_a_remote_scene_path_is_recorded_as_given(plan: RunPlan) -> None:
    url = "/vsicurl/https://example.com/scenes/s2.tif"
    remote = replace(plan, scene=replace(plan.scene, path=url))
    record = _record(remote, scene_sha256=None)
    assert record["input_path"] == url and record["input_sha256"] == ""


def test_a_scene_without_a_crs_and_an_unset_target_crs_are_empty(plan: RunPlan) -> None:
    bare = replace(plan, scene=replace(plan.scene, crs=None))
    record = run_provenance(
        bare,
        replace(CONFIG, dst_crs=None),
        scene_sha256=None,
        model_sha256={},
        started=STARTED,
        seconds=0.0,
    )
    assert record["input_crs"] == "" and record["dst_crs"] == ""


def test_area_and_tolerance_options_are_recorded_exactly(plan: RunPlan) -> None:
    config = replace(CONFIG, min_area_m2=1_234_567.0, simplify_m=12.3456789)
    record = run_provenance(
        replace(plan, min_area_m2=config.min_area_m2),
        config,
        scene_sha256=None,
        model_sha256={},
        started=STARTED,
        seconds=0.0,
    )
    assert float(record["min_area_m2"]) == 1_234_567.0
    assert float(record["simplify_m"]) == 12.3456789
