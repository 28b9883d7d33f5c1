"""A pseudo-terminal's master side: resizing it and copying to and from it.

:class:`Console` owns the master: :meth:`Console.resize` (``TIOCSWINSZ``),
:meth:`Console.copy` (stdin -> master, master -> output), :meth:`Console.shutdown` (the
process exited: drain what the master holds and finish) and :meth:`Console.close`. Both shims
use it: runc's receives the master from ``runc --console-socket``, the kit's terminal stdio
opens its own pty.

Hang-up: while no slave descriptor is open, reading the master fails with ``EIO`` (only after
everything written to the slave was read), but that is not the end of the output: the process
may reopen its terminal (``/dev/tty``, ``/dev/console``) and write again. So the output copier
keeps waiting for the master (see :mod:`trioshim.task.copy`) until :meth:`Console.shutdown`,
which exit handling calls at the process's exit before it waits for the output: the copier then
drains what the master holds and finishes at once, and the exit is reported as soon as the
output is delivered. When stdin reaches end of file the console is shut down and the master
closed, as in containerd-shim-runc-v2 (the container's terminal hangs up).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from collections.abc import Awaitable, Callable

import trio

from trioshim.task.copy import PumpEnd, StopSignal, pump, set_nonblocking

__all__ = ["Console", "ConsoleClosedError"]


class ConsoleClosedError(Exception):
    """The console's master was closed already."""


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
            raise ConsoleClosedError("console is closed")
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
