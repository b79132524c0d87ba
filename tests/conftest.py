"""Shared fixtures: tiny real GeoTIFFs, a quickly trained real model, the shared data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import train_tiny_model, write_scene

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEOSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(request: pytest.FixtureRequest) -> Path:
    """A real smp U-Net trained for a few seconds on synthetic water/roads scenes.

    Cached in pytest's cache folder, keyed by the training code and the torch version, so
    it is trained once per machine rather than once per session.
    """
    import hashlib

    import torch

    source = (Path(__file__).parent / "helpers.py").read_bytes()
    key = hashlib.sha256(source + torch.__version__.encode()).hexdigest()[:16]
    path = request.config.cache.mkdir("geoseg") / f"tiny-{key}.safetensors"
    if not path.exists():
        train_tiny_model(path)
    return path


@pytest.fixture
def make_scene(tmp_path: Path) -> Callable[..., tuple[Path, object]]:
    """``make_scene(height, width, **kw) -> (path, truth)`` in ``tmp_path``."""
    counter = iter(range(1000))

    def make(height: int, width: int, **kwargs: object) -> tuple[Path, object]:
        path = tmp_path / f"scene{next(counter)}.tif"
        truth = write_scene(path, height, width, **kwargs)  # type: ignore[arg-type]
        return path, truth

    return make
