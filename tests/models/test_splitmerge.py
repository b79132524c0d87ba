"""Split-and-merge: leaves tile the block, merged regions differ from their neighbours, blocks
anywhere agree with the whole scene bit for bit, nodata gets no class."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from geoseg.errors import ConfigError
from geoseg.models.spectral import SplitMergeSegmenter, splitmerge_card
from geoseg.models.splitmerge import SplitMergeParams, split_merge, splitmerge_halo_px
from geoseg.tiling.grid import TilingSpec, plan_blocks

SMALL = SplitMergeParams(max_region=32, min_region=2, max_variance=0.01)


def _index_scene(
    height: int, width: int, *, seed: int, noise: float = 0.05, nodata: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth water-like blobs in an NDWI-like index plus pixel noise; some nodata."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=(height, width)), 6)
    index = np.clip(field / max(field.std(), 1e-6) * 0.3 + rng.normal(0, noise, field.shape), -1, 1)
    index = index.astype(np.float32)
    valid = np.ones(index.shape, dtype=bool)
    if nodata:
        valid[: height // 5, : width // 4] = False
        index[rng.random(index.shape) < 0.001] = np.nan  # green + nir == 0
    return index, valid


def _read(a: np.ndarray, window: object, fill: object) -> np.ndarray:
    """``a`` over a window that may extend beyond it, ``fill`` outside (as read_window)."""
    r0, c0 = window.row_off, window.col_off  # type: ignore[attr-defined]
    h, w = window.height, window.width  # type: ignore[attr-defined]
    out = np.full((h, w), fill, dtype=a.dtype)
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + h, a.shape[0]), min(c0 + w, a.shape[1])
    out[rs - r0 : re - r0, cs - c0 : ce - c0] = a[rs:re, cs:ce]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_class_rasters_agree_at_block_sizes_256_and_2048(seed: int) -> None:
    # The run's block grid (cores of 258 px, not multiples of the root size, with the halo
    # splitmerge_halo_px asks for) and one big block give the same classes and probabilities
    # as the whole scene.
    card = splitmerge_card("splitmerge:ndwi:0.1")
    halo = splitmerge_halo_px(card)
    assert halo == 255
    seg = SplitMergeSegmenter(card)
    index, valid = _index_scene(700, 600, seed=seed)
    # Two bands whose normalised difference is the index: (1 + x, 1 - x).
    image = np.stack([1.0 + index, 1.0 - index]).astype(np.float32)
    whole = seg.predict(image, valid)
    labels_whole = np.argmax(whole, axis=0)
    for block in (256, 2048):
        spec = TilingSpec(tile=256, overlap=0, block=block, halo=halo)
        blocks = plan_blocks(*index.shape, spec=spec)
        assert (len(blocks) > 1) == (block == 256)
        mosaic = np.full_like(whole, -1.0)
        for b in blocks:
            img = np.stack([_read(band, b.read, np.float32(0)) for band in image])
            ok = _read(valid, b.read, False)
            probs = seg.predict(img, ok, origin=(b.read.row_off, b.read.col_off))
            rows, cols = b.core_in_read
            mosaic[:, b.core.row_off : b.core.row_end, b.core.col_off : b.core.col_end] = probs[
                :, rows, cols
            ]
        np.testing.assert_array_equal(mosaic, whole)
        np.testing.assert_array_equal(np.argmax(mosaic, axis=0), labels_whole)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    row=st.integers(0, 100),
    col=st.integers(0, 100),
    height=st.integers(1, 60),
    width=st.integers(1, 60),
)
def test_a_block_at_any_offset_matches_the_scene(
    seed: int, row: int, col: int, height: int, width: int
) -> None:
    index, valid = _index_scene(160, 160, seed=seed, noise=0.1)
    whole = split_merge(index, valid, threshold=0.05, params=SMALL)
    halo = SMALL.max_region - 1
    height, width = min(height, 160 - row), min(width, 160 - col)
    r0, c0 = row - halo, col - halo  # the read window: core grown by the halo
    h, w = height + 2 * halo, width + 2 * halo
    win = type("W", (), {"row_off": r0, "col_off": c0, "height": h, "width": w})()
    part = split_merge(
        _read(index, win, np.float32(np.nan)),
        _read(valid, win, False),
        threshold=0.05,
        params=SMALL,
        origin=(r0, c0),
    )
    core = (slice(halo, halo + height), slice(halo, halo + width))
    scene = (slice(row, row + height), slice(col, col + width))
    np.testing.assert_array_equal(part.labels[core], whole.labels[scene])
    np.testing.assert_array_equal(part.excess[core], whole.excess[scene])
    # The same leaves: the partitions of the core agree up to the leaves' numbering.
    pairs = np.unique(np.stack([part.leaves[core].ravel(), whole.leaves[scene].ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    origin=st.tuples(st.integers(-40, 40), st.integers(-40, 40)),
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    noise=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_leaves_are_aligned_homogeneous_squares_covering_the_block_once(
    seed: int, origin: tuple[int, int], height: int, width: int, noise: float
) -> None:
    index, valid = _index_scene(height, width, seed=seed, noise=noise, nodata=seed % 2 == 0)
    threshold = 0.05
    result = split_merge(index, valid, threshold=threshold, params=SMALL, origin=origin)
    ok = valid & np.isfinite(index)
    # Every pixel with a valid index is in exactly one leaf; the others in none.
    np.testing.assert_array_equal(result.leaves >= 0, ok)
    rows, cols = np.indices(index.shape)
    rows, cols = rows + origin[0], cols + origin[1]
    for leaf in np.unique(result.leaves[result.leaves >= 0]):
        member = result.leaves == leaf
        r, c = rows[member], cols[member]
        # The smallest scene-aligned power-of-two square holding the leaf's pixels.
        size = SMALL.min_region
        while r.min() // size != r.max() // size or c.min() // size != c.max() // size:
            size *= 2
        assert size <= SMALL.max_region, "a leaf spans two root cells"
        values = index[member]
        labels = result.labels[member]
        assert (labels == labels[0]).all(), "one label per leaf"
        assert labels[0] == (values.astype(np.float64).mean() > threshold) or (
            abs(values.astype(np.float64).mean() - threshold) < 2 / 4096
        ), "the leaf's label is its mean's side of the threshold"
        if size > SMALL.min_region:
            # Split only as far as needed: a leaf above the smallest size is homogeneous.
            assert values.var() <= SMALL.max_variance + 1e-3
            side = values > threshold
            assert side.all() or not side.any()
    assert (result.labels[~ok] == 255).all()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    noise=st.sampled_from([0.05, 0.3]),
)
def test_no_two_touching_regions_share_a_label(
    seed: int, height: int, width: int, noise: float
) -> None:
    index, valid = _index_scene(height, width, seed=seed, noise=noise)
    result = split_merge(index, valid, threshold=0.0, params=SMALL)
    regions, labels = result.regions, result.labels
    assert regions is not None
    for a, b, la, lb in (
        (regions[:, :-1], regions[:, 1:], labels[:, :-1], labels[:, 1:]),
        (regions[:-1, :], regions[1:, :], labels[:-1, :], labels[1:, :]),
    ):
        touching = (a >= 0) & (b >= 0) & (a != b)
        assert not (touching & (la == lb)).any(), "two touching regions with one label"
    # And a region is one label: merging never joins the two classes.
    for region in np.unique(regions[regions >= 0]):
        assert len(np.unique(labels[regions == region])) == 1
    # Every leaf lies in one region.
    leaves = result.leaves
    pairs = np.unique(np.stack([leaves[leaves >= 0], regions[leaves >= 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]


def test_nodata_gets_no_class_and_does_not_move_its_neighbours() -> None:
    card = splitmerge_card("splitmerge:ndwi:0.0")
    seg = SplitMergeSegmenter(card)
    index, valid = _index_scene(96, 96, seed=3)
    image = np.stack([1.0 + index, 1.0 - index]).astype(np.float32)
    probs = seg.predict(image, valid)
    undefined = ~valid | ~np.isfinite(index)
    assert undefined.any()
    assert (probs[:, undefined] == 0).all(), "nodata pixels get no class"
    ok = ~undefined
    np.testing.assert_allclose(probs[:, ok].sum(axis=0), 1.0, atol=1e-6)
    # Whatever lies under the nodata, the valid pixels come out the same.
    other = image.copy()
    other[:, ~valid] = np.random.default_rng(0).random((2, int((~valid).sum()))) + 0.5
    np.testing.assert_array_equal(seg.predict(other, valid), probs)


def test_specks_below_the_smallest_cell_are_absorbed_and_large_objects_kept() -> None:
    index = np.full((64, 64), -0.5, dtype=np.float32)
    index[20:44, 8:40] = 0.5  # a 24 x 32 lake
    index[5, 50] = 0.5  # a one-pixel speck: the per-pixel rule keeps it
    index[52:54, 52:54] = 0.5  # a 2 x 2 speck astride four 4 x 4 cells
    valid = np.ones(index.shape, dtype=bool)
    params = SplitMergeParams(max_region=64, min_region=4)
    result = split_merge(index, valid, threshold=0.0, params=params)
    expected = np.zeros(index.shape, dtype=np.uint8)
    expected[20:44, 8:40] = 1
    np.testing.assert_array_equal(result.labels, expected)
    # The lake's edges lie on 4 px cell boundaries, so its leaves are exact: one region
    # inside, one outside.
    assert result.regions is not None
    assert len(np.unique(result.regions)) == 2


def test_a_uniform_scene_is_one_leaf_per_root_cell() -> None:
    index = np.full((100, 130), 0.3, dtype=np.float32)
    result = split_merge(
        index, np.ones(index.shape, dtype=bool), threshold=0.0, params=SMALL, origin=(10, 20)
    )
    # Rows 10..109 and cols 20..149 in scene pixels touch 4 x 5 root cells of 32.
    assert len(np.unique(result.leaves)) == 4 * 5
    assert result.regions is not None and len(np.unique(result.regions)) == 1
    assert (result.labels == 1).all()


def test_card_names_parse_and_explain_mistakes() -> None:
    card = splitmerge_card("splitmerge:ndwi:0.1")
    assert card.architecture == "spectral"
    assert card.params["segmentation"] == "splitmerge"
    assert card.params["threshold"] == 0.1
    assert card.bands == ("green", "nir")
    otsu = splitmerge_card("splitmerge:mndwi", threshold=0.2)
    assert otsu.params["mode"] == "otsu" and otsu.params["threshold"] == 0.2
    assert splitmerge_halo_px(splitmerge_card("splitmerge:ndvi")) == 255
    with pytest.raises(ConfigError, match="ndwi, mndwi, ndvi"):
        splitmerge_card("splitmerge:evi")
    with pytest.raises(ConfigError, match="splitmerge:INDEX"):
        splitmerge_card("splitmerge")
    with pytest.raises(ConfigError, match="Otsu threshold must be computed"):
        SplitMergeSegmenter(splitmerge_card("splitmerge:ndwi"))
    with pytest.raises(ConfigError, match=r"power of two, e\.g\. 64"):
        SplitMergeParams(max_region=100)
