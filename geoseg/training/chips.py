"""Training chips: where they come from, how they are read, augmented and normalised.

Everything is read window by window, so training inputs may be larger than memory:

- :func:`scan_scene` streams once over an image and its labels (block by block) and
  gathers the per-band mean/std of the valid pixels (for the model card) and per-cell
  class counts (where the rare classes are, for class-balanced sampling).
- :class:`ChipSampler` draws chip windows uniformly over the training area, or, for a
  fraction ``balance`` of chips, around a random pixel of a randomly chosen non-background
  class (rare classes are oversampled).
- :class:`ValidationSplit` holds out whole inputs (``tile``) or a rectangle of one input
  (``region``). No training chip overlaps the held-out rectangle grown by a gap (one chip by
  default), so validation never sees pixels a training chip saw, nor their close neighbours.
- :class:`ChipLoader` reads chips, normalises them exactly as
  :class:`~geoseg.models.predictor.TorchSegmenter` does at inference (``(x - mean) / std``,
  nodata -> 0) and augments them for overhead imagery: the 8 flips/rotations of the square,
  and brightness/contrast jitter applied in normalised space, so its strength is in units
  of the band's std whatever the sensor's units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.errors import ConfigError
from geoseg.tiling.grid import PixelWindow
from geoseg.tiling.io import read_window
from geoseg.training.labels import IGNORE_INDEX, LabelReader

__all__ = [
    "SPLITS",
    "Augment",
    "Chip",
    "ChipLoader",
    "ChipSampler",
    "RunningStats",
    "SceneScan",
    "SplitPlan",
    "TrainArea",
    "TrainScene",
    "ValidationSplit",
    "allowed_origins",
    "augment",
    "chip_allowed",
    "normalise",
    "plan_split",
    "rescale",
    "scaled_window",
    "scan_scene",
]

SPLITS = ("auto", "tile", "region", "none")


# --- normalisation and augmentation -------------------------------------------------------


def normalise(
    image: np.ndarray, valid: np.ndarray, *, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """``(x - mean) / std`` per band as float32; nodata pixels become 0 (the band mean)."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    x = (image.astype(np.float32) - m) / s
    x[:, ~valid] = 0.0
    return x


