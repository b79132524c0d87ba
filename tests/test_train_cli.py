"""`geoseg train` and `geoseg evaluate` from the command line, on real small files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from geoseg.cli import main
from geoseg.models.card import read_card
from geoseg.tiling.io import write_array
from tests.helpers import UTM_TRANSFORM, synthetic_image, synthetic_truth


def test_train_then_evaluate(tmp_path: Path) -> None:
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
    }
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(cfg), "--steps", "6"])
    assert result.exit_code == 0, result.output
    model = tmp_path / "water.safetensors"
    card = read_card(model)
    assert card.name == "cli-water" and card.class_names == ("background", "water")
    assert card.training["steps"] == 6 and "validation" in json.dumps(card.training)
    assert (tmp_path / "water.safetensors.ckpt").is_dir(), "checkpoints beside the output"

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
    assert body["labelled_pixels"] == 160 * 160


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
