"""Band roles: which scene bands feed a model, by name.

A model card names its input bands with canonical roles (``red``, ``green``, ``nir`` ...).
A scene's bands are matched to those roles, in this order of trust:

1. explicit 1-based band numbers given by the user (``--bands 4,3,2,8``);
2. the scene's band descriptions: role words (``"B4 NIR"``, ``"red"``) or band codes read
   with the sensor preset (``--sensor landsat8``: ``"B5"`` is NIR; Sentinel-2 codes such as
   ``B03`` name their sensor themselves);
3. a sensor preset by band position, when no band is described: only for the usual stack
   layouts of that sensor (:data:`LAYOUTS`); any other band count is an error, never a
   guess;
4. the colour interpretation (an RGB GeoTIFF's red/green/blue). An alpha band is no
   spectral band: it has no role, is left out of the positions of step 3 (unless the
   preset's stack needs it: GDAL flags the 4th band of 4-band 8-bit files alpha by default),
   and masks the other bands when the scene is read;
5. the scene's band order when it has exactly as many bands as the model needs. A scene
   with more, unnamed bands is an error: guessing would silently feed the wrong bands.

Presets of a product (``sentinel2-l1c``, ``sentinel2-l2a``, ``landsat89-c2l2``,
``landsat57-c2l2``) also know how its digital numbers become physical values
(:data:`SCALING`, :func:`preset_scaling`): what a reader applies when the file itself carries
no scale and offset. The plain sensor presets (``sentinel2``, ``landsat8`` ...) name bands only:
the same sensor's files come as DNs of several products or as 8-bit renders.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from geoseg.errors import BandError, ConfigError

__all__ = [
    "CANONICAL_BANDS",
    "LAYOUTS",
    "SCALING",
    "SENSORS",
    "band_roles",
    "preset_scaling",
    "resolve_bands",
]

log = logging.getLogger(__name__)

CANONICAL_BANDS: tuple[str, ...] = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir1",
    "swir2",
)

_S2: Mapping[str, str | None] = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": None,
    "B10": None,
    "B11": "swir1",
    "B12": "swir2",
}
_L8: Mapping[str, str | None] = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B5": "nir",
    "B6": "swir1",
    "B7": "swir2",
    "B8": None,
    "B9": None,
    "B10": None,
    "B11": None,
}
_L7_REFLECTIVE: Mapping[str, str | None] = {
    "B1": "blue",
    "B2": "green",
    "B3": "red",
    "B4": "nir",
    "B5": "swir1",
    "B6": None,
    "B7": "swir2",
}

# Sensor presets: band code (as in file names and band descriptions) -> role; None for
# bands with no spectral role here (panchromatic, cirrus, water vapour, thermal).
SENSORS: Mapping[str, Mapping[str, str | None]] = MappingProxyType(
    {
        "sentinel2": _S2,
        "landsat8": _L8,
        "landsat7": {**_L7_REFLECTIVE, "B8": None},
        "naip": {"B1": "red", "B2": "green", "B3": "blue", "B4": "nir"},
        "rgb": {"B1": "red", "B2": "green", "B3": "blue"},
        # Products: the bands of the plain presets, and the scaling of their DNs (SCALING).
        "sentinel2-l1c": _S2,
        "sentinel2-l2a": {k: v for k, v in _S2.items() if k != "B10"},
        # Collection 2 Level-2: SR_B1..SR_B7 surface reflectance, ST_B10 surface temperature.
        "landsat89-c2l2": {**{f"B{i}": _L8[f"B{i}"] for i in range(1, 8)}, "B10": None},
        # Landsat 4-5 TM and 7 ETM+: SR_B1..SR_B5, SR_B7, ST_B6.
        "landsat57-c2l2": _L7_REFLECTIVE,
    }
)

_S2_1_8 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08")
_S2_10_20 = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

# The band stacks a preset maps by position (band count -> codes in order): the usual
# exports in band-number order. Any other count of unnamed bands is refused.
LAYOUTS: Mapping[str, Mapping[int, tuple[str, ...]]] = MappingProxyType(
    {
        "sentinel2": {
            # 10 m bands; green and NIR also sit at 2 and 4 in the common B04,B03,B02,B08.
            4: ("B02", "B03", "B04", "B08"),
            8: _S2_1_8,
            # the 10 m and 20 m bands
            10: _S2_10_20,
            # Level-2A (no B10) and Level-1C
            12: (*_S2_1_8, "B8A", "B09", "B11", "B12"),
            13: (*_S2_1_8, "B8A", "B09", "B10", "B11", "B12"),
        },
        "landsat8": {
            6: ("B2", "B3", "B4", "B5", "B6", "B7"),
            7: ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
            11: ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
        },
        "landsat7": {
            6: ("B1", "B2", "B3", "B4", "B5", "B7"),  # the reflective bands
            7: ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
        },
        "naip": {3: ("B1", "B2", "B3"), 4: ("B1", "B2", "B3", "B4")},
        "rgb": {3: ("B1", "B2", "B3")},
        "sentinel2-l1c": {
            4: ("B02", "B03", "B04", "B08"),
            10: _S2_10_20,
            13: (*_S2_1_8, "B8A", "B09", "B10", "B11", "B12"),
        },
        "sentinel2-l2a": {
            4: ("B02", "B03", "B04", "B08"),
            10: _S2_10_20,
            12: (*_S2_1_8, "B8A", "B09", "B11", "B12"),
        },
        "landsat89-c2l2": {
            6: ("B2", "B3", "B4", "B5", "B6", "B7"),
            7: ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
        },
        "landsat57-c2l2": {6: ("B1", "B2", "B3", "B4", "B5", "B7")},
    }
)

# Physical value = DN * scale + offset, per band code, for the product presets (reflectance
# 0-1 for reflective bands, kelvin for Landsat surface temperature). A file's own scale and
# offset metadata wins over these.
_S2_L1C = (1e-4, 0.0)  # TOA reflectance x 10000 (harmonised archives, baselines before 04.00)
_S2_L2A = (1e-4, -0.1)  # BOA_ADD_OFFSET -1000 since processing baseline 04.00 (Jan 2022)
_LC2_SR = (2.75e-5, -0.2)  # Landsat Collection 2 Level-2 surface reflectance
_LC2_ST = (0.00341802, 149.0)  # Landsat Collection 2 Level-2 surface temperature, K
SCALING: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "sentinel2-l1c": dict.fromkeys(_S2, _S2_L1C),
        "sentinel2-l2a": dict.fromkeys((k for k in _S2 if k != "B10"), _S2_L2A),
        "landsat89-c2l2": {**{f"B{i}": _LC2_SR for i in range(1, 8)}, "B10": _LC2_ST},
        "landsat57-c2l2": {
            **{f"B{i}": _LC2_SR for i in (1, 2, 3, 4, 5, 7)},
            "B6": _LC2_ST,
        },
    }
)

_ALIASES = {
    "r": "red",
    "g": "green",
    "b": "blue",
    "nir": "nir",
    "nir1": "nir",
    "near-infrared": "nir",
    "swir": "swir1",
    "swir16": "swir1",
    "swir22": "swir2",
    "re1": "rededge1",
    "re2": "rededge2",
    "re3": "rededge3",
    "aerosol": "coastal",
}
_S2_CODE = re.compile(r"^b(0[1-9]|1[0-2]|8a)$")
# Unpadded codes (B1 ... B12) are Sentinel-2's only with B8A among them (Landsat has none).
_S2_UNPADDED = re.compile(r"^b([1-9]|1[0-2]|8a)$")
_CODE = re.compile(r"^B0*(\d{1,2})(A?)$")
_COLOURS = ("red", "green", "blue")


def _role_from_description(desc: str) -> str | None:
    tokens = [t for t in re.split(r"[\s_\-:,()/]+", desc.lower()) if t]
    for tok in tokens:
        if tok in CANONICAL_BANDS:
            return tok
        if tok in _ALIASES:
            return _ALIASES[tok]
    return None


def _code_key(token: str) -> str | None:
    """A band code without zero padding (``b02`` -> ``B2``, ``B8a`` -> ``B8A``), or None."""
    m = _CODE.match(token.strip().upper())
    return f"B{int(m.group(1))}{m.group(2)}" if m else None


def _preset_codes(sensor: str) -> dict[str, str]:
    """Normalised code -> the preset's own spelling of it."""
    return {k: code for code in SENSORS[sensor] if (k := _code_key(code)) is not None}


