"""Socket reads and writes for the ttrpc connections, with fewer trips through the scheduler.

``trio.SocketStream`` yields to the scheduler on every ``receive_some`` and ``send_all`` even
when the kernel could answer at once, and ``receive_some`` tries a ``recv`` that fails with
EAGAIN before every wait. A ttrpc connection has one reader and serialises its writers itself,
so it can talk to the (already non-blocking) file descriptor directly:

* :func:`receive_some_fd` waits for readability first, then reads once: one scheduler trip
  and one ``read`` per chunk. It is a checkpoint (cancellable while waiting).
* :func:`send_all_fd` writes at once and waits for room only when the socket buffer is full.
  It is *not* a checkpoint when the write completes at once; cancelled while waiting, it may
  have written part of ``data``.

Errors are mapped like ``trio.SocketStream`` maps them: a socket error is
``trio.BrokenResourceError``; a descriptor closed by another task while waiting is
``trio.ClosedResourceError``.
"""

from __future__ import annotations

import os

import trio


def stream_fd(stream: trio.abc.Stream) -> int | None:
    """The descriptor of a ``trio.SocketStream`` (usable with the functions here), else None."""
    if isinstance(stream, trio.SocketStream):
        fd = stream.socket.fileno()
        if fd >= 0:
            return fd
    return None


async def receive_some_fd(fd: int, max_bytes: int) -> bytes:
    """Wait until ``fd`` is readable, then read up to ``max_bytes`` (``b""`` at EOF)."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue  # spurious wakeup
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc


async def send_all_fd(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``; returns without yielding when the kernel takes it at once."""
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
    if sent == len(data):
        return
    rest = memoryview(data)[sent:]
    while rest:
        await trio.lowlevel.wait_writable(fd)
        try:
            sent = os.write(fd, rest)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
        rest = rest[sent:]
