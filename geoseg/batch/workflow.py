"""A batch workflow: the scenes, one run configuration, and how to run them.

A :class:`Workflow` is what :func:`geoseg.batch.workflow_file.load_workflow` makes of a
validated workflow file; the runner (:mod:`geoseg.batch.runner`) and the manifest
(:mod:`geoseg.batch.manifest`) read it. The file's schema is documented in
``workflows/README.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.batch.manifest import Scene
from geoseg.config import RunConfig

__all__ = ["TEMPLATE_FIELDS", "Workflow"]


TEMPLATE_FIELDS = ("stem", "name", "parent", "date", "id")


@dataclass(frozen=True, kw_only=True, slots=True)
class Workflow:
    """A validated workflow file.

    ``warnings``: what is valid but likely not what was meant, as ``file:line: key: text``
    (an input pattern whose folder holds no matching file yet).
    """

    path: Path
    name: str
    scenes: tuple[Scene, ...]
    config: RunConfig
    folder: Path
    overwrite: bool
    scheduler: str
    workers: int | None
    threads: int | None
    concurrency: int
    retries: int
    config_hash: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def max_attempts(self) -> int:
        return 1 + self.retries
