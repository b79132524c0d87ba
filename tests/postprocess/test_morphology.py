"""morph_refine: sizes honoured in metres, nodata and block borders handled as unknown."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio import features

from geoseg.errors import ConfigError
from geoseg.postprocess.morphology import MorphRecipe, ellipse_footprint, morph_refine

PROJECTED = (10.0, 10.0)


def _deg_to_m(dx_deg: float, dy_deg: float, lat: float) -> tuple[float, float]:
    """What the caller does for an EPSG:4326 scene: metres per degree at the latitude."""
    m_per_deg_lat = 111_132.95 - 559.82 * math.cos(2 * math.radians(lat))
    m_per_deg_lon = 111_412.84 * math.cos(math.radians(lat))
    return dx_deg * m_per_deg_lon, dy_deg * m_per_deg_lat


# A Sentinel-2-like EPSG:4326 grid at 35 N (~8.2 m x 8.2 m) and a strongly anisotropic one
# at 60 N (~5.6 m wide, 11.1 m tall) where a disk of the mean size would be wrong.
GEOGRAPHIC_35N = _deg_to_m(8.98e-5, 7.39e-5, 35.0)
GEOGRAPHIC_60N = _deg_to_m(1e-4, 1e-4, 60.0)
GRIDS = pytest.mark.parametrize(
    "pixel_size_m", [PROJECTED, GEOGRAPHIC_35N, GEOGRAPHIC_60N], ids=["10m", "4326@35N", "4326@60N"]
)


def _refine(mask: np.ndarray, pixel_size_m: tuple[float, float], **recipe: float) -> np.ndarray:
    return morph_refine(
        mask,
        valid=np.ones_like(mask),
        recipe=MorphRecipe(**recipe),
        pixel_size_m=pixel_size_m,
    )


def _blob(n_pixels: int, *, width: int = 5) -> np.ndarray:
    """A compact blob of exactly ``n_pixels`` pixels (rows of ``width``, last row partial)."""
    flat = np.zeros(width * (n_pixels // width + 1), dtype=bool)
    flat[:n_pixels] = True
    return flat.reshape(-1, width)


@GRIDS
def test_objects_just_below_min_area_are_removed_just_above_kept(
    pixel_size_m: tuple[float, float],
) -> None:
    dx, dy = pixel_size_m
    min_area = 2500.0
    threshold_px = min_area / (dx * dy)
    below, above = math.ceil(threshold_px) - 1, math.floor(threshold_px) + 1
    assert below * dx * dy < min_area < above * dx * dy
    mask = np.zeros((40, 60), dtype=bool)
    small, large = _blob(below), _blob(above)
    mask[2 : 2 + small.shape[0], 2 : 2 + small.shape[1]] = small
    mask[2 : 2 + large.shape[0], 30 : 30 + large.shape[1]] = large
    out = _refine(mask, pixel_size_m, min_object_area_m2=min_area)
    assert not out[:, :20].any(), f"{below} px = {below * dx * dy:.0f} m² should be removed"
    assert np.array_equal(out[:, 20:], mask[:, 20:]), f"{above} px should be kept unchanged"


@GRIDS
def test_holes_below_max_area_are_filled_above_kept(pixel_size_m: tuple[float, float]) -> None:
    dx, dy = pixel_size_m
    max_hole = 1000.0
    threshold_px = max_hole / (dx * dy)
    below, above = math.ceil(threshold_px) - 1, math.floor(threshold_px) + 1
    mask = np.zeros((30, 50), dtype=bool)
    mask[2:28, 2:48] = True
    small, large = _blob(below, width=3), _blob(above, width=3)
    mask[5 : 5 + small.shape[0], 5 : 5 + small.shape[1]] &= ~small
    mask[5 : 5 + large.shape[0], 30 : 30 + large.shape[1]] &= ~large
    out = _refine(mask, pixel_size_m, max_hole_area_m2=max_hole)
    assert out[5 : 5 + small.shape[0], 5:8].all(), "the small hole should be filled"
    assert np.array_equal(out[:, 25:], mask[:, 25:]), "the large hole should stay open"
    assert not out[0].any(), "filling holes must not touch the outside"


def test_speck_touching_an_object_only_at_a_corner_is_removed() -> None:
    # Polygons are traced 4-connected, so a pixel meeting the lake at a corner is a polygon
    # of its own: it must meet the minimum area on its own (it was kept as part of the lake
    # under 8-connectivity).
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True  # 100 px = 10000 m2
    mask[4, 4] = mask[15, 15] = True  # 100 m2 specks at two corners
    out = _refine(mask, PROJECTED, min_object_area_m2=1000.0)
    expected = np.zeros_like(mask)
    expected[5:15, 5:15] = True
    assert np.array_equal(out, expected)


def test_hole_meeting_the_outside_only_at_a_corner_is_filled() -> None:
    # Pixel (6, 6) is background touching the notch (5, 5) only at a corner: the traced
    # polygon has it as an interior ring, so it is a hole and is filled.
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    mask[5, 5] = mask[6, 6] = False
    rings = [len(p.interiors) for p in _polygons(mask)]
    assert rings == [1], "the pinched pixel is a hole of the traced polygon"
    out = _refine(mask, PROJECTED, max_hole_area_m2=1000.0)
    assert out[6, 6] and not out[5, 5], "the hole is filled, the notch (outside) is not"
    assert [len(p.interiors) for p in _polygons(out)] == [0]


def _polygons(mask: np.ndarray) -> list[shapely.Polygon]:
    """The polygons geoseg traces from ``mask`` (4-connected, in pixel units)."""
    shapes = features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4)
    return [shapely.geometry.shape(s) for s, _ in shapes]


@settings(max_examples=150, deadline=None)
@given(
    mask=arrays(bool, st.tuples(st.integers(3, 20), st.integers(3, 20))),
    min_px=st.sampled_from([0, 2, 3, 6]),
    max_px=st.sampled_from([0, 2, 3, 6]),
)
def test_traced_polygons_respect_min_area_and_max_hole(
    mask: np.ndarray, min_px: int, max_px: int
) -> None:
    # What the user sees: after the filters no traced polygon is smaller than the minimum
    # and no interior ring encloses less than the maximum hole area (1 m pixels: m2 = px).
    out = _refine(mask, (1.0, 1.0), min_object_area_m2=min_px, max_hole_area_m2=max_px)
    for poly in _polygons(out):
        assert poly.area >= min_px, poly.wkt
        for ring in poly.interiors:
            assert shapely.Polygon(ring).area >= max_px, poly.wkt


@GRIDS
@pytest.mark.parametrize("axis", ["x", "y"])
def test_closing_bridges_gaps_narrower_than_two_radii_only(
    pixel_size_m: tuple[float, float], axis: str
) -> None:
    radius = 25.0
    size = pixel_size_m[0] if axis == "x" else pixel_size_m[1]
    narrow = math.floor(0.9 * 2 * radius / size)  # gap < 2 r on the ground
    wide = math.ceil(1.1 * 2 * radius / size)  # gap > 2 r on the ground
    assert narrow * size < 2 * radius < wide * size

    def bar_with_gap(gap: int) -> tuple[np.ndarray, slice]:
        mask = np.zeros((120, 120), dtype=bool)
        mask[40:80, 10:110] = True  # 40 px thick: the closing must not erode it anywhere
        gap_cols = slice(60 - gap // 2, 60 - gap // 2 + gap)
        mask[:, gap_cols] = False
        return (mask if axis == "x" else mask.T.copy()), gap_cols

    for gap, bridged in ((narrow, True), (wide, False)):
        mask, cols = bar_with_gap(gap)
        out = _refine(mask, pixel_size_m, close_radius_m=radius)
        inside = out[50:70, cols] if axis == "x" else out[cols, 50:70]
        what = f"gap of {gap} px = {gap * size:.0f} m with a {radius} m radius"
        assert inside.all() if bridged else not inside.any(), what
        assert (out >= mask).all(), "a closing never removes foreground"


@GRIDS
@pytest.mark.parametrize("axis", ["x", "y"])
def test_line_closing_bridges_thin_structures_along_their_length_only(
    pixel_size_m: tuple[float, float], axis: str
) -> None:
    radius = 25.0
    size = pixel_size_m[0] if axis == "x" else pixel_size_m[1]
    narrow = math.floor(0.9 * 2 * radius / size)
    wide = math.ceil(1.1 * 2 * radius / size)

    def road(gap: int) -> np.ndarray:
        """A 2 px wide road (far thinner than the closing) along ``axis`` with a gap."""
        mask = np.zeros((40, 120), dtype=bool)
        mask[20:22, 5:115] = True
        mask[:, 60 - gap // 2 : 60 - gap // 2 + gap] = False
        return mask if axis == "x" else mask.T.copy()

    for gap, bridged in ((narrow, True), (wide, False)):
        out = _refine(road(gap), pixel_size_m, line_close_radius_m=radius)
        what = f"gap of {gap} px = {gap * size:.0f} m with a {radius} m line closing"
        assert np.array_equal(out, road(0) if bridged else road(gap)), what

    # A disk closing of the same radius cannot fit into the road: at most a neck.
    disk = _refine(road(narrow), pixel_size_m, close_radius_m=radius)
    assert np.count_nonzero(disk) < np.count_nonzero(road(0))


def test_anisotropic_footprint_is_a_ground_disk() -> None:
    # 25 m at 5.57 m x 11.1 m pixels: 4 columns but only 2 rows each way.
    fp = ellipse_footprint(25.0, pixel_size_m=GEOGRAPHIC_60N)
    assert fp.shape == (5, 9)
    assert fp[2].all() and fp[:, 4].all()
    assert not fp[0, 0]  # corners lie beyond 25 m


@GRIDS
def test_opening_removes_bars_narrower_than_two_radii(pixel_size_m: tuple[float, float]) -> None:
    radius = 20.0
    dx = pixel_size_m[0]
    thin, thick = math.floor(0.8 * 2 * radius / dx), math.ceil(1.2 * 2 * radius / dx) + 1
    mask = np.zeros((80, 100), dtype=bool)
    mask[10:70, 10 : 10 + thin] = True
    mask[10:70, 50 : 50 + thick] = True
    out = _refine(mask, pixel_size_m, open_radius_m=radius)
    assert not out[:, :40].any(), f"a {thin * dx:.0f} m wide bar should be opened away"
    assert out[30:50, 50 : 50 + thick].all(), f"a {thick * dx:.0f} m wide bar should stay"


# --------------------------------------------------------------------------- nodata


def test_nodata_never_becomes_foreground() -> None:
    mask = np.zeros((60, 60), dtype=bool)
    mask[10:50, 10:50] = True
    valid = np.ones_like(mask)
    valid[25:35, 25:35] = False  # a cloud inside the lake
    valid[:, 55:] = False  # scene edge
    recipe = MorphRecipe(close_radius_m=30.0, max_hole_area_m2=1e6)
    out = morph_refine(mask, valid=valid, recipe=recipe, pixel_size_m=PROJECTED)
    assert not out[~valid].any()
    assert out[10:50, 10:25].all()


def test_hole_touching_nodata_is_not_filled() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 5:35] = True
    mask[15:20, 15:20] = False  # 25 px hole...
    valid = np.ones_like(mask)
    valid[15:20, 20:23] = False  # ...touching a small nodata patch
    recipe = MorphRecipe(max_hole_area_m2=1e6)
    out = morph_refine(mask, valid=valid, recipe=recipe, pixel_size_m=PROJECTED)
    assert not out[15:20, 15:20].any()
    # The same hole without the nodata patch is filled (the test above is not vacuous).
    alone = morph_refine(mask, valid=np.ones_like(mask), recipe=recipe, pixel_size_m=PROJECTED)
    assert alone[15:20, 15:20].all()


def test_opening_does_not_erode_objects_at_the_nodata_edge() -> None:
    # Two 2 px wide strips: one along a nodata region (the object may continue under the
    # cloud: unknown, so kept), one in the open (a genuine sliver: removed).
    mask = np.zeros((40, 60), dtype=bool)
    valid = np.ones_like(mask)
    valid[:, :20] = False
    mask[5:35, 20:22] = True
    mask[5:35, 40:42] = True
    recipe = MorphRecipe(open_radius_m=20.0)
    out = morph_refine(mask, valid=valid, recipe=recipe, pixel_size_m=PROJECTED)
    assert out[8:32, 20:22].all(), "the strip along nodata keeps its body (ends get rounded)"
    assert not out[:, 30:].any()


def test_closing_is_not_pulled_towards_nodata() -> None:
    # A 2 px gap between an object and nodata: were nodata foreground, a 30 m closing
    # would fill it.
    mask = np.zeros((40, 60), dtype=bool)
    valid = np.ones_like(mask)
    mask[:, 10:30] = True
    valid[:, 32:] = False
    out = morph_refine(
        mask, valid=valid, recipe=MorphRecipe(close_radius_m=30.0), pixel_size_m=PROJECTED
    )
    assert np.array_equal(out, mask)


# --------------------------------------------------------------------------- block borders


@pytest.mark.parametrize(("side", "where"), [(0, np.s_[0:3, 20:23]), (3, np.s_[20:23, 37:40])])
def test_small_object_on_an_inner_block_border_is_kept(side: int, where: tuple) -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[where] = True  # 9 px, below the 20 px minimum
    recipe = MorphRecipe(min_object_area_m2=2000.0)
    closed = morph_refine(mask, valid=np.ones_like(mask), recipe=recipe, pixel_size_m=PROJECTED)
    assert not closed.any(), "on the scene edge its whole area is known: removed"
    sides = [False] * 4
    sides[side] = True
    inner = morph_refine(
        mask,
        valid=np.ones_like(mask),
        recipe=recipe,
        pixel_size_m=PROJECTED,
        open_sides=(sides[0], sides[1], sides[2], sides[3]),
    )
    assert np.array_equal(inner, mask), "cut by a block border its size is unknown: kept"


def test_malformed_input_raises_config_error() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    with pytest.raises(ConfigError, match="pixel_size_m"):
        morph_refine(mask, valid=mask, recipe=MorphRecipe(), pixel_size_m=(0.0, 10.0))
    with pytest.raises(ConfigError, match="valid"):
        morph_refine(mask, valid=mask[:4], recipe=MorphRecipe(), pixel_size_m=PROJECTED)
    with pytest.raises(ConfigError, match="open_sides"):
        morph_refine(
            mask,
            valid=mask,
            recipe=MorphRecipe(),
            pixel_size_m=PROJECTED,
            open_sides=(True, False),  # type: ignore[arg-type]
        )
    with pytest.raises(ConfigError, match="open_radius_m=-1"):
        MorphRecipe(open_radius_m=-1.0)


# --------------------------------------------------------------------------- invariants

_masks = arrays(bool, st.tuples(st.integers(3, 24), st.integers(3, 24)))
_sizes = st.sampled_from([0.0, 5.0, 10.0, 15.0, 25.0])
_areas = st.sampled_from([0.0, 100.0, 350.0, 1000.0])
_sides = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    mask=_masks,
    valid_seed=st.integers(0, 2**32 - 1),
    open_r=_sizes,
    close_r=_sizes,
    line_r=_sizes,
    min_area=_areas,
    max_hole=_areas,
    sides=_sides,
)
def test_output_is_inside_valid_and_hole_filling_is_idempotent(
    mask: np.ndarray,
    valid_seed: int,
    open_r: float,
    close_r: float,
    line_r: float,
    min_area: float,
    max_hole: float,
    sides: tuple[bool, bool, bool, bool],
) -> None:
    valid = np.random.default_rng(valid_seed).random(mask.shape) > 0.15
    recipe = MorphRecipe(
        open_radius_m=open_r,
        close_radius_m=close_r,
        line_close_radius_m=line_r,
        min_object_area_m2=min_area,
        max_hole_area_m2=max_hole,
    )
    out = morph_refine(mask, valid=valid, recipe=recipe, pixel_size_m=PROJECTED, open_sides=sides)
    assert out.dtype == np.bool_ and out.shape == mask.shape
    assert not (out & ~valid).any()

    fill = MorphRecipe(max_hole_area_m2=max_hole)
    once = morph_refine(mask, valid=valid, recipe=fill, pixel_size_m=PROJECTED)
    twice = morph_refine(once, valid=valid, recipe=fill, pixel_size_m=PROJECTED)
    assert np.array_equal(once, twice)
    assert (once >= (mask & valid)).all(), "filling holes only adds"

    drop = MorphRecipe(min_object_area_m2=min_area)
    kept = morph_refine(mask, valid=valid, recipe=drop, pixel_size_m=PROJECTED, open_sides=sides)
    assert (kept <= mask).all(), "removing objects only removes"