@dataclass(frozen=True, kw_only=True, slots=True)
class Augment:
    """Augmentations for overhead imagery (no preferred orientation).

    Parameters
    ----------
    flips
        Random horizontal and vertical flips.
    rotate90
        Random rotation by a multiple of 90 degrees.
    brightness
        Additive shift drawn from ``[-brightness, brightness]``, in units of the band std
        (applied to normalised values), the same for all bands of a chip.
    contrast
        Multiplicative factor drawn from ``[1 - contrast, 1 + contrast]``.
    scale
        ``(low, high)``: with probability ``scale_prob``, a chip shows the ground at a pixel
        size ``f`` times the image's, ``f`` drawn log-uniformly from ``[low, high]``
        (``(0.5, 2.0)`` turns 1 m imagery into 0.5-2 m): a window of ``f * chip`` pixels
        around the drawn chip is read and resampled to the chip size (image: area-weighted
        when shrinking, bilinear when enlarging; labels: nearest). ``None``: no rescaling.
        Models then transfer to other resolutions read at their own.
    scale_prob
        Fraction of chips rescaled when ``scale`` is set.
    """

    flips: bool = True
    rotate90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    scale: tuple[float, float] | None = None
    scale_prob: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.brightness <= 2:
            raise ConfigError(f"brightness jitter {self.brightness} must be in [0, 2]")
        if not 0 <= self.contrast < 1:
            raise ConfigError(f"contrast jitter {self.contrast} must be in [0, 1)")
        if self.scale is not None:
            try:
                low, high = (float(v) for v in self.scale)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"scale {self.scale!r} must be two factors [low, high], e.g. [0.5, 2.0]"
                ) from None
            if not 0.25 <= low <= high <= 4:
                raise ConfigError(
                    f"scale [{low}, {high}] must satisfy 0.25 <= low <= high <= 4, e.g. [0.5, 2.0]"
                )
            object.__setattr__(self, "scale", (low, high))
        if not 0 <= self.scale_prob <= 1:
            raise ConfigError(f"scale_prob {self.scale_prob} must be in [0, 1]")

    def draw_scale(self, rng: np.random.Generator) -> float:
        """The pixel-size factor of one chip (1.0: not rescaled)."""
        if self.scale is None or rng.random() >= self.scale_prob:
            return 1.0
        low, high = self.scale
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def rescale(
    x: np.ndarray, y: np.ndarray, valid: np.ndarray, *, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a chip ``x (B, M, M)``, labels ``y (M, M)`` and ``valid`` to ``size`` pixels.

    Shrinking (``M > size``) averages the image over each output pixel's footprint (a
    Gaussian of sigma ``(M / size - 1) / 2`` before bilinear sampling), as a coarser sensor
    would; enlarging samples it bilinearly. Labels and the valid mask take the nearest
    source pixel. Pixel centres map to pixel centres.
    """
    from scipy import ndimage

    m = y.shape[0]
    if m == size:
        return x, y, valid
    factor = m / size
    coords = (np.arange(size, dtype=np.float64) + 0.5) * factor - 0.5
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((x.shape[0], size, size), dtype=np.float32)
    for b in range(x.shape[0]):
        band = x[b].astype(np.float32)
        if factor > 1:
            band = ndimage.gaussian_filter(band, sigma=(factor - 1) / 2, mode="nearest")
        out[b] = ndimage.map_coordinates(band, [rows, cols], order=1, mode="nearest")
    near = np.clip(np.floor((np.arange(size) + 0.5) * factor).astype(np.int64), 0, m - 1)
    return out, y[np.ix_(near, near)], valid[np.ix_(near, near)]


def augment(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    spec: Augment,
    *,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a normalised chip ``x (B, S, S)`` and its labels ``y (S, S)`` together.

    ``valid (S, S)``: the image's valid pixels; nodata pixels keep the value 0 under
    jitter, as at inference. ``None`` treats every pixel as valid.
    """
    v = np.ones(y.shape, dtype=bool) if valid is None else valid
    if spec.flips:
        if rng.random() < 0.5:
            x, y, v = x[:, :, ::-1], y[:, ::-1], v[:, ::-1]
        if rng.random() < 0.5:
            x, y, v = x[:, ::-1, :], y[::-1, :], v[::-1, :]
    if spec.rotate90:
        k = int(rng.integers(4))
        x, y, v = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k), np.rot90(v, k)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    if spec.brightness or spec.contrast:
        gain = np.float32(1.0 + rng.uniform(-spec.contrast, spec.contrast))
        shift = np.float32(rng.uniform(-spec.brightness, spec.brightness))
        x = np.where(v, x * gain + shift, np.float32(0.0)).astype(np.float32)
    return x, y


# --- band statistics ------------------------------------------------------------------


class RunningStats:
    """Per-band count, mean and sum of squared deviations, merged window by window.

    Uses Chan et al.'s pairwise update, which stays accurate where ``E[x^2] - E[x]^2``
    would cancel (large values with a small spread).
    """

    def __init__(self, n_bands: int) -> None:
        self.count = 0
        self._mean = np.zeros(n_bands, dtype=np.float64)
        self._m2 = np.zeros(n_bands, dtype=np.float64)

    def update(self, image: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of ``image (B, H, W)``."""
        values = image[:, valid].astype(np.float64)
        n = values.shape[1]
        if n == 0:
            return
        mean = values.mean(axis=1)
        m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def merge(self, other: RunningStats) -> None:
        """Fold another accumulator into this one."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other._mean - self._mean
        self._mean = self._mean + delta * (other.count / total)
        self._m2 = self._m2 + other._m2 + delta**2 * (self.count * other.count / total)
        self.count = total

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._mean)

    @property
    def std(self) -> tuple[float, ...]:
        """Population std per band; a constant band gets 1 (normalising it gives 0)."""
        var = self._m2 / max(self.count, 1)
        return tuple(float(math.sqrt(v)) if v > 1e-12 else 1.0 for v in var)


