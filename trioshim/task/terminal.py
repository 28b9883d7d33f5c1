"""Terminal stdio: the workload gets a pseudo-terminal; the shim copies between it and
containerd's FIFOs.

The workload's 0, 1 and 2 are the pty's slave side. The master is a
:class:`~trioshim.task.console.Console`, the same copier runc's shim uses for the master runc
sends it: stdin FIFO -> master, master -> stdout FIFO (stderr is the same stream on a terminal
and is not used), one task in the service's nursery. A workload that closes its terminal and
reopens it later loses nothing: the copier keeps waiting for the master until
:meth:`TerminalStdio.aclose` (the workload's run is over) shuts the console down; the copier
then drains what the master holds into the FIFO, and the stdio closes as every mode does
(once the client has read the FIFO, see :class:`~trioshim.task.stdio.Stdio`). ResizePty
sets the window size on the master.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import trio

from trioshim.task.console import Console
from trioshim.task.stdio import Stdio, StdioSpec, close_all, open_devnull, open_output, open_stdin

__all__ = ["TerminalStdio"]


@dataclass(eq=False)
class TerminalStdio(Stdio):
    console: Console | None = None
    _done: trio.Event = field(default_factory=trio.Event, repr=False)

    @classmethod
    def open(cls, spec: StdioSpec, *, nursery: trio.Nursery) -> TerminalStdio:
        io = cls(-1, -1, -1)
        try:
            master, slave = os.openpty()
            io.console = Console(master)  # owns the master from here on
            io.stdin = io.stdout = io.stderr = io.own(slave)
            os.set_inheritable(slave, False)
            out = open_output(io, spec.stdout, "stdout") if spec.stdout else open_devnull(io)
            src = open_stdin(io, spec.stdin) if spec.stdin else None
            for fd in (out, *((src,) if src is not None else ())):
                os.set_blocking(fd, False)  # ours alone: the workload has the slave
        except BaseException:
            close_all(io)
            if io.console is not None:
                io.console.close()
            raise
        nursery.start_soon(io._copy, io.console, out, src)
        return io

    def resize(self, width: int, height: int) -> None:
        assert self.console is not None
        self.console.resize(width, height)

    async def _copy(self, console: Console, out: int, src: int | None) -> None:
        try:
            await console.copy(stdin=src, output=out)
        finally:
            self._done.set()

    async def aclose(self) -> None:
        console, self.console = self.console, None
        if console is None:
            return
        self.close_one(self.stdin)  # our slave: the workload's run is over
        console.shutdown()  # drain what the master holds, then finish
        with trio.CancelScope(shield=True):
            await self._done.wait()
        await super().aclose()