def _code_of(desc: str, sensor: str) -> str | None:
    """The preset's code of the first band code in a description (``"SR_B4"`` -> ``B4``)."""
    codes = _preset_codes(sensor)
    for tok in re.split(r"[\s_\-:,()/.]+", desc):
        key = _code_key(tok) if tok else None
        if key is not None and key in codes:
            return codes[key]
    return None


def _from_code(desc: str, sensor: str) -> tuple[bool, str | None]:
    """``(known, role)`` of the first band code in a description (``"SR_B4"``) under a preset."""
    code = _code_of(desc, sensor)
    return (False, None) if code is None else (True, SENSORS[sensor][code])


def _codes_text(codes: Sequence[str]) -> str:
    """``B01, B02, B03, B04, B8A`` -> ``B01-B04, B8A`` (runs of three or more collapsed)."""
    runs: list[list[str]] = []
    for code in codes:
        m = _CODE.match(code)
        prev = runs[-1][-1] if runs else None
        pm = _CODE.match(prev) if prev else None
        consecutive = (
            m is not None
            and pm is not None
            and not m.group(2)
            and not pm.group(2)
            and int(m.group(1)) == int(pm.group(1)) + 1
        )
        if consecutive:
            runs[-1].append(code)
        else:
            runs.append([code])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) >= 3 else ", ".join(r) for r in runs)


