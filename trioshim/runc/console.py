"""Terminal mode, runc's part: the console socket runc sends the pty master to.

``runc create|exec|restore --console-socket <path>`` connects to :class:`ConsoleSocket` and
sends one message: the pty slave's name as payload and exactly one descriptor (the master) in
one ``SCM_RIGHTS`` control message. :meth:`ConsoleSocket.receive_master` accepts that single
connection, validates it like go-runc does (payload shorter than 4096 bytes, one control
message, one descriptor, a tty), and removes the socket's private directory.

The master is then a :class:`trioshim.task.console.Console` (resize, copying, hang-up rules),
the same terminal copier the task kit's own pseudo-terminals use.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from typing import Final

import trio

from trioshim.runc.stdio_fds import DEADLINE_TEXT, StdioDeadlineExceeded, StdioError
from trioshim.task.console import Console

__all__ = ["Console", "ConsoleError", "ConsoleSocket", "receive_console"]

_MAX_NAME_LEN: Final = 4096
_SOCKET_NAME: Final = "pty.sock"


class ConsoleError(Exception):
    """The console socket or the received descriptor is unusable (message as go-runc's)."""


class ConsoleSocket:
    """A listening ``AF_UNIX`` socket ``pty.sock`` in a fresh private directory ``pty*`` under
    ``$XDG_RUNTIME_DIR`` (or the temp dir), for ``runc --console-socket``."""

    def __init__(self, sock: socket.socket, path: str, directory: str) -> None:
        self._sock: socket.socket | None = sock
        self._path = path
        self._dir: str | None = directory

    @classmethod
    def create(cls) -> ConsoleSocket:
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
        directory = tempfile.mkdtemp(prefix="pty", dir=runtime_dir or None)
        path = os.path.abspath(os.path.join(directory, _SOCKET_NAME))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            sock.listen(1)
            sock.setblocking(False)
            if runtime_dir:
                os.chmod(path, 0o755 | stat.S_ISVTX)
        except BaseException:
            sock.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(sock, path, directory)

    @property
    def path(self) -> str:
        """The socket's absolute path (what ``--console-socket`` gets)."""
        return self._path

    async def receive_master(self) -> Console:
        """Accept one connection and return the :class:`Console` of the master it carries.

        The socket and its directory are removed afterwards, whatever the outcome. Raises
        :class:`ConsoleError` for a malformed message or a descriptor that is not a tty.
        """
        listener = self._sock
        if listener is None:
            raise ConsoleError("console socket is closed")
        try:
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                break
        except trio.ClosedResourceError:
            raise ConsoleError("console socket is closed") from None
        self.close()
        with conn:
            conn.setblocking(False)
            while True:
                await trio.lowlevel.wait_readable(conn)
                try:
                    name, fds, flags, _ = socket.recv_fds(
                        conn, _MAX_NAME_LEN, 1, socket.MSG_CMSG_CLOEXEC
                    )
                except BlockingIOError:
                    continue
                break
        try:
            if len(name) >= _MAX_NAME_LEN:
                raise ConsoleError(f"recvfd: incorrect number of bytes read (n={len(name)})")
            if flags & socket.MSG_CTRUNC:
                raise ConsoleError("recvfd: number of fds is not 1: more than 1")
            if len(fds) != 1:
                raise ConsoleError(f"recvfd: number of fds is not 1: {len(fds)}")
            master = fds[0]
            if not os.isatty(master):
                raise ConsoleError("provided file is not a console")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Console(master, name.decode(errors="replace"))

    def close(self) -> None:
        """Close the listener and remove the private directory (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


async def receive_console(socket: ConsoleSocket, deadline: float) -> Console:
    """The master runc sends to ``socket`` before ``deadline`` (the socket is closed either
    way); :class:`~trioshim.runc.stdio_fds.StdioError` with containerd's texts otherwise."""
    console: Console | None = None
    try:
        with trio.move_on_at(deadline):
            console = await socket.receive_master()
    except (ConsoleError, OSError) as exc:
        raise StdioError(f"failed to retrieve console master: {exc}") from exc
    finally:
        socket.close()
    if console is None:
        raise StdioDeadlineExceeded(f"failed to retrieve console master: {DEADLINE_TEXT}")
    return console
