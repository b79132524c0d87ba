"""`geoseg train` and `geoseg evaluate` from the command line, on real small files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.models.card import read_card
from geoseg.tiling.io import write_array
from tests.helpers import UTM_TRANSFORM, synthetic_image, synthetic_truth


def _training_files(tmp_path: Path, **overrides: object) -> Path:
    """Two small water scenes and a training YAML (``overrides`` update it)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        truth = synthetic_truth(160, 160, seed=20 + i)
        truth[truth == 2] = 0  # water only
        write_array(
            data / f"img{i}.tif",
            synthetic_image(truth, seed=20 + i),
            crs="EPSG:32617",
            transform=UTM_TRANSFORM,
        )
        write_array(
            data / f"lab{i}.tif", truth, crs="EPSG:32617", transform=UTM_TRANSFORM, nodata=255
        )
    config = {
        "name": "cli-water",
        "inputs": [{"image": f"data/img{i}.tif", "labels": f"data/lab{i}.tif"} for i in range(2)],
        "class_map": {
            "classes": [
                {"name": "background", "color": "#000000"},
                {"name": "water", "color": "#1f78b4"},
            ]
        },
        "bands": ["blue", "green", "red", "nir"],
        "architecture": "unet",
        "encoder": "mobilenet_v2",
        "params": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        "chip_size": 64,
        "batch_size": 4,
        "epochs": 1,
        "steps_per_epoch": 4,
        "tile_size": 64,
        "overlap": 16,
        "validation": {"kind": "tile"},
        "output": "water.safetensors",
        **overrides,
    }
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def _epoch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("geoseg: epoch ")]


