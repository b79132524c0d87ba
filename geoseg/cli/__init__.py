"""The ``geoseg`` command line.

A malformed command line exits 2: click's own checks (a missing option, a bad choice) and
option values geoseg rejects (a :class:`~geoseg.errors.ConfigError` while the options are
read: ``--tile 100``, ``--scheduler foo``). Any other :class:`~geoseg.errors.GeosegError`
(a missing or corrupt scene, an existing output, a class no model has, no GPU) exits 1.
Either way one line on stderr, and a traceback only with ``-v``. Progress is drawn with rich
on stderr when it is a terminal, unless ``--quiet``.
"""

from geoseg.cli import batch, models, run, training  # noqa: F401  (each registers its commands)
from geoseg.cli._base import main

__all__ = ["main"]
