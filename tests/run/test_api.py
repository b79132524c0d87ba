"""The one-call Python API: geoseg.run and geoseg.load_model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest

import geoseg
from geoseg.errors import ConfigError, GeosegError, OutputExistsError


def test_run_writes_the_outputs_and_says_what_it_wrote(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    scene, _ = make_scene(200, 220, seed=2)
    seen: list[tuple[int, int]] = []
    result = geoseg.run(
        scene,
        classes=["water", "roads"],
        models=[tiny_model],
        output=tmp_path / "out.gpkg",
        scheduler="sync",
        progress=lambda done, total: seen.append((done, total)),
        block=128,
        precision="fp32",
    )
    assert result.gpkg == tmp_path / "out.gpkg" and result.raster is not None
    assert result.polygons["water"] == len(pyogrio.read_dataframe(result.gpkg, layer="water"))
    assert result.polygons["water"] > 0 and "roads_centerlines" in result.lines
    assert seen[-1][0] == seen[-1][1] > 1  # every block reported
    assert result.report["outputs"]["gpkg"] == str(result.gpkg)
    assert set(result.timings) >= {"read", "predict"}


def test_same_validation_and_errors_as_the_cli(tiny_model: Path, make_scene, tmp_path) -> None:
    scene, _ = make_scene(64, 64)
    with pytest.raises(ConfigError, match="unknown option 'blok'; valid options: models, "):
        geoseg.run(scene, classes="water", blok=512)
    with pytest.raises(ConfigError, match="listed twice"):
        geoseg.run(scene, classes="water,water", scheduler="sync")
    (tmp_path / "o.gpkg").write_bytes(b"")
    with pytest.raises(OutputExistsError):
        geoseg.run(scene, classes="water", models=[tiny_model], output=tmp_path / "o.gpkg",
                   scheduler="sync")  # fmt: skip
    assert issubclass(ConfigError, GeosegError)


def test_an_existing_dask_client_runs_the_blocks(tiny_model: Path, make_scene, tmp_path) -> None:
    from distributed import Client, LocalCluster

    scene, _ = make_scene(160, 160, seed=7)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        result = geoseg.run(scene, classes="water", models=[tiny_model], client=client,
                            output=tmp_path / "c.gpkg", precision="fp32", block=128)  # fmt: skip
        assert client.status == "running"  # the caller's client is left open
    assert result.report["cluster"] == "the caller's Dask client"
    assert result.polygons["water"] > 0


def test_load_model_predicts_on_raw_pixels(tiny_model: Path) -> None:
    model = geoseg.load_model(tiny_model, precision="fp32")
    image = np.random.default_rng(0).uniform(0, 3000, (4, 96, 96)).astype(np.float32)
    probs = model.predict(image, np.ones((96, 96), dtype=bool))
    assert probs.shape == (len(model.card.classes), 96, 96)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-4)
    assert geoseg.load_model("ndwi:0.1").card.class_names == ("background", "water")
