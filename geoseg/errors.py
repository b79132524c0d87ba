"""The exception hierarchy of geoseg.

Every error geoseg raises on purpose derives from :class:`GeosegError`; each subclass also
derives from the builtin a caller would naturally catch (``ValueError``, ``OSError`` ...).
The CLI turns any ``GeosegError`` into one line on stderr and exit code 1.
"""


class GeosegError(Exception):
    """Root of all geoseg errors."""


class ConfigError(GeosegError, ValueError):
    """A parameter, option or configuration value is invalid."""


class SceneReadError(GeosegError, OSError):
    """A scene is missing, unreadable or not a raster."""


class BandError(GeosegError, ValueError):
    """A scene does not provide the bands a model needs."""


class ModelCardError(GeosegError, ValueError):
    """A model file or its card is missing, malformed or inconsistent with its weights."""


class ClassNotAvailableError(GeosegError, ValueError):
    """A requested class is not produced by any selected model."""


class OutputExistsError(GeosegError, FileExistsError):
    """An output file exists and overwriting was not requested."""


class OutputWriteError(GeosegError, OSError):
    """An output could not be written."""


class WorkflowError(GeosegError, ValueError):
    """A batch workflow file is invalid."""
