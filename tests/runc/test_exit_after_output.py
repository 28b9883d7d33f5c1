"""A terminal process's exit is reported as soon as its output is delivered, never later.

runc's kit instances (trioshim.runc.backend) record an exit only once the process's output
copiers finished, bounded by OUTPUT_FLUSH_TIMEOUT (2 s), because containerd 1.6 closes its FIFO
readers at the exit (the kit publishes the exit when the instance's wait returns). These tests
run a real pty and a real output FIFO on a frozen MockClock: the bound never passes unless the
test moves the clock, and the test moves it only by the copier's longest FIONREAD poll interval
(50 ms). An exit that waited for the bound is therefore never reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.runc.backend_fakes import PID, reaped, running
from tests.runc.stdio_helpers import client_reader
from tests.runc.test_console import open_terminal_io, process_wrote
from tests.task.fdio import read_exactly, read_to_eof
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.reaper import Reaper
from trioshim.task.fifo import FIFO_POLL_MAX


@pytest.mark.parametrize("kind", ["exec", "init"])
@pytest.mark.parametrize(
    "terminal_end",
    [
        "hang-up",  # the process was the terminal's last user: the master reads EIO
        "reopened",  # it closed its terminal (EIO), then reopened it and wrote again
        "background-child",  # something else keeps the terminal open: the exit ends it
    ],
)
async def test_terminal_exit_reported_once_output_delivered(
    mock_clock: trio.testing.MockClock, tmp_path: Path, kind: str, terminal_end: str
) -> None:
    stdout = str(tmp_path / "stdout")
    os.mkfifo(stdout)
    reported: list[int] = []
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        instance, _ = running(kind, reaper, nursery, StdioConfig(terminal=True))
        process = instance.process

        async def wait() -> None:
            reported.append((await instance.wait()).status)

        nursery.start_soon(wait)
        io = await open_terminal_io(Reaper(), nursery, "", stdout)
        process.io = io
        async with io:
            out = client_reader(stdout)
            pty, data = process_wrote(io, hang_up=terminal_end != "background-child")
            await io.after_start()
            if terminal_end == "reopened":
                assert await read_exactly(out, len(data)) == data
                await trio.testing.wait_all_tasks_blocked()  # the copier read EIO and waits
                data = b"written after reopening /dev/tty"
                pty.reopen_and_write(data)
            reaped(reaper, PID, 3)
            await trio.testing.wait_all_tasks_blocked()
            # Every byte is in the FIFO, but the client has not read it yet: containerd 1.6
            # would lose it if it learned of the exit now.
            assert reported == []
            assert await read_exactly(out, len(data)) == data
            mock_clock.jump(FIFO_POLL_MAX)  # the copier's next look at the FIFO (its longest wait)
            await trio.testing.wait_all_tasks_blocked()
            assert reported == [3]
            assert process.exit_status == 3
            assert await read_to_eof(out) == b""  # nothing after the exit
            if terminal_end == "background-child":
                os.close(pty.slave)
        nursery.cancel_scope.cancel()
