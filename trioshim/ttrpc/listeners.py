"""Unix listeners for a ttrpc server: bound here, or inherited as an already listening fd."""

from __future__ import annotations

import os
import socket as _stdlib_socket
from typing import Final

import trio

__all__ = ["listen_backlog", "open_unix_listener", "unix_listener_from_fd"]


_SOMAXCONN_PATH: Final = "/proc/sys/net/core/somaxconn"
_BACKLOG_LIMIT: Final = 2**31 - 1  # listen() takes a C int


def listen_backlog() -> int:
    """The system's maximum listen backlog, what Go's ``net.Listen`` uses: the value of
    ``net.core.somaxconn`` (the kernel clamps any larger backlog to it anyway), else the
    compile-time ``SOMAXCONN``. Python's ``socket.SOMAXCONN`` is that constant (128 with
    older headers) and is not what the running kernel allows: a burst of connections beyond a
    small backlog is refused (``EAGAIN`` on a non-blocking unix socket connect)."""
    try:
        with open(_SOMAXCONN_PATH, "rb") as f:
            value = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _stdlib_socket.SOMAXCONN
    if value <= 0:
        return _stdlib_socket.SOMAXCONN
    return min(value, _BACKLOG_LIMIT)


async def open_unix_listener(
    path: str | bytes | os.PathLike[str], *, backlog: int | None = None
) -> trio.SocketListener:
    """Bind and listen on a unix socket path (a leading NUL byte means an abstract address).

    The path must not exist; removing a stale socket is the caller's decision. The default
    ``backlog`` is :func:`listen_backlog`.
    """
    sock = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        sock.listen(listen_backlog() if backlog is None else backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def unix_listener_from_fd(fd: int = 3) -> trio.SocketListener:
    """Adopt an inherited, already listening unix socket (the shim gets it as fd 3)."""
    sock = _stdlib_socket.socket(fileno=fd)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
