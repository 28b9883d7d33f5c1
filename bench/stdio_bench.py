"""Throughput of the stdio pumps: a producer writes N bytes into a pipe (the container's stdout),
the shim copies pipe -> FIFO, a consumer drains the FIFO (containerd's reader).

    .venv/bin/python bench/stdio_bench.py [--mib 1024] [--repeat 3]

Variants: ``pump`` (trioshim.task.copy.pump: splice, pipes enlarged to 1 MiB),
``pump-64k`` (splice with the default 64 KiB pipes), ``readwrite-64k`` (the pump's read/write
fallback) and ``naive-4k`` (a plain 4 KiB read/write loop, what io.CopyBuffer does in
containerd-shim-runc-v2). Producer and consumer are ``dd`` children spawned through the
reaper; prints MB/s (10^6 bytes per second), best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trioshim.shim.reaper import DEVNULL, open_reaper
from trioshim.task import copy as copymod
from trioshim.task.copy import PIPE_SIZE, pump, set_pipe_size

Copier = Callable[[int, int], Awaitable[None]]


async def copy_pump(src: int, dst: int) -> None:
    await pump(src, dst)


async def copy_rw(src: int, dst: int) -> None:
    os.set_blocking(src, False)
    os.set_blocking(dst, False)
    await copymod._rw_loop(src, dst, None, 1 << 16, copymod._Counter())


async def copy_naive(src: int, dst: int) -> None:
    os.set_blocking(src, False)
    os.set_blocking(dst, False)
    while True:
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(src)
            continue
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(dst, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dst)


async def run_once(copier: Copier, mib: int, big_pipes: bool, workdir: str) -> float:
    fifo = os.path.join(workdir, "stdout")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fifo)
    os.mkfifo(fifo)
    async with open_reaper() as reaper:
        r, w = os.pipe2(os.O_CLOEXEC)
        if big_pipes:
            set_pipe_size(w, PIPE_SIZE)
        # The consumer opens its reader first, as containerd does before Create.
        consumer_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(consumer_fd, True)
        fifo_w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if big_pipes:
            set_pipe_size(fifo_w, PIPE_SIZE)
        consumer = reaper.spawn(
            ["dd", "of=/dev/null", "bs=1M", "status=none"],
            stdin=consumer_fd,
            stdout=DEVNULL,
        )
        os.close(consumer_fd)
        start = time.perf_counter()
        producer = reaper.spawn(
            ["dd", "if=/dev/zero", "bs=1M", f"count={mib}", "status=none"],
            stdin=DEVNULL,
            stdout=w,
        )
        os.close(w)
        await copier(r, fifo_w)
        os.close(fifo_w)
        os.close(r)
        await producer.wait()
        await consumer.wait()
        elapsed = time.perf_counter() - start
    return mib * (1 << 20) / elapsed / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    variants: list[tuple[str, Copier, bool]] = [
        ("pump", copy_pump, True),
        ("pump-64k", copy_pump, False),
        ("readwrite-64k", copy_rw, False),
        ("naive-4k", copy_naive, False),
    ]
    with tempfile.TemporaryDirectory() as workdir:
        for name, copier, big in variants:
            best = 0.0
            for _ in range(args.repeat):
                best = max(best, await run_once(copier, args.mib, big, workdir))
            print(f"{name:15s} {args.mib} MiB pipe->FIFO: {best:9.0f} MB/s", flush=True)


if __name__ == "__main__":
    trio.run(main)