# --- validation split and the training area ------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidationSplit:
    """Which pixels are held out for validation.

    Parameters
    ----------
    kind
        ``"tile"``: whole inputs held out (``tiles``, default the last input).
        ``"region"``: a rectangle of input ``image`` held out (``region``, default the
        bottom ``fraction`` of its rows).
        ``"none"``: no validation (the last epoch is kept).
        ``"auto"``: ``region`` when a region is given or there is a single input,
        otherwise ``tile`` (the last input).
    gap
        Pixels kept free of training chips around a held-out region; ``None`` is one chip.
    """

    kind: str = "auto"
    tiles: tuple[int, ...] = ()
    image: int = 0
    region: PixelWindow | None = None
    fraction: float = 0.2
    gap: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPLITS:
            raise ConfigError(f"validation split {self.kind!r}; valid: {', '.join(SPLITS)}")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"validation fraction {self.fraction} must be between 0 and 1")
        if self.gap is not None and self.gap < 0:
            raise ConfigError(f"validation gap {self.gap} must be >= 0 pixels")
        if self.tiles and self.kind not in ("tile", "auto"):
            raise ConfigError(f"tiles={self.tiles} given with a {self.kind!r} split; use 'tile'")
        if self.region is not None and self.kind not in ("region", "auto"):
            raise ConfigError(f"region given with a {self.kind!r} split; use 'region'")

    def to_dict(self) -> dict[str, Any]:
        region = self.region
        return {
            "kind": self.kind,
            "tiles": list(self.tiles),
            "image": self.image,
            "region": None
            if region is None
            else [region.row_off, region.col_off, region.height, region.width],
            "fraction": self.fraction,
            "gap": self.gap,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainArea:
    """Where chips may be cut in one input: all of it but ``exclude`` grown by ``gap``."""

    index: int
    height: int
    width: int
    exclude: PixelWindow | None = None
    gap: int = 0

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"training area {self.height}x{self.width} must be positive")
        if self.gap < 0:
            raise ConfigError(f"gap {self.gap} must be >= 0")

    @property
    def zone(self) -> PixelWindow | None:
        """The excluded rectangle grown by the gap (may extend beyond the image)."""
        e = self.exclude
        if e is None:
            return None
        g = self.gap
        return PixelWindow(
            row_off=e.row_off - g,
            col_off=e.col_off - g,
            height=e.height + 2 * g,
            width=e.width + 2 * g,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitPlan:
    """Training areas and held-out validation windows (``(input index, window)``)."""

    train: tuple[TrainArea, ...]
    validation: tuple[tuple[int, PixelWindow], ...]


def plan_split(split: ValidationSplit, sizes: Sequence[tuple[int, int]], *, chip: int) -> SplitPlan:
    """Resolve a split for inputs of ``(height, width)`` ``sizes``.

    Raises
    ------
    ConfigError
        If a held-out input or region does not exist, or nothing is left to train on.
    """
    n = len(sizes)
    kind = split.kind
    if kind == "auto":
        kind = "region" if split.region is not None or (n < 2 and not split.tiles) else "tile"
    gap = chip if split.gap is None else split.gap
    if kind == "none":
        areas = tuple(TrainArea(index=i, height=h, width=w) for i, (h, w) in enumerate(sizes))
        return SplitPlan(train=areas, validation=())
    if kind == "tile":
        held = split.tiles or (n - 1,)
        bad = [t for t in held if not 0 <= t < n]
        if bad:
            raise ConfigError(f"held-out input {bad[0]} does not exist; inputs are 0..{n - 1}")
        if len(set(held)) >= n:
            raise ConfigError(
                f"all {n} inputs are held out for validation; keep one for training or use "
                f"a 'region' split"
            )
        areas = tuple(
            TrainArea(index=i, height=h, width=w) for i, (h, w) in enumerate(sizes) if i not in held
        )
        val = tuple(
            (i, PixelWindow(row_off=0, col_off=0, height=sizes[i][0], width=sizes[i][1]))
            for i in sorted(set(held))
        )
        return SplitPlan(train=areas, validation=val)
    if not 0 <= split.image < n:
        raise ConfigError(f"validation image {split.image} does not exist; inputs are 0..{n - 1}")
    h, w = sizes[split.image]
    scene = PixelWindow(row_off=0, col_off=0, height=h, width=w)
    region = split.region
    if region is None:
        rows = max(1, round(h * split.fraction))
        region = PixelWindow(row_off=h - rows, col_off=0, height=rows, width=w)
    inner = region.intersection(scene)
    if inner is None or inner != region:
        raise ConfigError(f"validation region {region} does not lie inside the {h}x{w} image")
    areas = tuple(
        TrainArea(
            index=i,
            height=hh,
            width=ww,
            exclude=region if i == split.image else None,
            gap=gap if i == split.image else 0,
        )
        for i, (hh, ww) in enumerate(sizes)
    )
    return SplitPlan(train=areas, validation=((split.image, region),))


def allowed_origins(area: TrainArea, *, chip: int) -> list[tuple[int, int, int, int]]:
    """Half-open ranges ``(r0, r1, c0, c1)`` of the chip origins allowed in ``area``.

    A chip at ``(r, c)`` covers ``[r, r + chip) x [c, c + chip)``; it is allowed when it
    does not overlap :attr:`TrainArea.zone`. Origins run over ``[0, height - chip]`` (just
    ``0`` when the image is smaller than a chip: the reader pads it). The ranges are
    disjoint and their union is exactly the allowed set.
    """
    rn, cn = max(0, area.height - chip) + 1, max(0, area.width - chip) + 1
    zone = area.zone
    if zone is None:
        return [(0, rn, 0, cn)]
    fr0 = min(max(zone.row_off - chip + 1, 0), rn)
    fr1 = min(max(zone.row_end, 0), rn)
    fc0 = min(max(zone.col_off - chip + 1, 0), cn)
    fc1 = min(max(zone.col_end, 0), cn)
    if fr0 >= fr1 or fc0 >= fc1:
        return [(0, rn, 0, cn)]
    boxes = [(0, fr0, 0, cn), (fr1, rn, 0, cn), (fr0, fr1, 0, fc0), (fr0, fr1, fc1, cn)]
    return [b for b in boxes if b[1] > b[0] and b[3] > b[2]]


def chip_allowed(area: TrainArea, window: PixelWindow) -> bool:
    """Whether a chip window keeps clear of the area's held-out zone."""
    zone = area.zone
    return zone is None or window.intersection(zone) is None


# --- scanning: statistics and where the classes are ----------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class SceneScan:
    """What one streamed pass over an input found.

    ``cells[i, j, k]`` counts pixels of class ``k`` in the cell of ``cell`` x ``cell``
    pixels at row ``i``, column ``j`` of the scanned window (pixels in the excluded zone,
    nodata and ignored pixels are not counted).
    """

    cells: np.ndarray
    cell: int
    class_pixels: np.ndarray
    stats: RunningStats | None = None


def _mask_window(mask: np.ndarray, zone: PixelWindow | None, window: PixelWindow) -> None:
    """Set ``mask`` True where ``window`` (the array's extent) meets ``zone``."""
    if zone is None:
        return
    inner = zone.intersection(window)
    if inner is not None:
        mask[inner.relative_to(window)] = True


def scan_scene(
    image: str,
    *,
    bands: Sequence[int],
    labels: LabelReader,
    n_classes: int,
    cell: int,
    window: PixelWindow,
    area: TrainArea | None = None,
    stats: bool = True,
    block: int = 1024,
    on_block: Callable[[], None] | None = None,
) -> SceneScan:
    """Stream over ``window`` of an input in blocks: band statistics and class counts.

    Band statistics use the valid image pixels outside ``area.exclude``; class counts the
    labelled pixels outside ``area.zone`` (the excluded region and its gap).
    """
    block = max(cell, block // cell * cell)
    nr, nc = math.ceil(window.height / cell), math.ceil(window.width / cell)
    cells = np.zeros((nr, nc, n_classes), dtype=np.int32)
    acc = RunningStats(len(bands)) if stats else None
    for r in range(0, window.height, block):
        for c in range(0, window.width, block):
            win = PixelWindow(
                row_off=window.row_off + r,
                col_off=window.col_off + c,
                height=min(block, window.height - r),
                width=min(block, window.width - c),
            )
            img, valid = read_window(image, win, bands=bands)
            lab = labels.read(win)
            lab[~valid] = IGNORE_INDEX
            if area is not None:
                held = np.zeros(valid.shape, dtype=bool)
                _mask_window(held, area.exclude, win)
                valid &= ~held
                _mask_window(held, area.zone, win)
                lab[held] = IGNORE_INDEX
            if acc is not None:
                acc.update(img, valid)
            h, w = lab.shape
            ph, pw = (-h) % cell, (-w) % cell
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            blocks = lab.reshape(lab.shape[0] // cell, cell, lab.shape[1] // cell, cell)
            i0, j0 = r // cell, c // cell
            for k in range(n_classes):
                counts = (blocks == k).sum(axis=(1, 3), dtype=np.int32)
                cells[i0 : i0 + counts.shape[0], j0 : j0 + counts.shape[1], k] = counts
            if on_block is not None:
                on_block()
    class_pixels = cells.sum(axis=(0, 1), dtype=np.int64)
    return SceneScan(cells=cells, cell=cell, class_pixels=class_pixels, stats=acc)


# --- sampling ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Chip:
    """One chip: input index and window."""

    image: int
    window: PixelWindow


class ChipSampler:
    """Draws chip windows from training areas, uniformly or class-balanced.

    Parameters
    ----------
    areas
        Where chips may be cut.
    chip
        Chip size in pixels.
    scans
        One :class:`SceneScan` per area (same order), for class-balanced draws.
    balance
        Fraction of chips drawn around a pixel of a random non-background class
        (0: all uniform).

    Raises
    ------
    ConfigError
        If no chip fits anywhere outside the held-out zones.
    """

    def __init__(
        self,
        areas: Sequence[TrainArea],
        *,
        chip: int,
        scans: Sequence[SceneScan] | None = None,
        balance: float = 0.0,
    ) -> None:
        if not 0 <= balance <= 1:
            raise ConfigError(f"balance {balance} must be between 0 and 1")
        if scans is not None and len(scans) != len(areas):
            raise ConfigError(f"{len(scans)} scans for {len(areas)} training areas")
        self.areas = tuple(areas)
        self.chip = chip
        self.balance = balance
        self._boxes = [(a, b) for a in self.areas for b in allowed_origins(a, chip=chip)]
        sizes = np.array([(b[1] - b[0]) * (b[3] - b[2]) for _, b in self._boxes], dtype=np.float64)
        if not sizes.sum():
            raise ConfigError(
                f"no {chip}x{chip} chip fits outside the held-out validation zone; use a "
                f"smaller chip, a smaller region or gap, or a 'tile' split"
            )
        self._box_cum = np.cumsum(sizes) / sizes.sum()
        self._classes: list[tuple[int, np.ndarray, list[tuple[int, int, int]]]] = []
        if scans is not None and balance > 0:
            self._index_classes(scans)

    def _index_classes(self, scans: Sequence[SceneScan]) -> None:
        n_classes = scans[0].cells.shape[2]
        for k in range(1, n_classes):
            weights: list[np.ndarray] = []
            where: list[tuple[int, int, int]] = []  # (area position, first flat cell, cells)
            offset = 0
            for pos, scan in enumerate(scans):
                flat = scan.cells[:, :, k].ravel().astype(np.float64)
                weights.append(flat)
                where.append((pos, offset, flat.size))
                offset += flat.size
            total = np.concatenate(weights)
            if total.sum() > 0:
                self._classes.append((k, np.cumsum(total) / total.sum(), where))
        self._scans = tuple(scans)

    @property
    def balanced_classes(self) -> tuple[int, ...]:
        """Classes drawn around in balanced draws (non-background, present in training)."""
        return tuple(k for k, _, _ in self._classes)

    def uniform(self, rng: np.random.Generator) -> Chip:
        """A chip uniformly distributed over all allowed origins of all areas."""
        i = int(np.searchsorted(self._box_cum, rng.random(), side="right"))
        area, (r0, r1, c0, c1) = self._boxes[min(i, len(self._boxes) - 1)]
        r, c = int(rng.integers(r0, r1)), int(rng.integers(c0, c1))
        return Chip(image=area.index, window=self._window(r, c))

    def _window(self, r: int, c: int) -> PixelWindow:
        return PixelWindow(row_off=r, col_off=c, height=self.chip, width=self.chip)

    def sample(self, rng: np.random.Generator) -> Chip:
        """A chip: class-balanced with probability ``balance``, else uniform."""
        if self._classes and rng.random() < self.balance:
            _, cum, where = self._classes[int(rng.integers(len(self._classes)))]
            for _ in range(10):
                flat = min(int(np.searchsorted(cum, rng.random(), side="right")), cum.size - 1)
                pos, offset, _ = next(w for w in where if w[1] <= flat < w[1] + w[2])
                area, scan = self.areas[pos], self._scans[pos]
                ci, cj = divmod(flat - offset, scan.cells.shape[1])
                s = scan.cell
                pr = ci * s + int(rng.integers(max(1, min(s, area.height - ci * s))))
                pc = cj * s + int(rng.integers(max(1, min(s, area.width - cj * s))))
                r = min(max(pr - int(rng.integers(self.chip)), 0), max(0, area.height - self.chip))
                c = min(max(pc - int(rng.integers(self.chip)), 0), max(0, area.width - self.chip))
                window = self._window(r, c)
                if chip_allowed(area, window):
                    return Chip(image=area.index, window=window)
        return self.uniform(rng)


# --- reading chips -----------------------------------------------------------------------


def scaled_window(chip: Chip, factor: float) -> Chip:
    """The window of ``factor`` times the chip's size with the same centre.

    It may reach past the image (read as reflected, invalid pixels) and, by up to half a
    chip times ``factor - 1``, into the gap around a held-out region; the gap is one chip
    by default, so it never reaches the held-out pixels for factors up to 3.
    """
    w = chip.window
    m = max(1, round(w.height * factor))
    r = w.row_off + w.height // 2 - m // 2
    c = w.col_off + w.width // 2 - m // 2
    return Chip(image=chip.image, window=PixelWindow(row_off=r, col_off=c, height=m, width=m))


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainScene:
    """One opened input: image path, its band numbers and its label reader."""

    path: str
    bands: tuple[int, ...]
    labels: LabelReader


class ChipLoader:
    """Reads, normalises and augments batches of chips.

    Parameters
    ----------
    scenes
        All inputs, indexed as in the sampler's areas.
    sampler
        Where chips come from.
    mean, std
        Per-band normalisation (the model card's).
    augment_spec
        Augmentations; ``None`` for none.
    min_labelled
        Chips with a smaller fraction of labelled pixels are redrawn (up to a few times),
        so sparse labels do not fill batches with nothing to learn from.
    """

    def __init__(
        self,
        scenes: Sequence[TrainScene],
        sampler: ChipSampler,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment_spec: Augment | None = None,
        min_labelled: float = 0.0,
    ) -> None:
        if not 0 <= min_labelled <= 1:
            raise ConfigError(f"min_labelled {min_labelled} must be between 0 and 1")
        self.scenes = tuple(scenes)
        self.sampler = sampler
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment_spec = augment_spec
        self.min_labelled = min_labelled

    def read(self, chip: Chip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised chip ``(B, S, S)`` float32, labels ``(S, S)`` uint8 and the valid mask.

        Not augmented. Labels are :data:`IGNORE_INDEX` where the image is nodata.
        """
        scene = self.scenes[chip.image]
        image, valid = read_window(scene.path, chip.window, bands=scene.bands)
        labels = scene.labels.read(chip.window)
        labels[~valid] = IGNORE_INDEX
        return normalise(image, valid, mean=self.mean, std=self.std), labels, valid

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` augmented chips: ``x (N, B, S, S)`` float32, ``y (N, S, S)`` int64."""
        xs, ys = [], []
        spec = self.augment_spec
        for _ in range(size):
            for _attempt in range(8):
                chip = self.sampler.sample(rng)
                factor = 1.0 if spec is None else spec.draw_scale(rng)
                if factor == 1.0:
                    x, y, valid = self.read(chip)
                else:
                    x, y, valid = self.read(scaled_window(chip, factor))
                    x, y, valid = rescale(x, y, valid, size=chip.window.height)
                if np.mean(y != IGNORE_INDEX) >= self.min_labelled:
                    break
            if self.augment_spec is not None:
                x, y = augment(x, y, rng, self.augment_spec, valid=valid)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys).astype(np.int64)
