"""Running a test module through :func:`trioshim.wasm.run_module` with captured stdio."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from trioshim.shim.reaper import Reaper
from trioshim.wasm import WasmProcess, run_module


@dataclass
class Outcome:
    status: int
    stdout: bytes
    stderr: bytes
    process: WasmProcess


@dataclass
class Run:
    """One container's worth of arguments; ``signals`` is the Kill side of the channel."""

    rootfs: str
    args: Sequence[str]
    env: Sequence[str] = ()
    cwd: str = "/"
    spec: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None


async def _drain(fd: int, into: bytearray) -> None:
    stream = trio.lowlevel.FdStream(fd)
    async with stream:
        while chunk := await stream.receive_some(65536):
            into += chunk


async def run(
    reaper: Reaper,
    job: Run,
    *,
    signals: trio.MemoryReceiveChannel[int] | None = None,
    on_start: Callable[[WasmProcess], None] | None = None,
    on_oom: Callable[[], object] | None = None,
) -> Outcome:
    """Run ``job`` to its end; stdout and stderr are pipes read to EOF, stdin is /dev/null."""
    if signals is None:
        _, signals = trio.open_memory_channel[int](0)
    started: list[WasmProcess] = []

    def record(process: WasmProcess) -> None:
        started.append(process)
        if on_start is not None:
            on_start(process)

    out, err = bytearray(), bytearray()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, out_r, out)
        nursery.start_soon(_drain, err_r, err)
        try:
            status = await _run_module(reaper, job, signals, out_w, err_w, record, on_oom)
        finally:
            os.close(out_w)  # the child's copies went with it: the drains see EOF
            os.close(err_w)
    return Outcome(status, bytes(out), bytes(err), started[0])


async def run_detached(
    reaper: Reaper, job: Run, *, on_start: Callable[[WasmProcess], None] | None = None
) -> int:
    """Run ``job`` with no stdio (``/dev/null``) and no signals; for failures before the start."""
    _, signals = trio.open_memory_channel[int](0)
    return await _run_module(reaper, job, signals, None, None, on_start)


async def _run_module(
    reaper: Reaper,
    job: Run,
    signals: trio.MemoryReceiveChannel[int],
    stdout: int | None,
    stderr: int | None,
    on_start: Callable[[WasmProcess], None] | None,
    on_oom: Callable[[], object] | None = None,
) -> int:
    return await run_module(
        reaper,
        spec=job.spec,
        rootfs=job.rootfs,
        args=job.args,
        env=job.env,
        cwd=job.cwd,
        stdin=None,
        stdout=stdout,
        stderr=stderr,
        signals=signals,
        on_start=on_start,
        on_oom=on_oom,
        cache_dir=job.cache_dir,
    )
