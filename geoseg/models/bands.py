"""Band roles: which scene bands feed a model, by name.

A model card names its input bands with canonical roles (``red``, ``green``, ``nir`` ...).
A scene's bands are matched to those roles, in this order of trust:

1. explicit 1-based band numbers given by the user (``--bands 4,3,2,8``);
2. a sensor preset (``--sensor sentinel2``) mapping band codes or positions to roles;
3. the scene's band descriptions (``"B4 NIR"``, ``"red"``; Sentinel-2 codes ``B02``) and
   colour interpretation (an RGB GeoTIFF's red/green/blue);
4. the scene's band order when it has exactly as many bands as the model needs. A scene
   with more, unnamed bands is an error: guessing would silently feed the wrong bands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from geoseg.errors import BandError, ConfigError

__all__ = ["CANONICAL_BANDS", "SENSORS", "band_roles", "resolve_bands"]

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

# Sensor presets: band code (as in file names and band descriptions) -> role, and the role
# order of the usual band stack for that sensor (used when descriptions are absent).
SENSORS: Mapping[str, Mapping[str, str]] = {
    "sentinel2": {
        "B01": "coastal",
        "B02": "blue",
        "B03": "green",
        "B04": "red",
        "B05": "rededge1",
        "B06": "rededge2",
        "B07": "rededge3",
        "B08": "nir",
        "B8A": "nir08",
        "B11": "swir1",
        "B12": "swir2",
    },
    "landsat8": {
        "B1": "coastal",
        "B2": "blue",
        "B3": "green",
        "B4": "red",
        "B5": "nir",
        "B6": "swir1",
        "B7": "swir2",
    },
    "landsat7": {
        "B1": "blue",
        "B2": "green",
        "B3": "red",
        "B4": "nir",
        "B5": "swir1",
        "B7": "swir2",
    },
    "naip": {"B1": "red", "B2": "green", "B3": "blue", "B4": "nir"},
    "rgb": {"B1": "red", "B2": "green", "B3": "blue"},
}

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


def _role_from_description(desc: str) -> str | None:
    tokens = [t for t in re.split(r"[\s_\-:,()/]+", desc.lower()) if t]
    for tok in tokens:
        if tok in CANONICAL_BANDS:
            return tok
        if tok in _ALIASES:
            return _ALIASES[tok]
    return None


def _code_key(token: str) -> str:
    """Normalise a band code for preset lookup: ``b2`` -> ``B2``, ``b8a`` -> ``B8A``."""
    return token.upper()


def band_roles(
    descriptions: Sequence[str | None],
    *,
    colorinterp: Sequence[str] = (),
    sensor: str | None = None,
) -> list[str | None]:
    """The canonical role of each scene band, ``None`` where it cannot be told.

    Raises
    ------
    ConfigError
        If ``sensor`` is not a known preset.
    """
    if sensor is not None and sensor not in SENSORS:
        raise ConfigError(f"unknown sensor {sensor!r}; valid sensors: {', '.join(SENSORS)}")
    descs = [d or "" for d in descriptions]
    if sensor is None and descs and all(_S2_CODE.match(d.strip().lower()) for d in descs):
        sensor = "sentinel2"
    preset = SENSORS.get(sensor or "", {})
    roles: list[str | None] = []
    for i, desc in enumerate(descs):
        role = _role_from_description(desc) if desc else None
        if role is None and preset:
            code = desc.split()[0] if desc.strip() else f"B{i + 1}"
            role = preset.get(_code_key(code)) or preset.get(_code_key(code).replace("B0", "B"))
        if role is None and i < len(colorinterp) and colorinterp[i] in ("red", "green", "blue"):
            role = colorinterp[i]
        roles.append(role)
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
