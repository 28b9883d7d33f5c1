"""Reading and writing raw descriptors from a Trio test without blocking the thread."""

from __future__ import annotations

import os

import trio

MiB = 1 << 20


async def read_exactly(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = os.read(fd, n - len(buf))
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        assert chunk, "unexpected end of file"
        buf += chunk
    return bytes(buf)


async def read_to_eof(fd: int, sink: bytearray | None = None, close: bool = True) -> bytes:
    """Everything until end of file (also appended to ``sink``); ``fd`` closed if ``close``."""
    buf = bytearray() if sink is None else sink
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                chunk = os.read(fd, MiB)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            if not chunk:
                return bytes(buf)
            buf += chunk
    finally:
        if close:
            os.close(fd)


async def write_all(fd: int, data: bytes, close: bool = False) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        view = view[n:]
    if close:
        os.close(fd)
