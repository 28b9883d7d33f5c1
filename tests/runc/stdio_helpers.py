"""The client's side of runc stdio tests: containerd's FIFOs, and a "container" spawned on
runc's descriptors."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from trioshim.runc.stdio import ProcessIO
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.reaper import DEVNULL, Child, Reaper


class Fifos:
    def __init__(self, root: Path) -> None:
        self.stdin = str(root / "c-stdin")
        self.stdout = str(root / "c-stdout")
        self.stderr = str(root / "c-stderr")
        for path in (self.stdin, self.stdout, self.stderr):
            os.mkfifo(path)


def client_reader(path: str) -> int:
    """What containerd's cio does before Create: open the output FIFO for reading."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def spawn_container(reaper: Reaper, io: ProcessIO, argv: Sequence[str]) -> Child:
    """Spawn what runc would run, on runc's descriptors (None = /dev/null)."""
    assert io.runc_stdio is not None
    fds = [DEVNULL if fd is None else fd for fd in io.runc_stdio]
    return reaper.spawn(argv, stdin=fds[0], stdout=fds[1], stderr=fds[2])


@asynccontextmanager
async def process_io(
    reaper: Reaper, nursery: trio.Nursery, config: StdioConfig, **kw: str
) -> AsyncIterator[ProcessIO]:
    io = await ProcessIO.open(
        config,
        nursery=nursery,
        reaper=reaper,
        container_id="c1",
        process_id=kw.get("process_id", "c1"),
        namespace=kw.get("namespace", "ns1"),
    )
    try:
        yield io
    finally:
        await io.aclose()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}
