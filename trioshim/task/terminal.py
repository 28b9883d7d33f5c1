"""Terminal stdio: the workload gets a pseudo-terminal; the shim copies between it and
containerd's FIFOs.

The workload's 0, 1 and 2 are the pty's slave side. Two copiers run in the service's nursery:
the master's output to the stdout FIFO (stderr is the same stream on a terminal and is not
used), and the stdin FIFO to the master. :meth:`TerminalStdio.aclose` closes the shim's own
slave descriptor and lets the output copier drain what the workload wrote until the terminal
hangs up (every slave descriptor closed), at most :data:`DRAIN_TIMEOUT` seconds, since a
process the workload left behind can hold the terminal open; then everything is closed.
ResizePty sets the window size on the master.

runc's shim does the same through runc's console socket (:mod:`trioshim.runc.console`); the
copy loops could later be shared.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from dataclasses import dataclass, field
from typing import Final

import trio

from trioshim.task.stdio import Stdio, StdioSpec, close_all, open_devnull, open_output, open_stdin

__all__ = ["DRAIN_TIMEOUT", "TerminalStdio"]

DRAIN_TIMEOUT: Final = 2.0
_CHUNK: Final = 65536


@dataclass(eq=False)
class TerminalStdio(Stdio):
    master: int = -1
    _copiers: trio.CancelScope = field(default_factory=trio.CancelScope, repr=False)
    _hung_up: trio.Event = field(default_factory=trio.Event, repr=False)
    _done: trio.Event = field(default_factory=trio.Event, repr=False)

    @classmethod
    def open(cls, spec: StdioSpec, *, nursery: trio.Nursery) -> TerminalStdio:
        io = cls(-1, -1, -1)
        try:
            io.master, slave = (io.own(fd) for fd in os.openpty())
            os.set_inheritable(io.master, False)
            os.set_inheritable(slave, False)
            io.stdin = io.stdout = io.stderr = slave
            out = open_output(io, spec.stdout, "stdout") if spec.stdout else open_devnull(io)
            src = open_stdin(io, spec.stdin) if spec.stdin else None
            for fd in (io.master, out, *((src,) if src is not None else ())):
                os.set_blocking(fd, False)  # ours alone: the workload has the slave
        except BaseException:
            close_all(io)
            raise
        nursery.start_soon(io._copy, out, src)
        return io

    def resize(self, width: int, height: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def _copy(self, out: int, src: int | None) -> None:
        try:
            with self._copiers:
                async with trio.open_nursery() as nursery:
                    if src is not None:
                        nursery.start_soon(_pump, src, self.master)
                    await _pump(self.master, out)  # ends at hang-up
                    self._hung_up.set()
                    nursery.cancel_scope.cancel()
        finally:
            self._hung_up.set()
            self._done.set()

    async def aclose(self) -> None:
        if self.master < 0:
            return
        self.close_one(self.stdin)  # our slave: hang-up once the workload's are gone too
        with trio.move_on_after(DRAIN_TIMEOUT) as drain:
            drain.shield = True
            await self._hung_up.wait()
        self._copiers.cancel()
        with trio.CancelScope(shield=True):
            await self._done.wait()
        self.master = -1
        await super().aclose()


async def _pump(src: int, dst: int) -> None:
    """Copy until end of file (or a hung-up terminal, EIO) on ``src``."""
    while True:
        try:
            data = os.read(src, _CHUNK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(src)
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # the slave side is closed
                return
            raise
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(dst, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dst)
