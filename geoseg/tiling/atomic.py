"""Files that appear complete or not at all, written without following anyone's symlinks.

Every output is written under a temporary name next to it (same folder, so the final
:func:`commit` is an atomic ``os.replace``) and renamed when complete. A temporary is created
by :func:`create_temporary` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under an unpredictable
name (``.<name>.partial-<16 hex digits><suffix>``): it is a new regular file of this
process, never an existing file nor a link planted by another user of a shared folder, and
two runs never share one. The writer (GDAL, SQLite) then writes into that file.

The final rename replaces a symbolic link at the destination itself; it never writes through
it (``rename(2)`` does not follow the last component of its target).
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

__all__ = ["PARTIAL", "commit", "create_temporary", "write_text_atomic"]

PARTIAL = ".partial-"
"""What every temporary's name holds after ``.<final name>``: ``.<name>.partial-<hex>``."""

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_FLAGS |= getattr(os, "O_CLOEXEC", 0)


def create_temporary(final: str | os.PathLike[str], *, suffix: str | None = None) -> Path:
    """Create an empty temporary file for ``final`` in its folder; returns its path.

    The name is ``.<final name>.partial-<random><suffix>`` (``suffix`` defaults to the final
    name's own suffix, so drivers that look at the extension see the right one). The file is
    created with ``O_EXCL | O_NOFOLLOW`` and the permissions a new file gets (0666 less the
    umask), as the final file would.

    Raises
    ------
    OSError
        When the folder cannot be written (its errno tells why: ``ENOSPC``, ``EACCES``...).
    """
    path = Path(final)
    ext = path.suffix if suffix is None else suffix
    for _ in range(100):
        tmp = path.with_name(f".{path.name}{PARTIAL}{secrets.token_hex(8)}{ext}")
        try:
            fd = os.open(tmp, _FLAGS, 0o666)
        except FileExistsError:  # 2**64 names: only ever a planted file; take another
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def commit(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move a finished temporary to its final name (atomic; a symlink there is replaced)."""
    os.replace(tmp, final)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    """Write a small text file through a temporary: it appears complete or not at all."""
    tmp = create_temporary(final)
    try:
        # O_NOFOLLOW again: the file is the one just created, or the write fails.
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        commit(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
