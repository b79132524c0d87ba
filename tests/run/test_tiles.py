"""Tiles shared between neighbouring blocks: each predicted once, by the block that owns it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from distributed import Client, LocalCluster

import geoseg.run.task
from geoseg.config import InferenceOptions, RunConfig
from geoseg.models.predictor import TorchSegmenter
from geoseg.run.pipeline import plan_run, run_scene
from geoseg.run.task import process_block
from geoseg.run.tiles import (
    BlockTiles,
    needed_window,
    owned_tiles,
    predict_owned_tiles,
    select_tiles,
    tile_grid,
    tile_owners,
    tile_sources,
)
from geoseg.tiling.grid import PixelWindow

FP32 = InferenceOptions(precision="fp32")
FIVE_M = Affine(5.0, 0.0, 500000.0, 0.0, -5.0, 4000000.0)


@pytest.mark.parametrize("pixel", ["scene", "model"])
@pytest.mark.parametrize("block", [128, 256, 512])
def test_every_tile_is_owned_by_the_first_block_that_needs_it(
    tiny_model: Path, make_scene, pixel: str, block: int
) -> None:
    kw = {"transform": FIVE_M} if pixel == "model" else {}
    scene, _ = make_scene(700, 600, seed=1, **kw)
    plan = plan_run(scene, RunConfig(classes=("water",), models=(str(tiny_model),), block=block))
    (use,) = plan.models
    assert (use.grid is not None) == (pixel == "model")
    grid = tile_grid(use, plan)
    everything = grid.covering(
        PixelWindow(row_off=0, col_off=0, height=grid.height, width=grid.width)
    )
    owners = tile_owners(plan)
    owned = {index: per_model[0] for index, per_model in owned_tiles(owners).items()}
    flat = [o for tiles in owned.values() for o in tiles]
    assert sorted(flat) == sorted(everything), "every tile is owned by exactly one block"
    needs = {b.index: set(grid.covering(needed_window(use, plan, b))) for b in plan.blocks}  # type: ignore[arg-type]
    for origin in everything:
        first = min(i for i, tiles in needs.items() if origin in tiles)
        assert owners[0][origin] == first, f"tile {origin}: not owned by the first block needing it"
    for b in plan.blocks:
        sources = tile_sources(plan, b)
        assert sources == tile_sources(plan, b, owners)
        assert max(sources) <= b.index, "a block blends only its own and earlier blocks' tiles"
        for owner, per_model in sources.items():
            assert set(per_model[0]) <= set(owned[owner]), "a block's tiles from their owner"
        wanted = sorted(o for per_model in sources.values() for o in per_model[0])
        assert wanted == sorted(needs[b.index]), f"block {b.index}: not the tiles it needs"


def test_each_tile_is_predicted_once(
    tiny_model: Path, make_scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene, _ = make_scene(600, 700, seed=2)
    config = RunConfig(
        classes=("water", "roads"), models=(str(tiny_model),), block=128, inference=FP32
    )
    plan = plan_run(scene, config)
    (use,) = plan.models
    grid = tile_grid(use, plan)
    scene_tiles = len(grid.covering(PixelWindow(row_off=0, col_off=0, height=600, width=700)))
    per_block = sum(len(grid.covering(needed_window(use, plan, b))) for b in plan.blocks)  # type: ignore[arg-type]
    assert per_block > 2 * scene_tiles, "blocks this small need many of the same tiles"
    predicted: list[tuple[int, int]] = []
    real = TorchSegmenter.tile_probabilities

    def counting(self, image, valid, *, origins):  # type: ignore[no-untyped-def]
        for origin, probs in real(self, image, valid, origins=origins):
            predicted.append(origin)
            yield origin, probs

    monkeypatch.setattr(TorchSegmenter, "tile_probabilities", counting)
    run_scene(scene, tmp_path / "o.gpkg", config)
    assert len(predicted) == scene_tiles


@pytest.mark.parametrize("pixel", ["scene", "model"])
def test_a_block_blends_the_tiles_its_neighbours_send_without_loading_the_model(
    tiny_model: Path, make_scene, pixel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a cluster does: each owner's prediction cut to the tiles one block needs
    (:func:`select_tiles`) gives that block the probabilities of a block predicting its
    owners' tiles itself, and the block reports the owners' device and precision without
    loading the model."""
    kw = {"transform": FIVE_M} if pixel == "model" else {}
    scene, _ = make_scene(500, 450, seed=4, **kw)
    config = RunConfig(
        classes=("water", "roads"),
        models=(str(tiny_model),),
        block=128,
        inference=FP32,
        probabilities=True,
    )
    plan = plan_run(scene, config)
    by_index = {b.index: b for b in plan.blocks}
    picked = plan.blocks[:: max(1, len(plan.blocks) // 4)]
    alone = {b.index: process_block(plan, b) for b in picked}
    owners = {}

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a block blending shared tiles loaded the model")

    monkeypatch.setattr(geoseg.run.task, "segmenter_for", no_model)
    for block in picked:
        sources = []
        for i, wanted in tile_sources(plan, block).items():
            owners.setdefault(i, predict_owned_tiles(plan, by_index[i]))
            sources.append(select_tiles(owners[i], wanted))
        shared = process_block(plan, block, sources=sources)
        assert (shared.device, shared.precision) == ("cpu", "fp32")
        assert np.array_equal(shared.classes, alone[block.index].classes)
        assert shared.probabilities is not None
        assert np.array_equal(shared.probabilities, alone[block.index].probabilities)
        assert (shared.classes != 255).any()


def _tile_bytes(worker_data: object) -> tuple[int, int]:
    """``(tiles, bytes)`` of the distinct tile arrays a worker holds in its results."""
    arrays = {}
    for value in list(worker_data.values()):  # type: ignore[attr-defined]
        if isinstance(value, BlockTiles):
            for per_model in value.tiles.values():
                for probs in per_model.values():
                    if probs is not None:
                        arrays[id(probs)] = probs
    return len(arrays), sum(a.nbytes for a in arrays.values())


def test_a_cluster_run_holds_at_most_the_tiles_one_row_of_blocks_needs(
    tiny_model: Path, make_scene, tmp_path: Path
) -> None:
    """An owner's tiles are cut at once into the selections of the blocks that blend them:
    a tile stays only while a block still to do holds it, and every tile goes at the end.
    Owned by the block whose core held their centres, and kept whole until every block that
    blended them was done, tiles of 2-3 rows of blocks were held here: 129 tiles at most
    against the 84 that one row of blocks needs (64 now)."""
    scene, _ = make_scene(1600, 1100, seed=2)
    config = RunConfig(classes=("water",), models=(str(tiny_model),), block=384, inference=FP32)
    plan = plan_run(scene, config)
    (use,) = plan.models
    columns = max(b.col for b in plan.blocks) + 1
    assert len(plan.blocks) >= 4 * columns, "enough rows of blocks to release some"
    grid = tile_grid(use, plan)
    windows = [needed_window(use, plan, b) for b in plan.blocks if b.row == 1]
    row = {o for w in windows if w is not None for o in grid.covering(w)}
    reference = run_scene(scene, tmp_path / "ref.gpkg", config)
    held: list[int] = []
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        (worker,) = cluster.workers.values()
        summary = run_scene(
            scene,
            tmp_path / "o.gpkg",
            config,
            client=client,
            max_in_flight=2,
            progress=lambda done, total: held.append(_tile_bytes(worker.data)[0]),
        )
        deadline = time.monotonic() + 10
        while _tile_bytes(worker.data)[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _tile_bytes(worker.data) == (0, 0), "every tile is released by the end"
    assert 0 < max(held) <= len(row), f"more than one row of blocks needs ({len(row)}): {held}"
    with rasterio.open(summary.raster) as a, rasterio.open(reference.raster) as b:
        assert np.array_equal(a.read(), b.read()), "the cluster run equals the in-process one"