def test_train_then_evaluate(tmp_path: Path) -> None:
    cfg = _training_files(tmp_path, epochs=2)
    data = tmp_path / "data"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(cfg), "--steps", "3"])
    assert result.exit_code == 0, result.output
    model = tmp_path / "water.safetensors"
    card = read_card(model)
    assert card.name == "cli-water" and card.class_names == ("background", "water")
    assert card.training["steps"] == 6 and "validation" in json.dumps(card.training)
    assert (tmp_path / "water.safetensors.ckpt").is_dir(), "checkpoints beside the output"

    # Every epoch shows, and the card keeps, the per-class IoU and F1 of its validation.
    history = card.training["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    lines = _epoch_lines(result.output)
    assert len(lines) == 2
    for line, h in zip(lines, history, strict=True):
        water = h["classes"]["water"]
        assert set(h["classes"]) == {"background", "water"}
        assert 0.0 <= water["iou"] <= water["f1"] <= 1.0
        assert f"water IoU {water['iou']:.3f} F1 {water['f1']:.3f}" in line, line
        assert f"val mIoU {h['score']:.3f}" in line
    best = card.training["validation"]["classes"]["water"]
    kept = history[card.training["best_epoch"] - 1]["classes"]["water"]
    assert kept["iou"] == best["iou"] and kept["f1"] == best["f1"]
    assert f"best epoch {card.training['best_epoch']}, score " in result.output

    # The card records the command that made it, and the held-out tile scored through the
    # whole geoseg run pipeline, without smoothing and with the default recipes.
    assert card.training["reproducibility"]["command"] == f"geoseg train {cfg} --steps 3"
    evaluation = card.training["evaluation"]
    assert evaluation["held_out"] == [str(data / "img1.tif")] and evaluation["region"] is None
    for key, smooth in (("none", "none"), ("default", "default recipes")):
        (scores,) = evaluation[key]
        assert scores["smooth"] == smooth and scores["labelled_pixels"] == 160 * 160
        assert 0.0 <= scores["classes"]["water"]["iou"] <= 1.0
    assert "geoseg: scoring the held-out data through the pipeline" in result.output

    again = runner.invoke(main, ["train", str(cfg)])
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.output

    result = runner.invoke(
        main,
        [
            "evaluate",
            str(model),
            str(data / "img1.tif"),
            str(data / "lab1.tif"),
            "--json",
            "--smooth",
            "none",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    water = (
        body["metrics"]["classes"]["water"]
        if "classes" in body["metrics"]
        else body["metrics"]["water"]
    )
    assert water["support"] > 0 and 0.0 <= water["iou"] <= 1.0
    assert body["labelled_pixels"] == body["region_pixels"] == 160 * 160


def test_train_compares_the_model_with_index_thresholds_chosen_on_the_training_tile(
    tmp_path: Path,
) -> None:
    cfg = _training_files(tmp_path, compare=["ndwi"])
    result = CliRunner().invoke(main, ["train", str(cfg), "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    comparison = read_card(tmp_path / "water.safetensors").training["comparison"]
    results = comparison["results"]
    (fixed,) = [k for k in results if k.startswith("ndwi:") and k != "ndwi:otsu"]
    assert set(results) == {"water.safetensors", "ndwi:otsu", fixed}
    assert results[fixed]["threshold_chosen_on"].startswith("training area")
    # NDWI separates the synthetic water (dark in nir) on the training tile too.
    assert results[fixed]["training_area_iou"] > 0.9
    assert results[fixed]["water"]["none"]["iou"] > 0.9
    assert comparison["best"] in results and comparison["best_without_smoothing"] in results
    assert comparison["water_pixels"] == results["ndwi:otsu"]["water"]["none"]["support"] > 0


def test_train_checks_the_comparison_before_training(tmp_path: Path) -> None:
    cfg = _training_files(tmp_path, compare=["ndwi"], validation={"kind": "none"})
    result = CliRunner().invoke(main, ["train", str(cfg)])
    assert result.exit_code == 1
    assert "compare needs one held-out input or region, the split holds out 0" in result.output
    assert not (tmp_path / "water.safetensors").exists()
    # Without scoring, nothing is compared, and the card has no pipeline scores.
    result = CliRunner().invoke(main, ["train", str(cfg), "--no-evaluate", "--steps", "2"])
    assert result.exit_code == 0, result.output
    training = read_card(tmp_path / "water.safetensors").training
    assert "evaluation" not in training and "comparison" not in training
    assert training["reproducibility"]["command"].endswith("--steps 2 --no-evaluate")


def test_train_without_validation_keeps_the_last_epoch(tmp_path: Path) -> None:
    # A documented option: no held-out data, so no scores and nothing to choose by.
    cfg = _training_files(tmp_path, epochs=2, steps_per_epoch=2, validation={"kind": "none"})
    result = CliRunner().invoke(main, ["train", str(cfg)])
    assert result.exception is None, result.output
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output.lower()
    lines = _epoch_lines(result.output)
    assert len(lines) == 2 and not any("val" in line for line in lines), lines
    assert "(last epoch 2, no validation score," in result.output

    card = read_card(tmp_path / "water.safetensors")
    t = card.training
    assert (t["epochs"], t["best_epoch"], t["validation"]) == (2, 2, None)
    assert [(h["score"], h["classes"]) for h in t["history"]] == [(None, None)] * 2
    assert all(d["use"] == "training" for d in t["data"])


def test_evaluate_spectral_with_a_value_map(tmp_path: Path) -> None:
    truth = synthetic_truth(120, 120, seed=3)
    write_array(
        tmp_path / "img.tif",
        synthetic_image(truth, seed=3),
        crs="EPSG:32617",
        transform=UTM_TRANSFORM,
    )
    labels = (truth == 1).astype("uint8") * 6  # water coded 6, like the NC strata map
    write_array(tmp_path / "lab.tif", labels, crs="EPSG:32617", transform=UTM_TRANSFORM)
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "ndwi",
            str(tmp_path / "img.tif"),
            str(tmp_path / "lab.tif"),
            "--map",
            "6=water",
            "--bands",
            "2,4",
            "--smooth",
            "none",
        ],
    )
    assert result.exit_code == 0, result.output
    line = next(r for r in result.output.splitlines() if r.startswith("water"))
    iou = float(line.split()[1])
    assert iou > 0.9, "NDWI finds the synthetic water (dark nir)"
    bad = CliRunner().invoke(
        main,
        ["evaluate", "ndwi", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "--map", "6"],
    )
    assert bad.exit_code == 1 and "VALUE=CLASS" in bad.output


def _pixel_box(r0: float, c0: float, r1: float, c1: float):
    """A rectangle between fractional pixel rows/columns of the UTM test grid."""
    from shapely.geometry import box

    t = UTM_TRANSFORM
    return box(t.c + t.a * c0, t.f + t.e * r1, t.c + t.a * c1, t.f + t.e * r0)


def test_evaluate_sparse_polygons_in_another_crs(tmp_path: Path) -> None:
    """Only the pixels inside the polygons are scored, unless the user says otherwise."""
    import geopandas as gpd

    # Water in the left half, land in the right: NDWI gets every pixel right.
    truth = np.zeros((120, 120), dtype=np.uint8)
    truth[:, :60] = 1
    image = tmp_path / "img.tif"
    write_array(image, synthetic_image(truth, seed=5), crs="EPSG:32617", transform=UTM_TRANSFORM)
    # Boxes a quarter pixel off the grid: 20 x 20 pixel centres inside, 21 x 21 touched.
    polygons = {
        "Lake": _pixel_box(10.25, 10.25, 30.25, 30.25),  # on water
        "Field": _pixel_box(40.25, 80.25, 60.25, 100.25),  # on land
        "Marsh": _pixel_box(80.25, 70.25, 100.25, 90.25),  # not in --values: background
    }
    gpkg = tmp_path / "labels.gpkg"
    for layer, names in (("samples", list(polygons)), ("lake_only", ["Lake"])):
        utm = gpd.GeoSeries([polygons[n] for n in names], crs="EPSG:32617").segmentize(10.0)
        gpd.GeoDataFrame({"cover": names}, geometry=utm.to_crs("EPSG:4326")).to_file(
            gpkg, layer=layer, engine="pyogrio"
        )

    base = ["evaluate", "ndwi", str(image), str(gpkg), "--bands", "2,4", "--smooth", "none"]
    base += ["--attribute", "cover"]

    def score(*extra: str) -> dict:
        args = [*base, "--values", "Lake=water,Field=background", *extra]
        result = CliRunner().invoke(main, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    sparse = score("--layer", "samples")
    assert sparse["labels"]["outside"] == "ignore" and sparse["labels"]["layer"] == "samples"
    assert sparse["labelled_pixels"] == 3 * 20 * 20
    water = sparse["metrics"]["classes"]["water"]
    assert (water["support"], water["iou"]) == (400, 1.0)
    assert sparse["metrics"]["classes"]["background"]["support"] == 800

    touched = score("--layer", "samples", "--all-touched")
    assert touched["labels"]["all_touched"] is True
    assert touched["labelled_pixels"] == 3 * 21 * 21

    assert score("--layer", "lake_only")["labelled_pixels"] == 400

    # Wall to wall: all the unlabelled lake pixels count as background NDWI "got wrong".
    wall = score("--layer", "samples", "--outside", "background")
    assert wall["labelled_pixels"] == 120 * 120
    assert wall["metrics"]["classes"]["water"]["iou"] < 0.1

    # The plain table says how much of the scene was scored.
    table = CliRunner().invoke(main, [*base, "--map", "Lake=water"])  # --map: old name
    assert table.exit_code == 0, table.output
    assert "labelled pixels: 1200 of 14400 (8.3 %)" in table.output
    assert "hold layers 'samples', 'lake_only'; reading 'samples'" in table.output

    raster = tmp_path / "lab.tif"
    write_array(raster, truth, crs="EPSG:32617", transform=UTM_TRANSFORM)
    bad = CliRunner().invoke(
        main, ["evaluate", "ndwi", str(image), str(raster), "--outside", "ignore"]
    )
    assert bad.exit_code == 1 and "outside apply to vector labels" in bad.output


def test_train_scores_held_out_and_test_data_and_evaluate_reports_relaxed_and_objects(
    tmp_path: Path,
) -> None:
    import geopandas as gpd
    from rasterio.features import shapes

    data = tmp_path / "data"
    cfg = _training_files(
        tmp_path,
        test=[{"image": "data/test.tif", "labels": "data/test_lab.tif"}],
        scores={"relaxed_px": 3},
        threshold_class="water",
    )
    truth = synthetic_truth(160, 160, seed=40)
    truth[truth == 2] = 0
    write_array(
        data / "test.tif",
        synthetic_image(truth, seed=40),
        crs="EPSG:32617",
        transform=UTM_TRANSFORM,
    )
    write_array(data / "test_lab.tif", truth, crs="EPSG:32617", transform=UTM_TRANSFORM, nodata=255)
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(cfg), "--steps", "3"])
    assert result.exit_code == 0, result.output
    model = tmp_path / "water.safetensors"
    # The water threshold, chosen on the held-out tile, is folded into the last bias.
    threshold = read_card(model).training["threshold"]
    assert threshold["class"] == "water" and 0.05 <= threshold["threshold"] <= 0.95
    assert threshold["iou"] >= threshold["argmax_iou"]
    assert threshold["chosen_on"] == [str(data / "img1.tif")]
    assert "water threshold" in result.output
    # Scoring again does not fold it twice, nor touch the weights.
    from safetensors.torch import load_file

    bias = load_file(str(model))["segmentation_head.0.bias"].clone()
    again = runner.invoke(main, ["train", str(cfg), "--only-evaluate"])
    assert again.exit_code == 0, again.output
    assert "already folded in" in again.output
    assert load_file(str(model))["segmentation_head.0.bias"].equal(bias)
    assert read_card(model).training["threshold"] == threshold
    scores = read_card(model).training["scores"]
    assert scores["relaxed_px"] == 3 and scores["merge"] == {}
    assert scores["test"]["images"] == [str(data / "test.tif")]
    assert "held_out" not in scores  # it chose the epoch: the test data is scored instead
    for kind in ("test",):
        for smooth in ("none", "default"):
            pooled = scores[kind][smooth]["pooled"]
            relaxed, strict = pooled["relaxed"]["water"], pooled["classes"]["water"]
            # Slack only ever helps: relaxed precision and recall bound the strict ones
            # (precision is undefined, None, when a 3-step model predicts no water).
            assert relaxed["recall"] >= strict["recall"]
            assert (relaxed["precision"] is None) == (strict["precision"] is None)
            if strict["precision"] is not None:
                assert relaxed["precision"] >= strict["precision"]
            assert pooled["labelled_pixels"] == 160 * 160

    # Polygon labels: the water bodies of the test scene, scored as objects.
    polys = [
        {"geometry": g, "kind": "water"}
        for g, v in shapes(truth, transform=UTM_TRANSFORM)
        if v == 1
    ]
    from shapely.geometry import shape

    gdf = gpd.GeoDataFrame(
        {"kind": [p["kind"] for p in polys]},
        geometry=[shape(p["geometry"]) for p in polys],
        crs="EPSG:32617",
    )
    gdf.to_file(data / "test_water.gpkg", engine="pyogrio")
    result = runner.invoke(
        main,
        [
            "evaluate",
            str(model),
            str(data / "test.tif"),
            str(data / "test_water.gpkg"),
            "--attribute",
            "kind",
            "--outside",
            "background",
            "--objects",
            "--relaxed",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    objects = body["objects"]["water"]
    assert objects["labelled"] == len(polys) and objects["predicted"] >= 0
    assert 0 <= objects["matched"] <= min(objects["labelled"], objects["predicted"])
    assert body["relaxed"]["water"]["slack_px"] == 3
    text = runner.invoke(
        main,
        [
            "evaluate",
            str(model),
            str(data / "test.tif"),
            str(data / "test_water.gpkg"),
            "--attribute",
            "kind",
            "--outside",
            "background",
            "--objects",
        ],
    )
    assert text.exit_code == 0, text.output
    assert "water          objects (IoU >= 0.5): F1 " in text.output
