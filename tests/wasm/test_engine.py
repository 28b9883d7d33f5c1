"""WasmEngine at the task kit's engine level, driven by a stand-in for the kit's run context
(the attributes of trioshim.task's RunContext: spec, rootfs, args, env as a mapping, cwd,
stdio, reaper, signals with ``receive()``, ``started(pid)``, ``report_oom()``, ``oom()``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.wasm import modules
from trioshim.shim.reaper import Reaper, open_reaper
from trioshim.wasm import WasmEngine, WasmLaunchError, WasmLoadError


@dataclass
class Fds:
    stdin: int | None
    stdout: int | None
    stderr: int | None


class Signals:
    """Like the kit's: Kill delivers, the engine receives."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[int](64)

    def deliver(self, signal: int) -> None:
        self._send.send_nowait(signal)

    async def receive(self) -> int:
        return await self._receive.receive()


@dataclass
class Context:
    reaper: Reaper
    rootfs: str
    args: Sequence[str]
    stdio: Fds
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    spec: Mapping[str, Any] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)
    pids: list[int] = field(default_factory=list)
    running: trio.Event = field(default_factory=trio.Event)
    ooms: list[str] = field(default_factory=list)  # "live" per report_oom, "exit" per oom
    oom_reported: trio.Event = field(default_factory=trio.Event)

    def started(self, pid: int | None = None) -> None:
        assert pid is not None
        self.pids.append(pid)
        self.running.set()

    def report_oom(self) -> None:
        self.ooms.append("live")
        self.oom_reported.set()

    def oom(self) -> None:
        self.ooms.append("exit")


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


@asynccontextmanager
async def _stdout_pipe() -> AsyncIterator[tuple[int, bytearray]]:
    """A pipe for the container's stdout; what came through is in the bytearray at the end."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    received = bytearray()
    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            async with trio.lowlevel.FdStream(read_end) as stream:
                while chunk := await stream.receive_some(65536):
                    received.extend(chunk)

        nursery.start_soon(drain)
        try:
            yield write_end, received
        finally:
            os.close(write_end)


async def test_start_is_reported_with_the_childs_pid_once_the_module_runs(rootfs: Path) -> None:
    module = modules.install(rootfs, "args.wasm", modules.ARGS_ENV)
    async with open_reaper() as reaper, _stdout_pipe() as (stdout, received):
        ctx = Context(reaper, str(rootfs), [module, "x"], Fds(None, stdout, None), env={"K": "v"})
        status = await WasmEngine(cache_dir=None).run(ctx)
    assert status == 0
    assert bytes(received) == b"/args.wasm\0x\0"
    assert len(ctx.pids) == 1 and ctx.pids[0] != os.getpid()


async def test_kill_through_the_kits_signals(rootfs: Path) -> None:
    module = modules.install(rootfs, "loop.wasm", modules.LOOP)
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        ctx = Context(reaper, str(rootfs), [module], Fds(None, None, None))

        async def kill_when_started() -> None:
            await ctx.running.wait()
            ctx.signals.deliver(15)

        nursery.start_soon(kill_when_started)
        status = await WasmEngine(cache_dir=None).run(ctx)
    assert status == 143


async def test_a_module_that_cannot_load_fails_start_with_the_reason(rootfs: Path) -> None:
    module = modules.install(rootfs, "lib.wasm", modules.NO_START)
    async with open_reaper() as reaper:
        ctx = Context(reaper, str(rootfs), [module], Fds(None, None, None))
        with pytest.raises(WasmLoadError, match="no _start"):
            await WasmEngine(cache_dir=None).run(ctx)
    assert ctx.pids == []  # never reported started: the kit fails Start with the error


async def test_a_bad_spec_fails_start_before_anything_runs(rootfs: Path) -> None:
    async with open_reaper() as reaper:
        ctx = Context(reaper, str(rootfs), ["/absent.wasm"], Fds(None, None, None))
        with pytest.raises(WasmLaunchError, match=r"absent\.wasm"):
            await WasmEngine(cache_dir=None).run(ctx)
    assert ctx.pids == []
