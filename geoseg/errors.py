"""The exception hierarchy of geoseg.

Every error geoseg raises on purpose derives from :class:`GeosegError`; each subclass also
derives from the builtin a caller would naturally catch (``ValueError``, ``OSError`` ...).
The CLI turns any ``GeosegError`` into one line on stderr and exit code 1 (exit code 2 for
a malformed command line: an invalid option value, see ``geoseg.cli``).

A ``GeosegError`` raised inside a Dask task travels back to the client as a
:class:`TaskFailure` value rather than as an exception (see there).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass


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


class JournalError(GeosegError, ValueError):
    """A run's journal of finished blocks (for ``--resume``) holds a block it cannot read."""


class WorkerLostError(GeosegError, RuntimeError):
    """Dask lost the workers running a block too many times (killed, out of memory)."""


class ClusterError(GeosegError, RuntimeError):
    """A Dask cluster cannot run this job: no workers, or workers without geoseg or the inputs."""


class DeviceMemoryError(GeosegError, MemoryError):
    """One model tile does not fit in the memory of the device running the model."""


class WorkflowError(GeosegError, ValueError):
    """A batch workflow file is invalid."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskFailure:
    """A :class:`GeosegError` raised in a Dask task, returned to the client as plain data.

    Letting Dask ship the exception itself goes wrong twice. Dask pickles an exception with
    its whole chain of causes, and GDAL's exception types cannot be unpickled, so the client
    would receive a bare ``Exception`` instead of, say, a :class:`SceneReadError`. And a
    geoseg error is deterministic (a corrupt block, no GPU, weights that do not fit the
    card): retrying the task repeats it, with a page of worker log per try. A task returns
    a ``TaskFailure`` instead (Dask neither logs nor retries a returned value) and the
    client raises :meth:`error`.
    """

    kind: type[GeosegError]
    message: str
    worker_traceback: str = ""

    @classmethod
    def of(cls, err: GeosegError) -> TaskFailure:
        """Capture ``err`` (its type, message and the formatted worker traceback)."""
        return cls(
            kind=type(err),
            message=str(err),
            worker_traceback="".join(traceback.format_exception(err)),
        )

    def error(self) -> GeosegError:
        """The error to raise on the client; the worker's traceback is a note (``-v``)."""
        err = self.kind(self.message)
        if self.worker_traceback:
            err.add_note(f"raised in a Dask task:\n{self.worker_traceback.rstrip()}")
        return err
