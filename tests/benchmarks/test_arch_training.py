"""benchmarks/arch_training.py: a CPU budget turned into steps, and one tiny real run."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from geoseg.tiling.io import write_array
from tests.training.conftest import TRANSFORM, UTM

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("arch_training")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize(
    ("step_s", "budget_s", "epochs", "per_epoch", "every"),
    [
        (2.0, 240.0, 6, 20, 2),  # 120 steps: six epochs of 20, validated after 2, 4, 6
        (14.63, 240.0, 6, 3, 2),  # 16.4 steps: six epochs of 3 (18, the nearest whole epochs)
        (0.52, 240.0, 6, 77, 2),  # 461.5 steps
        (100.0, 240.0, 2, 1, 1),  # 2.4 steps: two epochs of one
        (1000.0, 240.0, 1, 1, 1),  # less than a step: one
    ],
)
def test_budget_becomes_whole_epochs(
    bench: ModuleType, step_s: float, budget_s: float, epochs: int, per_epoch: int, every: int
) -> None:
    plan = bench.plan_steps(step_s, budget_s)
    assert (plan.epochs, plan.steps_per_epoch, plan.validate_every) == (epochs, per_epoch, every)
    assert plan.steps == epochs * per_epoch
    if budget_s / step_s >= 6:
        # Whole epochs of six land within half an epoch of the budget.
        assert abs(plan.steps * step_s - budget_s) <= 0.5 * 6 * step_s


def test_budget_rejects_nonsense_and_caps_smoke_runs(bench: ModuleType) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        bench.plan_steps(0.0, 240.0)
    with pytest.raises(ValueError, match="must be > 0"):
        bench.plan_steps(1.0, -1.0)
    assert bench.plan_steps(1.0, 240.0, max_steps=2).steps == 2
    # The same budget buys a cheaper network more steps.
    assert bench.plan_steps(0.5, 240.0).steps > bench.plan_steps(2.0, 240.0).steps


def test_every_network_is_measured_by_the_architectures_benchmark(bench: ModuleType) -> None:
    import architectures  # benchmarks/architectures.py, on the path through `bench`

    from geoseg.models.registry import ARCHITECTURES

    for name, (arch, _, _) in bench.ARCHITECTURES.items():
        assert arch in ARCHITECTURES
        assert name in architectures.ARCHITECTURES


def _scene(folder: Path, name: str, seed: int) -> tuple[str, str]:
    """A 320 px RGB scene with bright bands (roads) and its label raster."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((320, 320), dtype=np.uint8)
    for r in rng.integers(10, 300, size=4):
        truth[r : r + 6] = 1
    image = np.clip(rng.normal(70, 10, (3, 320, 320)) + 100 * truth, 1, 255).astype(np.uint8)
    write_array(folder / f"{name}.tif", image, crs=UTM, transform=TRANSFORM, nodata=0)
    write_array(folder / f"{name}_lab.tif", truth, crs=UTM, transform=TRANSFORM, nodata=255)
    return f"{name}.tif", f"{name}_lab.tif"


def test_one_step_run_trains_and_scores_the_test_data(bench: ModuleType, tmp_path: Path) -> None:
    pairs = [_scene(tmp_path, f"s{i}", i) for i in range(3)]
    recipe = tmp_path / "roads-tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "inputs": [{"image": i, "labels": lab} for i, lab in pairs[:2]],
                "validation": {"kind": "tile", "tiles": [1]},
                "test": [{"image": pairs[2][0], "labels": pairs[2][1]}],
                "class_map": {
                    "classes": [
                        {"name": "background", "color": "#000000"},
                        {"name": "roads", "color": "#e31a1c"},
                    ],
                    "values": {0: "background", 1: "roads"},
                },
                "bands": ["red", "green", "blue"],
                "band_numbers": [1, 2, 3],
                "tile_size": 256,
                "overlap": 32,
                "loss": "focal+dice",
                "threshold_class": "roads",  # dropped by the shared recipe
                "augment": {"scale": [0.5, 2.0]},  # likewise
                "scores": {"relaxed_px": 3},
            }
        )
    )
    out = tmp_path / "out"
    plan = bench.plan_steps(0.5, 240.0, max_steps=1)
    config = bench.build_config(recipe, "PSPNet R34", plan, out)
    # The shared recipe replaced the file's where it differs between networks.
    assert (config.architecture, config.encoder, config.chip_size) == ("pspnet", "resnet34", 256)
    assert config.threshold_class is None and config.augment.scale is None
    assert config.threads == 1 and config.keep == "best" and config.steps_per_epoch == 1

    assert bench.step_cpu_seconds(config, warmup=0, steps=1) > 0
    record = bench.train_and_score(config)
    assert record["steps"] == 1 and record["train_cpu_s"] > 0
    assert Path(record["model"]).is_file() and Path(record["model"]).parent == out
    iou, f1 = bench.headline("roads", record["test"])
    assert 0 <= iou <= 1 and 0 <= f1 <= 1
    assert record["test"]["relaxed"]["roads"]["slack_px"] == 3