def _layout_text(sensor: str) -> str:
    return "; ".join(f"{n} ({_codes_text(codes)})" for n, codes in LAYOUTS[sensor].items())


def band_roles(
    descriptions: Sequence[str | None],
    *,
    colorinterp: Sequence[str] = (),
    sensor: str | None = None,
) -> list[str | None]:
    """The canonical role of each scene band, ``None`` where it cannot be told.

    Parameters
    ----------
    descriptions
        The scene's band descriptions (``None`` or ``""`` where a band has none).
    colorinterp
        GDAL colour interpretation names per band (``"red"``, ``"alpha"``, ``"gray"``).
    sensor
        A preset of :data:`SENSORS`: reads band codes in the descriptions and, when no
        band is described, maps the usual stacks of :data:`LAYOUTS` by position.

    Raises
    ------
    ConfigError
        If ``sensor`` is not a known preset.
    BandError
        If ``sensor`` must map unnamed bands by position and their count is not one of its
        stack layouts (the message lists them and how to name the bands instead).

    Examples
    --------
    >>> band_roles([None] * 6, sensor="landsat7")
    ['blue', 'green', 'red', 'nir', 'swir1', 'swir2']
    >>> band_roles([None] * 4, colorinterp=["red", "green", "blue", "alpha"])
    ['red', 'green', 'blue', None]
    """
    if sensor is not None and sensor not in SENSORS:
        raise ConfigError(f"unknown sensor {sensor!r}; valid sensors: {', '.join(SENSORS)}")
    descs = [(d or "").strip() for d in descriptions]
    interp = [str(c).lower() for c in colorinterp] + [""] * max(0, len(descs) - len(colorinterp))
    if sensor is None and descs and _is_sentinel2(descs):
        sensor = "sentinel2"
    roles: list[str | None] = []
    described = False
    for desc in descs:
        role = _role_from_description(desc) if desc else None
        known = role is not None
        if role is None and desc and sensor is not None:
            known, role = _from_code(desc, sensor)
        described |= known
        roles.append(role)
    alpha = [c == "alpha" for c in interp[: len(descs)]]
    if sensor is not None and descs and not described:
        roles = _by_position(sensor, alpha)
    for i, role in enumerate(roles):
        if role is None and interp[i] in _COLOURS:
            roles[i] = interp[i]
    return roles


def _is_sentinel2(descs: Sequence[str]) -> bool:
    """Whether every description is a Sentinel-2 band code (``B03``, or ``B3`` beside ``B8A``)."""
    low = [d.lower() for d in descs]
    if all(_S2_CODE.match(d) for d in low):
        return True
    return "b8a" in low and all(_S2_UNPADDED.match(d) or _S2_CODE.match(d) for d in low)


