"""One run per output: a lock file next to the output while a run writes it.

``.<name>.gpkg.lock`` holds ``pid <pid> host <host> since <UTC time>``. It appears with its
content in one step (written to a new temporary, then ``link(2)``-ed to the lock's name,
which fails if the name exists and never follows a link), and the process that made it
holds an ``flock`` on it for as long as it runs. So:

- a second run on the same output finds the lock and refuses with one line naming the
  holder (:class:`OutputLockedError`);
- a lock left by a run that died without releasing it (``kill -9``, a power cut) is stale:
  on the same host its ``flock`` is free (the kernel drops it with the process), or its pid
  is gone. It is replaced, while holding its ``flock`` and after checking the name still
  points to it, so two runs replacing one stale lock cannot both win. A lock from another
  host (a shared file system) is never taken over: the message says to remove it if that
  run is gone;
- it is released on every way out of the ``with`` block (return, exception, Ctrl-C).

Within one process the lock is re-entrant for the thread that holds it (the CLI takes it
before planning, :func:`geoseg.run.pipeline.run_scene` takes it again); another thread of
the same process is refused like another process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from geoseg.errors import GeosegError, OutputWriteError
from geoseg.tiling.atomic import create_temporary

__all__ = ["LockHolder", "OutputLockedError", "lock_holder", "output_lock"]

log = logging.getLogger(__name__)

_held: dict[str, tuple[int, int]] = {}  # lock path -> (thread id, depth)
_held_guard = threading.Lock()


class OutputLockedError(GeosegError, BlockingIOError):
    """Another run is writing the same output."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LockHolder:
    """Who holds (or held) an output's lock."""

    pid: int | None = None
    host: str = ""
    since: str = ""

    def __str__(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        host = f" on {self.host}" if self.host else ""
        since = f" since {self.since}" if self.since else ""
        return f"{pid}{host}{since}"


def _parse(text: str) -> LockHolder:
    words = text.split()
    values = dict(zip(words[::2], words[1::2], strict=False))
    pid = values.get("pid", "")
    return LockHolder(
        pid=int(pid) if pid.isdigit() else None,
        host=values.get("host", ""),
        since=values.get("since", ""),
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_holder(lock: Path) -> LockHolder | None:
    """The live run holding ``lock`` now, or ``None`` (free, or stale); creates nothing."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        holder = _parse(os.read(fd, 4096).decode("utf-8", "replace"))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        if holder.host and holder.host != socket.gethostname():
            return holder  # cannot tell from here: taken as live
        return None
    finally:
        os.close(fd)


def _lock_text() -> str:
    since = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return f"pid {os.getpid()} host {socket.gethostname()} since {since}\n"


def _try_create(lock: Path) -> int | None:
    """Our lock, made in one step with its content and our flock; ``None`` if it exists."""
    tmp = create_temporary(lock, suffix="")
    fd = os.open(tmp, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, _lock_text().encode())
        try:
            os.link(tmp, lock)  # fails if the name exists; never follows a link there
        except FileExistsError:
            os.close(fd)
            return None
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if_stale(lock: Path, output: Path) -> None:
    """Remove ``lock`` if its run is gone (see the module docs); else raise."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return  # released meanwhile: try again
    except OSError as err:  # ELOOP: a symbolic link, not a geoseg lock
        raise OutputLockedError(
            f"{str(lock)!r} is not a geoseg lock ({err.strerror}); remove it, then run again"
        ) from err
    try:
        holder = _parse(os.read(fd, 4096).decode("utf-8", "replace"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(
                f"another geoseg run ({holder}) is writing {str(output)!r}; wait for it to "
                "finish or choose another -o"
            ) from None
        here = socket.gethostname()
        if holder.host and holder.host != here:
            raise OutputLockedError(
                f"{str(output)!r} is locked by a geoseg run on {holder.host} ({holder}); if "
                f"that run is gone, remove {str(lock)!r}"
            )
        if holder.pid is not None and holder.pid != os.getpid() and _pid_alive(holder.pid):
            # Our flock got through, so that process holds no lock: its pid was reused.
            log.debug("lock %s of pid %s: pid reused, lock stale", lock, holder.pid)
        st, mine = os.stat(lock, follow_symlinks=False), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):  # still the stale one
            os.unlink(lock)
            log.info("removed the stale lock of a run that is gone (%s): %s", holder, lock)
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str], *, lock: Path | None = None) -> Iterator[Path]:
    """Hold the lock of ``output`` (``.<name>.lock`` beside it) for the ``with`` block.

    Raises
    ------
    OutputLockedError
        Another run (another process, or another thread of this one) holds it.
    OutputWriteError
        The lock cannot be created: the folder is not writable, or the disk is full.
    """
    out = Path(output)
    path = lock or out.with_name(f".{out.name}.lock")
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _held_guard:
        owner = _held.get(key)
        if owner is not None:
            if owner[0] != me:
                raise OutputLockedError(
                    f"another run in this process is writing {str(out)!r}; choose another -o"
                )
            _held[key] = (me, owner[1] + 1)
    if owner is not None:  # re-entered by the thread that holds it
        try:
            yield path
        finally:
            with _held_guard:
                tid, depth = _held[key]
                _held[key] = (tid, depth - 1)
        return
    fd = _acquire(path, out)
    with _held_guard:
        _held[key] = (me, 1)
    try:
        yield path
    finally:
        with _held_guard:
            _held.pop(key, None)
        _release(path, fd)


def _acquire(path: Path, out: Path) -> int:
    for _ in range(20):
        try:
            fd = _try_create(path)
        except OSError as err:
            folder = str(out.parent.absolute())
            if err.errno == errno.ENOSPC:
                raise OutputWriteError(f"no space left on {folder!r}") from err
            raise OutputWriteError(
                f"output folder {folder!r} is not writable ({err.strerror or err}); "
                "choose another -o"
            ) from err
        if fd is not None:
            return fd
        _remove_if_stale(path, out)
    raise OutputLockedError(f"could not take the lock {str(path)!r}; try again")


def _release(path: Path, fd: int) -> None:
    try:
        st, mine = os.stat(path, follow_symlinks=False), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
