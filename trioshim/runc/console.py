"""Terminal mode: the console socket runc sends the pty master to, and the master's copying.

``runc create|exec|restore --console-socket <path>`` connects to :class:`ConsoleSocket` and
sends one message: the pty slave's name as payload and exactly one descriptor (the master) in
one ``SCM_RIGHTS`` control message. :meth:`ConsoleSocket.receive_master` accepts that single
connection, validates it like go-runc does (payload shorter than 4096 bytes, one control
message, one descriptor, a tty), and removes the socket's private directory.

:class:`Console` owns the master: :meth:`Console.resize` (``TIOCSWINSZ``),
:meth:`Console.copy` (stdin FIFO -> master, master -> output), :meth:`Console.shutdown` (the
process exited: drain what the master holds and finish) and :meth:`Console.close`.

Hang-up: while no slave descriptor is open, reading the master fails with ``EIO`` (only after
everything written to the slave was read), but that is not the end of the output: the process
may reopen its terminal (``/dev/tty``, ``/dev/console``) and write again. So the output copier
keeps waiting for the master (see :mod:`trioshim.runc.copy`) until :meth:`Console.shutdown`,
which exit handling calls at the process's exit before it waits for the output: the copier then
drains what the master holds and finishes at once, and the exit is reported as soon as the
output is delivered. When stdin reaches end of file the console is shut down and the master
closed, as in containerd-shim-runc-v2 (the container's terminal hangs up).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import stat
import struct
import tempfile
import termios
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from trioshim.runc.copy import PumpEnd, StopSignal, pump, set_nonblocking

__all__ = ["Console", "ConsoleError", "ConsoleSocket"]

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


class Console:
    """A pty master received from runc; owns the descriptor."""

    def __init__(self, master: int, name: str = "") -> None:
        self._fd: int | None = master
        self.name = name
        self._stop = StopSignal()
        set_nonblocking(master)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ConsoleError("console is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def is_shut_down(self) -> bool:
        return self._stop.is_set()

    def resize(self, width: int, height: int) -> None:
        """``TIOCSWINSZ``: ``ws_col = width``, ``ws_row = height`` (16 bits each, no pixels).
        A closed console ignores it."""
        if self._fd is None:
            return
        winsize = struct.pack("HHHH", height & 0xFFFF, width & 0xFFFF, 0, 0)
        fcntl.ioctl(self._fd, termios.TIOCSWINSZ, winsize)

    def size(self) -> tuple[int, int]:
        """``(width, height)`` from ``TIOCGWINSZ``."""
        rows, cols, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(self.fd, termios.TIOCGWINSZ, b"\0" * 8)
        )
        return cols, rows

    def shutdown(self) -> None:
        """Stop waiting for the terminal: the copiers drain what is there now and finish
        (called at process exit; also what stdin's end of file does)."""
        self._stop.set()

    async def copy(
        self,
        *,
        stdin: int | None,
        output: int,
        output_done: Callable[[PumpEnd], Awaitable[None]] | None = None,
    ) -> None:
        """Copy ``stdin`` -> master (if given) and master -> ``output`` until the console is
        shut down (process exit, or stdin's end of file) and drained; then close the master.

        The caller keeps ownership of ``stdin`` and ``output``; ``output_done`` is awaited as
        soon as the output side finished (to deliver and close the output, and report drained).
        """
        master = self.fd
        try:
            async with trio.open_nursery() as nursery:
                if stdin is not None:
                    nursery.start_soon(self._stdin_copier, stdin, master)
                end = (await pump(master, output, stop=self._stop)).end
                if output_done is not None:
                    await output_done(end)
                # Output is over after a shutdown and its final drain: the process is gone (or
                # stdin ended), so stop the stdin side too, even if it waits on a full terminal.
                # A broken output alone (the logger died) leaves stdin running until shutdown.
                if end is not PumpEnd.BROKEN:
                    self._stop.set()
                    nursery.cancel_scope.cancel()
        finally:
            self.close()

    async def _stdin_copier(self, stdin: int, master: int) -> None:
        end = (await pump(stdin, master, stop=self._stop)).end
        if end is PumpEnd.EOF:
            # containerd-shim-runc-v2: stdin's end of file shuts the console down.
            self.shutdown()

    def close(self) -> None:
        """Close the master (idempotent); the terminal hangs up."""
        fd, self._fd = self._fd, None
        self._stop.set()
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
            try:
                os.close(fd)
            except OSError as exc:  # pragma: no cover - EBADF would be our bug
                if exc.errno != errno.EBADF:
                    raise
