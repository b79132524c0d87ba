"""One scene end to end: plan, worker task, outputs, journal, provenance, pipeline.

The package is also the Python API's entry point: ``geoseg.run(scene, classes=[...])`` calls
:func:`geoseg.run.api.run` (the module is callable), so the folder of the data flow and the
one-call API share the name DESIGN.md gives them.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from geoseg.run.api import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
