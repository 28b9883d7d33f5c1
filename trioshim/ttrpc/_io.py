"""Socket reads and writes for the ttrpc connections, with fewer trips through the scheduler.

``trio.SocketStream`` yields to the scheduler on every ``receive_some`` and ``send_all`` even
when the kernel could answer at once, and ``receive_some`` tries a ``recv`` that fails with
EAGAIN before every wait. A ttrpc connection has one reader and serialises its writers itself,
so it can use the (already non-blocking) socket's descriptor directly:

* :func:`receive_some_fd` waits for readability first, then reads once: one scheduler trip
  and one ``read`` per chunk. It is a checkpoint (cancellable while waiting).
* :func:`write_some_fd` writes what the kernel takes at once, never yielding.
* :func:`send_all_fd` writes at once and waits for room only when the socket buffer is full.
  It is *not* a checkpoint when the write completes at once; cancelled while waiting, it may
  have written part of ``data``.

Errors are mapped like ``trio.SocketStream`` maps them: a socket error is
``trio.BrokenResourceError``; a socket closed (by another task, or before the call) is
``trio.ClosedResourceError``.
"""

from __future__ import annotations

import os

import trio


def stream_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket of a ``trio.SocketStream`` (for the functions here), else None."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    return None


def _fileno(sock: trio.socket.SocketType) -> int:
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the socket was closed")
    return fd


async def receive_some_fd(sock: trio.socket.SocketType, max_bytes: int) -> bytes:
    """Wait until ``sock`` is readable, then read up to ``max_bytes`` (``b""`` at EOF)."""
    while True:
        fd = _fileno(sock)
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue  # spurious wakeup
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc


def write_some_fd(sock: trio.socket.SocketType, data: bytes | memoryview) -> int:
    """Write what the kernel takes now (maybe nothing); the count of bytes written."""
    fd = _fileno(sock)
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc


async def send_all_fd(sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
    """Write all of ``data``; returns without yielding when the kernel takes it at once."""
    sent = write_some_fd(sock, data)
    if sent == len(data):
        return
    rest = memoryview(data)[sent:]
    while rest:
        await trio.lowlevel.wait_writable(_fileno(sock))
        rest = rest[write_some_fd(sock, rest) :]
