"""geoseg: segment large satellite GeoTIFFs into georeferenced polygons.

The public Python API, importable from the package root (``from geoseg import run_scene``).
Names are loaded on first use, so ``import geoseg`` stays light (no torch, no Dask).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("geoseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

# Public name -> module that defines it ("run" is the callable module geoseg.run itself).
_API = {
    "run": "",
    "load_model": "geoseg.run.api",
    "RunResult": "geoseg.run.api",
    "GeosegError": "geoseg.errors",
    "InferenceOptions": "geoseg.config",
    "RunConfig": "geoseg.config",
    "run_config": "geoseg.config",
    "ModelCard": "geoseg.models.card",
    "read_card": "geoseg.models.card",
    "load_network": "geoseg.models.registry",
    "plan_run": "geoseg.run.plan",
    "RunSummary": "geoseg.run.pipeline",
    "run_scene": "geoseg.run.pipeline",
    "open_execution": "geoseg.scheduler",
    "Workflow": "geoseg.batch.workflow",
    "load_workflow": "geoseg.batch.workflow_file",
    "run_workflow": "geoseg.batch.runner",
}

__all__ = [
    "GeosegError",
    "InferenceOptions",
    "ModelCard",
    "RunConfig",
    "RunResult",
    "RunSummary",
    "Workflow",
    "__version__",
    "load_model",
    "load_network",
    "load_workflow",
    "open_execution",
    "plan_run",
    "read_card",
    "run",
    "run_config",
    "run_scene",
    "run_workflow",
]

if TYPE_CHECKING:
    from geoseg.batch.runner import run_workflow
    from geoseg.batch.workflow import Workflow
    from geoseg.batch.workflow_file import load_workflow
    from geoseg.config import InferenceOptions, RunConfig, run_config
    from geoseg.errors import GeosegError
    from geoseg.models.card import ModelCard, read_card
    from geoseg.models.registry import load_network
    from geoseg.run.api import RunResult, load_model, run
    from geoseg.run.pipeline import RunSummary, run_scene
    from geoseg.run.plan import plan_run
    from geoseg.scheduler import open_execution


def __getattr__(name: str) -> Any:
    if name == "run":
        return importlib.import_module("geoseg.run")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
