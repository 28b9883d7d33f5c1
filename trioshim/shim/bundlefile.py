"""Reading a bundle's small files (``config.json`` and the like) from inside the event loop.

They are a few kB on a local disk, so the daemon reads them in its own thread: a worker thread
costs a fresh daemon more than the read (docs/benchmarks.md). But a read in the event loop
must never wait: what sits at such a path is opened without blocking (a FIFO there would
otherwise stall the daemon, and in shared mode every daemon of the process) and must be a
regular file of sane size; anything else is an :class:`OSError` like a missing file.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

__all__ = ["MAX_BUNDLE_FILE", "read_bundle_file"]

#: Far above any OCI spec containerd writes (a few kB; megabytes with thousands of mounts).
MAX_BUNDLE_FILE: Final = 16 << 20


def read_bundle_file(path: str, limit: int = MAX_BUNDLE_FILE) -> bytes:
    """The whole of the regular file ``path``; OSError when it is missing, not a regular
    file (``EINVAL``) or larger than ``limit`` bytes (``EFBIG``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
        chunks = []
        left = limit + 1  # a file that grew since fstat still stops at the limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
        return b"".join(chunks)
    finally:
        os.close(fd)