def preset_scaling(
    sensor: str | None, descriptions: Sequence[str | None]
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-band ``(scales, offsets)`` a product preset gives a scene's digital numbers.

    ``physical = DN * scale + offset`` for each band of the scene, in order: reflectance 0-1
    for reflective bands, kelvin for Landsat surface temperature. Each band's code comes from
    its description (``"SR_B4"``, ``"B04"``) or, when no band is described, from its position
    in the preset's stack of that many bands (:data:`LAYOUTS`). A reader applies these only
    when the file carries no scale and offset of its own.

    Parameters
    ----------
    sensor
        A preset name; ``None`` or a preset that names bands only gives ``None``.
    descriptions
        The scene's band descriptions (``None``/``""`` where a band has none); their number
        is the scene's band count.

    Returns
    -------
    tuple or None
        ``(scales, offsets)``, one per scene band (``(1.0, 0.0)`` for a band the preset does
        not know), or ``None`` when the preset states no scaling or no band can be placed.

    Examples
    --------
    >>> preset_scaling("landsat89-c2l2", [None] * 7)[1]
    (-0.2, -0.2, -0.2, -0.2, -0.2, -0.2, -0.2)
    >>> preset_scaling("sentinel2-l2a", ["B02", "B8A"])
    ((0.0001, 0.0001), (-0.1, -0.1))
    >>> preset_scaling("sentinel2", [None] * 13) is None
    True
    """
    if sensor is None or sensor not in SCALING:
        if sensor is not None and sensor not in SENSORS:
            raise ConfigError(f"unknown sensor {sensor!r}; valid sensors: {', '.join(SENSORS)}")
        return None
    table = SCALING[sensor]
    descs = [(d or "").strip() for d in descriptions]
    found: list[str | None] = [_code_of(d, sensor) if d else None for d in descs]
    if not any(found):
        layout = LAYOUTS[sensor].get(len(descs))
        if layout is None:
            return None
        found = list(layout)
    pairs = [table.get(code, (1.0, 0.0)) if code else (1.0, 0.0) for code in found]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _by_position(sensor: str, alpha: Sequence[bool]) -> list[str | None]:
    """Roles of unnamed bands from a preset's stack layout.

    Bands marked alpha are left out, unless the stack fits the preset only with them: GDAL
    marks the 4th band of any 4-band 8-bit GeoTIFF written without ``PHOTOMETRIC`` alpha,
    so an RGB + NIR (``naip``) or B02-B04 + B08 (``sentinel2``) file often carries that flag;
    the user's sensor then wins, with a warning.
    """
    n = len(alpha)
    spectral = [i for i, a in enumerate(alpha) if not a]
    marked = [i + 1 for i, a in enumerate(alpha) if a]
    layouts = LAYOUTS[sensor]
    if marked and n in layouts:
        spectral = list(range(n))
        log.warning(
            "band %s is marked alpha, but sensor %r stacks of %d bands have %s there: taken "
            "as that band; GDAL still masks the pixels where it is 0 (clear the flag with "
            "gdal_edit.py -colorinterp_%d undefined SCENE)",
            marked[0], sensor, n, layouts[n][marked[0] - 1], marked[0],
        )  # fmt: skip
    layout = layouts.get(len(spectral))
    if layout is None:
        k = len(spectral)
        extra = f" besides alpha band {', '.join(map(str, marked))}" if marked else ""
        raise BandError(
            f"sensor {sensor!r} names unnamed bands by position only in its usual stacks of "
            f"{_layout_text(sensor)}, but the scene has {k} band{'s' if k != 1 else ''}{extra}; "
            "say which band is which with --bands (or band descriptions such as 'B3 green')"
        )
    roles: list[str | None] = [None] * n
    for i, code in zip(spectral, layout, strict=True):
        roles[i] = SENSORS[sensor][code]
    return roles


def resolve_bands(
    needed: Sequence[str],
    *,
    count: int,
    roles: Sequence[str | None],
    explicit: Sequence[int] | None = None,
    model_name: str = "the model",
) -> tuple[int, ...]:
    """1-based scene band numbers feeding a model whose inputs are ``needed`` (in order).

    Raises
    ------
    BandError
        If the scene does not have the bands, with the roles it lacks and how to map them.
    """
    need = ", ".join(needed)
    if explicit is not None:
        if len(explicit) != len(needed):
            raise BandError(
                f"--bands lists {len(explicit)} bands but {model_name} needs {len(needed)} ({need})"
            )
        bad = [b for b in explicit if not 1 <= b <= count]
        if bad:
            raise BandError(f"band {bad[0]} does not exist; the scene has bands 1..{count}")
        return tuple(explicit)
    if count < len(needed):
        raise BandError(
            f"the scene has {count} band{'s' if count != 1 else ''} but {model_name} needs "
            f"{len(needed)} ({need})"
        )
    by_role = {r: i + 1 for i, r in reversed(list(enumerate(roles))) if r is not None}
    if all(n in by_role for n in needed):
        return tuple(by_role[n] for n in needed)
    known = [r for r in roles if r is not None]
    missing = [n for n in needed if n not in by_role]
    if known:
        raise BandError(
            f"the scene's bands are {', '.join(r or '?' for r in roles)} but {model_name} "
            f"needs {need} (missing: {', '.join(missing)}); map them with --bands"
        )
    if count > len(needed):
        raise BandError(
            f"the scene's {count} bands are unnamed and {model_name} needs {len(needed)} "
            f"({need}); say which with --bands (e.g. --bands "
            f"{','.join(str(i) for i in range(1, len(needed) + 1))}) or --sensor"
        )
    return tuple(range(1, len(needed) + 1))
