"""The pty master copier both shims use: a final drain at shutdown, and a stdin copy that
cannot keep a finished console alive."""

from __future__ import annotations

import os
import tty

import trio
import trio.testing

from tests.task.fdio import read_to_eof
from trioshim.task import copy as copymod
from trioshim.task.console import Console


async def test_console_copy_direct() -> None:
    """Console.copy on its own: master -> a pipe, shut down at exit with a final drain."""
    master, slave = os.openpty()
    tty.setraw(slave)
    r, w = os.pipe()
    console = Console(master, "/dev/pts/x")
    got = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ended: list[copymod.PumpEnd] = []

            async def output_done(end: copymod.PumpEnd) -> None:
                ended.append(end)

            nursery.start_soon(lambda: console.copy(stdin=None, output=w, output_done=output_done))
            os.write(slave, b"one ")
            await trio.testing.wait_all_tasks_blocked()
            os.write(slave, b"two")  # still there when the process exits
            console.shutdown()
        os.close(w)
        got += await read_to_eof(r)
    os.close(slave)
    assert ended == [copymod.PumpEnd.STOPPED]
    assert got == b"one two"
    assert console.closed


async def test_console_exit_while_stdin_blocked_on_full_terminal() -> None:
    """The process stops reading its terminal and exits: stdin waiting on a full master must
    not keep the console alive."""
    master, slave = os.openpty()
    tty.setraw(slave)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.set_blocking(in_w, False)
    console = Console(master)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: console.copy(stdin=in_r, output=out_w))
            # Feed stdin until the terminal's input queue is full and the copier waits on it.
            chunk = b"x" * 4096
            while True:
                await trio.testing.wait_all_tasks_blocked()
                try:
                    os.write(in_w, chunk)
                except BlockingIOError:
                    break
            console.shutdown()  # the process exited
    assert console.closed
    for fd in (slave, in_r, in_w, out_r, out_w):
        os.close(fd)
