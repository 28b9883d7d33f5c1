"""Terminal stdio through the engine example: the workload is on a pty, its output reaches
stdout, ResizePty sets the size, stdin is copied in."""

from __future__ import annotations

import os
import tty
from pathlib import Path

import pytest
import trio.testing

from tests.task.test_examples import load
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.task.stdio import StdioSpec
from trioshim.task.terminal import TerminalStdio
from trioshim.testing.task import open_task_shim
from trioshim.ttrpc import FailedPrecondition, Unimplemented


async def test_a_terminal_workload_is_sized_and_its_output_arrives(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.touch()
    script = "test -t 0 && test -t 1 && echo on-a-tty; stty size"
    async with open_task_shim(load("host_engine").HostProcess()) as kit:
        await kit.create("c1", ["/bin/sh", "-c", script], stdout=str(out), terminal=True)
        await kit.task.ResizePty(pb.ResizePtyRequest(id="c1", width=100, height=40))
        await kit.task.Start(pb.StartRequest(id="c1"))
        assert (await kit.task.Wait(pb.WaitRequest(id="c1"))).exit_status == 0
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
    assert out.read_text().replace("\r\n", "\n") == "on-a-tty\n40 100\n"


async def test_stdin_reaches_a_terminal_workload(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    out, stdin = tmp_path / "out", tmp_path / "in"
    out.touch()
    os.mkfifo(stdin)
    async with open_task_shim(load("host_engine").HostProcess()) as kit:
        await kit.create("c1", ["/bin/sh", "-c", "read line; echo got-$line"], stdin=str(stdin),
                         stdout=str(out), terminal=True)  # fmt: skip
        await kit.task.Start(pb.StartRequest(id="c1"))
        writer = os.open(stdin, os.O_WRONLY)
        os.write(writer, b"typed\n")
        os.close(writer)
        assert (await kit.task.Wait(pb.WaitRequest(id="c1"))).exit_status == 0
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
    assert out.read_text().splitlines()[-1] == "got-typed"


async def test_terminal_refusals(mock_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    async with open_task_shim(load("host_engine").HostProcess()) as kit:
        with pytest.raises(Unimplemented, match="terminal with file://"):
            await kit.create("c1", ["true"], stdout=f"file://{tmp_path}/x", terminal=True)
        await kit.create("c2", ["/bin/true"])
        with pytest.raises(FailedPrecondition, match="no terminal"):
            await kit.task.ResizePty(pb.ResizePtyRequest(id="c2", width=1, height=1))


async def test_close_drains_the_terminal_without_waiting_for_a_leftover_holder(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A process the workload left behind may keep the terminal open forever: closing the
    stdio (the run is over) copies what the master holds and ends, with no time passing."""
    out = tmp_path / "out"
    out.touch()
    async with trio.open_nursery() as nursery:
        io = TerminalStdio.open(StdioSpec(stdout=str(out), terminal=True), nursery=nursery)
        leftover = os.dup(io.stdout)  # the slave, still open after the workload is gone
        tty.setraw(leftover)
        os.write(leftover, b"last words")
        await io.aclose()
        os.close(leftover)
    assert out.read_bytes() == b"last words"
