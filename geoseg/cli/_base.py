"""Shared pieces of the commands: the ``geoseg`` group, error handling, logging, progress."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from geoseg import __version__
from geoseg.errors import ConfigError, GeosegError

F = TypeVar("F", bound=Callable[..., Any])

_PALETTE = ("#000000", "#1f78b4", "#e31a1c", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928")


MAX_LINE = 1000
"""Longest line of an error message shown (a value quoted in full could be megabytes)."""


def _fail(err: BaseException, *, verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    lines = [
        ln if len(ln) <= MAX_LINE else f"{ln[: MAX_LINE - 3]}..." for ln in str(err).split("\n")
    ]
    click.echo(f"geoseg: error: {chr(10).join(lines)}", err=True)


@contextmanager
def _interrupts(*, verbose: bool) -> Iterator[None]:
    """Ctrl-C and SIGTERM (systemd, Airflow, kill) stop a command alike, as KeyboardInterrupt.

    From that moment Dask's loggers are muted (unless ``-v``): a run that stops cancels the
    blocks a thread may be gathering, and Dask logs that at ERROR, above the one line that
    says the command was interrupted.
    """
    import signal

    from geoseg.scheduler import DaskLogMute

    with DaskLogMute() as mute:

        def interrupt(signum: int, frame: Any) -> None:
            if not verbose:
                mute.now()
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _interrupt_in(err: BaseException) -> bool:
    """Whether ``err`` is, or was raised while handling, a Ctrl-C or SIGTERM.

    An interrupt can land inside a library's cleanup (``np.savez``'s zip file, say), whose
    own error then replaces it: the run was still interrupted, not broken.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _handles_errors(fn: F) -> F:
    """Turn GeosegError into one line and exit 1; Ctrl-C or SIGTERM into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        _setup_logging(verbose=verbose, quiet=bool(kwargs.get("quiet")))
        try:
            with _interrupts(verbose=verbose):
                return fn(*args, **kwargs)
        except Exception as err:
            if _interrupt_in(err):
                _interrupted(fn.__name__)
            if isinstance(err, GeosegError):
                _fail(err, verbose=verbose)
                sys.exit(1)
            raise
        except KeyboardInterrupt:
            _interrupted(fn.__name__)
        finally:
            logging.captureWarnings(False)

    return wrapper  # type: ignore[return-value]


JOURNAL_META = "geoseg.journal"
"""Click context key: the journal a command keeps for ``--resume`` (``geoseg run``)."""


def _interrupted(command: str) -> None:
    click.echo(f"geoseg: interrupted; no output was finished{_resume_hint()}", err=True)
    sys.exit(130)


def _resume_hint() -> str:
    """What ``--resume`` would reuse after an interrupt: what the journal kept, if anything."""
    ctx = click.get_current_context(silent=True)
    journal = ctx.meta.get(JOURNAL_META) if ctx is not None else None
    if journal is None:
        return ""
    from geoseg.run.journal import journal_contents

    kept = journal_contents(journal)
    if kept is None:
        return "; no block had finished, so there is nothing for --resume to reuse"
    blocks, keys = kept
    parts = [f"the {blocks} finished block{'s' if blocks != 1 else ''}"] if blocks else []
    if keys:
        parts.append("the scene statistics")
    return f"; the same command with --resume reuses {' and '.join(parts)}"


@contextmanager
def _usage_errors(
    *, verbose: bool, kinds: tuple[type[GeosegError], ...] = (ConfigError,)
) -> Iterator[None]:
    """Errors in the command line's option values: one line and exit 2 (STYLE.md)."""
    try:
        yield
    except kinds as err:
        _fail(err, verbose=verbose)
        sys.exit(2)


def _setup_logging(*, verbose: bool, quiet: bool) -> None:
    """geoseg's own warnings on stderr (not with ``--quiet``); those of the libraries
    (Python warnings of rasterio, torch..., GDAL's messages) only with ``-v``."""
    from geoseg.scheduler import WARNING_LOGGERS

    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="geoseg: %(levelname)s: %(message)s", force=True)
    for noisy in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)
    logging.captureWarnings(True)
    for name in WARNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


def _worker_log_level(*, verbose: bool) -> int:
    """Log level of a local cluster's workers, which log to this terminal: quiet unless
    ``-v``. A failed block reaches the user as one line anyway, and what workers log while
    a stopped command closes its cluster (a heartbeat to a scheduler already gone) is noise.
    """
    return logging.INFO if verbose else logging.CRITICAL


def _common(fn: F) -> F:
    fn = click.option("-v", "--verbose", is_flag=True, help="Debug logging and tracebacks.")(fn)
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")(fn)


@contextmanager
def _progress(*, quiet: bool, label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a rich bar on stderr when it is a terminal."""
    if quiet or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
def main() -> None:
    """Segment large satellite GeoTIFFs into georeferenced polygons."""
    from geoseg.scheduler import freeze_gc_at_exit

    freeze_gc_at_exit()


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _floats(text: str | None, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _split(text))
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be comma-separated numbers") from None
