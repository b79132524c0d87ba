"""Process memory: the peak a process reached, and handing freed heap back to the OS."""

from __future__ import annotations

import functools
import sys
from typing import Any

__all__ = ["peak_rss_mb", "release_freed_memory"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory.
    ``ru_maxrss`` is not used there: the kernel carries it across ``execve``, so a process
    started by a big parent (a benchmark that has loaded torch) would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def release_freed_memory() -> bool:
    """Give the memory this process has freed back to the OS now (glibc's ``malloc_trim``);
    returns whether any was given back (always ``False`` without glibc).

    glibc keeps freed heap memory for reuse, and the client's large arrays come and go (a
    block's classes, joining an object of millions of vertices), so without this the freed
    memory of one block stays in the client's RSS. The client trims once per block, which
    costs far fewer page faults than a fixed small ``M_MMAP_THRESHOLD`` (every large array
    mapped and unmapped).
    """
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
