"""Chip sampling, validation splits, normalisation statistics and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_scene_info, write_array
from geoseg.training.chips import (
    Augment,
    ChipLoader,
    ChipSampler,
    TrainArea,
    TrainScene,
    ValidationSplit,
    allowed_origins,
    augment,
    chip_allowed,
    normalise,
    plan_split,
    scan_scene,
)
from geoseg.training.labels import IGNORE_INDEX, ClassMap, LabelReader, LabelSource
from tests.training.conftest import CLASSES, TRANSFORM, UTM


def _win(r: int, c: int, h: int, w: int) -> PixelWindow:
    return PixelWindow(row_off=r, col_off=c, height=h, width=w)


@st.composite
def areas_with_regions(draw, max_size: int = 300):
    chip = draw(st.sampled_from([8, 16, 32]))
    h = draw(st.integers(4, max_size))
    w = draw(st.integers(4, max_size))
    rh, rw = draw(st.integers(1, h)), draw(st.integers(1, w))
    r, c = draw(st.integers(0, h - rh)), draw(st.integers(0, w - rw))
    gap = draw(st.integers(0, chip))
    area = TrainArea(index=0, height=h, width=w, exclude=_win(r, c, rh, rw), gap=gap)
    return area, chip


@settings(max_examples=150, deadline=None)
@given(areas_with_regions(max_size=90))
def test_allowed_origin_ranges_are_exactly_the_chips_clear_of_the_held_out_zone(case):
    area, chip = case
    boxes = allowed_origins(area, chip=chip)
    from_boxes = [(r, c) for r0, r1, c0, c1 in boxes for r in range(r0, r1) for c in range(c0, c1)]
    assert len(from_boxes) == len(set(from_boxes))  # disjoint
    brute = {
        (r, c)
        for r in range(max(0, area.height - chip) + 1)
        for c in range(max(0, area.width - chip) + 1)
        if chip_allowed(area, _win(r, c, chip, chip))
    }
    assert set(from_boxes) == brute


@settings(max_examples=100, deadline=None)
@given(areas_with_regions(), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_sampled_chips_never_touch_the_held_out_region_or_its_gap(case, seed, balance):
    area, chip = case
    if not allowed_origins(area, chip=chip):
        with pytest.raises(ConfigError, match=r"no .* chip fits"):
            ChipSampler([area], chip=chip)
        return
    # Class counts everywhere, including inside the held-out zone: the sampler must
    # still keep balanced draws out of it.
    from geoseg.training.chips import SceneScan

    cell = 8
    cells = np.ones((-(-area.height // cell), -(-area.width // cell), 2), dtype=np.int32)
    scan = SceneScan(cells=cells, cell=cell, class_pixels=cells.sum(axis=(0, 1)))
    sampler = ChipSampler([area], chip=chip, scans=[scan], balance=balance)
    rng = np.random.default_rng(seed)
    e, g = area.exclude, area.gap
    assert e is not None
    for _ in range(30):
        w = sampler.sample(rng).window
        assert w.height == w.width == chip
        assert 0 <= w.row_off <= max(0, area.height - chip)
        assert 0 <= w.col_off <= max(0, area.width - chip)
        clear = (
            w.row_end <= e.row_off - g
            or w.row_off >= e.row_end + g
            or w.col_end <= e.col_off - g
            or w.col_off >= e.col_end + g
        )
        assert clear, (w, e, g)


def test_plan_split_defaults():
    one = plan_split(ValidationSplit(), [(100, 80)], chip=16)
    assert one.validation == ((0, _win(80, 0, 20, 80)),)  # bottom 20 % of the only input
    assert one.train[0].exclude == _win(80, 0, 20, 80) and one.train[0].gap == 16
    three = plan_split(ValidationSplit(), [(50, 50)] * 3, chip=16)
    assert [a.index for a in three.train] == [0, 1]
    assert three.validation == ((2, _win(0, 0, 50, 50)),)
    region = plan_split(
        ValidationSplit(kind="region", image=1, region=_win(0, 0, 10, 10), gap=4),
        [(50, 50), (60, 60)],
        chip=16,
    )
    assert [(a.index, a.exclude, a.gap) for a in region.train] == [
        (0, None, 0),
        (1, _win(0, 0, 10, 10), 4),
    ]
    assert plan_split(ValidationSplit(kind="none"), [(50, 50)], chip=16).validation == ()


@pytest.mark.parametrize(
    ("split", "fragment"),
    [
        (ValidationSplit(kind="tile", tiles=(0,)), "all 1 inputs are held out"),
        (ValidationSplit(kind="tile", tiles=(5,)), "input 5 does not exist"),
        (ValidationSplit(kind="region", region=_win(40, 40, 20, 20)), "does not lie inside"),
    ],
)
def test_plan_split_errors(split, fragment):
    with pytest.raises(ConfigError, match=fragment):
        plan_split(split, [(50, 50)], chip=16)


def _reader(scene, class_map=None):
    info = read_scene_info(scene.image)
    labels = LabelReader(
        LabelSource(path=str(scene.labels)),
        image=info,
        class_map=class_map or ClassMap(classes=CLASSES),
    )
    return info, labels


def test_band_statistics_skip_nodata_and_the_held_out_region(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.normal(1000, 50, size=(2, 70, 90)).astype(np.float32)
    image[:, :7] = -9999  # nodata rows
    image[1, 30:35, :] = np.nan  # NaN in one band makes the pixel invalid in all bands
    path = tmp_path / "img.tif"
    write_array(path, image, crs=UTM, transform=TRANSFORM, nodata=-9999)
    labels = tmp_path / "lab.tif"
    write_array(labels, np.zeros((70, 90), dtype=np.uint8), crs=UTM, transform=TRANSFORM)
    info = read_scene_info(path)
    reader = LabelReader(
        LabelSource(path=str(labels)), image=info, class_map=ClassMap(classes=CLASSES)
    )
    held = _win(50, 0, 20, 90)
    area = TrainArea(index=0, height=70, width=90, exclude=held, gap=5)
    # Blocks of 16 x 16: statistics are merged over many windows.
    scan = scan_scene(
        str(path),
        bands=(1, 2),
        labels=reader,
        n_classes=2,
        cell=8,
        window=info.window,
        area=area,
        block=16,
    )
    keep = np.ones((70, 90), dtype=bool)
    keep[:7] = keep[30:35] = keep[50:] = False
    expected = image[:, keep].astype(np.float64)
    assert scan.stats is not None and scan.stats.count == keep.sum()
    np.testing.assert_allclose(scan.stats.mean, expected.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(scan.stats.std, expected.std(axis=1), rtol=1e-8)
    # Class counts: labelled, valid pixels outside the held-out region and its gap.
    counted = keep.copy()
    counted[45:] = False
    assert scan.class_pixels.tolist() == [counted.sum(), 0]


def test_balanced_sampling_oversamples_a_rare_class(tmp_path):
    size = 256
    image = np.full((3, size, size), 50, dtype=np.uint8)
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[200:210, 30:40] = 1  # 0.15 % of the pixels
    write_array(tmp_path / "i.tif", image, crs=UTM, transform=TRANSFORM)
    write_array(tmp_path / "l.tif", labels, crs=UTM, transform=TRANSFORM)
    info = read_scene_info(tmp_path / "i.tif")
    reader = LabelReader(
        LabelSource(path=str(tmp_path / "l.tif")), image=info, class_map=ClassMap(classes=CLASSES)
    )
    area = TrainArea(index=0, height=size, width=size)
    scan = scan_scene(
        str(tmp_path / "i.tif"),
        bands=(1, 2, 3),
        labels=reader,
        n_classes=2,
        cell=8,
        window=info.window,
        area=area,
        stats=False,
    )
    rng = np.random.default_rng(0)

    def hit_rate(balance: float) -> float:
        sampler = ChipSampler([area], chip=32, scans=[scan], balance=balance)
        hits = 0
        for _ in range(400):
            w = sampler.sample(rng).window
            hits += labels[w.row_off : w.row_end, w.col_off : w.col_end].any()
        return hits / 400

    assert hit_rate(0.0) < 0.1
    assert hit_rate(1.0) > 0.9


def test_loader_masks_nodata_and_normalises_like_inference(square_scene):
    scene = square_scene("a", size=64, nodata_rows=8)
    _, labels = _reader(scene)
    area = TrainArea(index=0, height=64, width=64)
    loader = ChipLoader(
        [TrainScene(path=str(scene.image), bands=(1, 2, 3), labels=labels)],
        ChipSampler([area], chip=32),
        mean=(60, 60, 60),
        std=(10, 20, 40),
    )
    from geoseg.training.chips import Chip

    x, y, valid = loader.read(Chip(image=0, window=_win(0, 0, 32, 32)))
    assert np.all(y[:8] == IGNORE_INDEX) and np.all(x[:, :8] == 0) and not valid[:8].any()
    from geoseg.models.predictor import TorchSegmenter

    raw = np.stack([np.full((4, 4), 80.0)] * 3)
    np.testing.assert_allclose(
        normalise(raw, np.ones((4, 4), dtype=bool), mean=(60, 60, 60), std=(10, 20, 40))[:, 0, 0],
        [2.0, 1.0, 0.5],
    )
    assert TorchSegmenter.normalise.__doc__ and "nodata" in TorchSegmenter.normalise.__doc__
    xb, yb = loader.batch(np.random.default_rng(0), 3)
    assert xb.shape == (3, 3, 32, 32) and xb.dtype == np.float32
    assert yb.shape == (3, 32, 32) and yb.dtype == np.int64


def test_augmentations_keep_image_and_labels_aligned_and_nodata_at_zero():
    rng = np.random.default_rng(5)
    y = (rng.random((16, 16)) > 0.5).astype(np.uint8)
    x = np.stack([y * 2.0 - 1.0, y * 3.0]).astype(np.float32)  # image is a function of labels
    valid = np.ones((16, 16), dtype=bool)
    valid[:3] = False
    x[:, ~valid] = 0.0
    y[~valid] = IGNORE_INDEX
    seen = set()
    for _ in range(40):
        xa, ya = augment(x, y, rng, Augment(brightness=0.3, contrast=0.3), valid=valid)
        labelled = ya != IGNORE_INDEX
        # Within one chip, jitter is a single affine map: classes stay separable.
        assert np.unique(xa[0][labelled & (ya == 1)]).size == 1
        assert np.unique(xa[0][labelled & (ya == 0)]).size == 1
        assert np.all(xa[:, ~labelled] == 0)
        seen.add(ya.tobytes())
    assert len(seen) >= 6  # the 8 flips/rotations of the square actually occur


def test_rescaling_shows_the_ground_at_another_pixel_size():
    from geoseg.training.chips import rescale

    # A 64 px chip holding a square of 16 px at rows/cols 24..39, labelled 1.
    y = np.zeros((64, 64), dtype=np.uint8)
    y[24:40, 24:40] = 1
    x = np.stack([y * 4.0 - 2.0] * 3).astype(np.float32)
    valid = np.ones((64, 64), dtype=bool)
    # Pixels twice as large (2 m from 1 m): the square is 8 px in a 32 px chip.
    xs, ys, vs = rescale(x, y, valid, size=32)
    assert xs.shape == (3, 32, 32) and ys.shape == vs.shape == (32, 32)
    assert ys.sum() == 64 and np.array_equal(np.argwhere(ys)[[0, -1]], [[12, 12], [19, 19]])
    # The image is averaged, not sampled: inside values stay, the edges blend.
    assert xs[0, 15, 15] == pytest.approx(2.0, abs=0.05) and xs[0, 2, 2] == pytest.approx(-2.0)
    assert -2.0 < xs[0, 12, 15] < 2.0
    # Half-size pixels (0.5 m): the square is 32 px in a 128 px chip.
    xl, yl, _ = rescale(x, y, valid, size=128)
    assert yl.sum() == 32 * 32 and np.array_equal(np.argwhere(yl)[[0, -1]], [[48, 48], [79, 79]])
    np.testing.assert_allclose(xl[0, 52:76, 52:76], 2.0)  # bilinear: flat inside
    assert xl.min() >= -2.0 and xl.max() <= 2.0  # and never beyond the values it blends


def test_scale_augmentation_reads_a_larger_or_smaller_window_around_the_chip(square_scene):
    from geoseg.training.chips import Chip, scaled_window

    chip = Chip(image=0, window=_win(32, 32, 64, 64))
    assert scaled_window(chip, 2.0).window == _win(0, 0, 128, 128)
    assert scaled_window(chip, 0.5).window == _win(48, 48, 32, 32)
    spec = Augment(scale=(0.5, 2.0))
    rng = np.random.default_rng(0)
    factors = [spec.draw_scale(rng) for _ in range(2000)]
    assert 0.5 <= min(factors) < 0.55 and 1.9 < max(factors) <= 2.0
    assert np.mean(np.array(factors) < 1) == pytest.approx(0.5, abs=0.05)  # log-uniform
    half = Augment(scale=(0.5, 2.0), scale_prob=0.5)
    assert np.mean([half.draw_scale(rng) == 1.0 for _ in range(2000)]) == pytest.approx(
        0.5, abs=0.05
    )
    assert Augment().draw_scale(rng) == 1.0
    for bad in ((2.0, 0.5), (0.1, 2.0), (1.0,)):
        with pytest.raises(ConfigError, match="scale"):
            Augment(scale=bad)

    # The loader's rescaled chips keep the chip size, and the labels stay on the image.
    scene = square_scene("a", size=96)
    _, labels = _reader(scene)
    loader = ChipLoader(
        [TrainScene(path=str(scene.image), bands=(1, 2, 3), labels=labels)],
        ChipSampler([TrainArea(index=0, height=96, width=96)], chip=32),
        mean=(60, 60, 60),
        std=(10, 10, 10),
        augment_spec=Augment(
            flips=False, rotate90=False, brightness=0, contrast=0, scale=(0.5, 2.0)
        ),
    )
    xb, yb = loader.batch(np.random.default_rng(1), 8)
    assert xb.shape == (8, 3, 32, 32) and yb.shape == (8, 32, 32)
    labelled = yb != IGNORE_INDEX
    # Squares are bright (+110 over a dark ground): labels and pixels stay aligned.
    assert xb[:, 0][labelled & (yb == 1)].mean() > 3 > xb[:, 0][labelled & (yb == 0)].mean()
