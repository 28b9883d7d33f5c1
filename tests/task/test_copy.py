from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.task.fdio import read_exactly, read_to_eof, write_all
from trioshim.shim.reaper import open_reaper
from trioshim.task import copy as copymod
from trioshim.task.copy import (
    PumpEnd,
    PumpResult,
    StopSignal,
    errno_text,
    is_pipe,
    pump,
    set_pipe_size,
)

MiB = 1 << 20


@pytest.fixture
def pipes() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        with contextlib.suppress(OSError):
            os.close(fd)


async def write_all_closed(fd: int, data: bytes) -> None:
    await write_all(fd, data, close=True)


def _pipe(opened: list[int]) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    opened += [r, w]
    return r, w


async def test_splice_pipe_to_pipe_intact(pipes: list[int]) -> None:
    a_r, a_w = _pipe(pipes)
    b_r, b_w = _pipe(pipes)
    data = os.urandom(8 * MiB + 12345)
    got = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all_closed, a_w, data)
            nursery.start_soon(read_to_eof, b_r, got, False)
            result = await pump(a_r, b_w)
            os.close(b_w)
    assert result.end is PumpEnd.EOF
    assert result.copied == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_splice_to_fifo(tmp_path: os.PathLike[str], pipes: list[int]) -> None:
    fifo = os.path.join(os.fspath(tmp_path), "out")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    pipes += [reader, writer]
    src_r, src_w = _pipe(pipes)
    assert is_pipe(writer) and is_pipe(src_r)
    data = os.urandom(3 * MiB)
    got = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all_closed, src_w, data)
            nursery.start_soon(read_to_eof, reader, got, False)
            result = await pump(src_r, writer)
            os.close(writer)
    assert result == (PumpEnd.EOF, len(data))
    assert got == data


async def test_fallback_to_append_file(tmp_path: Path, pipes: list[int]) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"before\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    pipes.append(fd)
    src_r, src_w = _pipe(pipes)
    data = os.urandom(MiB + 7)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all_closed, src_w, data)
            result = await pump(src_r, fd)
    assert result == (PumpEnd.EOF, len(data))
    assert path.read_bytes() == b"before\n" + data


async def test_broken_destination(pipes: list[int]) -> None:
    a_r, a_w = _pipe(pipes)
    b_r, b_w = _pipe(pipes)
    os.write(a_w, b"x" * 1000)
    os.close(b_r)
    with trio.fail_after(5):
        result = await pump(a_r, b_w)
    assert result.end is PumpEnd.BROKEN


async def test_destination_full_then_drained(pipes: list[int]) -> None:
    """A destination nobody reads blocks the pump (no loss, no spinning) until read."""
    a_r, a_w = _pipe(pipes)
    b_r, b_w = _pipe(pipes)
    data = os.urandom(4 * MiB)
    got = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all_closed, a_w, data)

            async def run() -> None:
                await pump(a_r, b_w)
                os.close(b_w)

            nursery.start_soon(run)
            # Everything is stuck on full pipes: all tasks block (a spinning pump never would).
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read_to_eof, b_r, got, False)
    assert got == data


async def test_stop_signal_drains_and_returns(pipes: list[int]) -> None:
    a_r, a_w = _pipe(pipes)
    b_r, b_w = _pipe(pipes)
    stop = StopSignal()
    got = bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                result = await pump(a_r, b_w, stop=stop)
                assert result == (PumpEnd.STOPPED, 12)
                os.close(b_w)

            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            os.write(a_w, b"hello ")
            await trio.testing.wait_all_tasks_blocked()
            os.write(a_w, b"world!")  # still in the pipe when the signal comes
            stop.set()
            nursery.start_soon(read_to_eof, b_r, got, False)
    # The writer is still open: no EOF, a stop after draining what was there.
    assert got == b"hello world!"


async def test_stop_signal_final_drain(pipes: list[int]) -> None:
    a_r, a_w = _pipe(pipes)
    b_r, b_w = _pipe(pipes)
    os.write(a_w, b"pending")
    stop = StopSignal()
    stop.set()
    result = await pump(a_r, b_w, stop=stop)
    assert result == (PumpEnd.STOPPED, 7)
    assert os.read(b_r, 100) == b"pending"


async def test_pty_hangup_without_stop_returns_hangup(pipes: list[int]) -> None:
    master, slave = os.openpty()
    pipes.append(master)
    tty.setraw(slave)
    out_r, out_w = _pipe(pipes)
    os.write(slave, b"bye")
    os.close(slave)
    with trio.fail_after(5):
        result = await pump(master, out_w)
    assert result == (PumpEnd.HANGUP, 3)
    assert os.read(out_r, 10) == b"bye"


async def _pump_into(result: list[PumpResult], src: int, dst: int, stop: StopSignal) -> None:
    result.append(await pump(src, dst, stop=stop))


async def test_pty_reopened_after_eio_keeps_the_output(
    pipes: list[int], mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on a master only says that no slave is open right now: a process that closes its
    terminal and reopens it (/dev/tty) writes again. With a stop signal the pump waits for the
    master (without polling a master that reads EIO again and again) until the process exits,
    then drains and ends: both writes arrive, and the exit ends the pump without any timer
    (frozen clock: a pump waiting on time would never return)."""
    master, slave = os.openpty()
    pipes.append(master)
    tty.setraw(slave)
    name = os.ttyname(slave)
    out_r, out_w = _pipe(pipes)
    os.set_blocking(out_r, False)
    read_from: list[int] = []
    real_readv = os.readv

    def recording_readv(fd: int, buffers: list[bytearray]) -> int:
        read_from.append(fd)
        return real_readv(fd, buffers)

    monkeypatch.setattr(copymod.os, "readv", recording_readv)
    stop, result = StopSignal(), list[PumpResult]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_into, result, master, out_w, stop)
        first = os.urandom(6 * 1024 - 1) + b"$"  # more than the line discipline's 4 KiB buffer
        os.write(slave, first)
        os.close(slave)  # no slave open: once the data is read, the master reads EIO
        assert await read_exactly(out_r, len(first)) == first
        await trio.testing.wait_all_tasks_blocked()
        parked = read_from.count(master)
        await trio.testing.wait_all_tasks_blocked()
        assert read_from.count(master) == parked <= 8  # waiting, not spinning on EIO
        assert not result  # EIO did not end the output
        slave = os.open(name, os.O_RDWR | os.O_NOCTTY)  # the process reopens /dev/tty
        os.write(slave, b"second")
        os.close(slave)
        assert await read_exactly(out_r, 6) == b"second"
        await trio.testing.wait_all_tasks_blocked()
        assert not result
        stop.set()  # the process exited
    assert result == [(PumpEnd.STOPPED, len(first) + 6)]
    with pytest.raises(BlockingIOError):
        os.read(out_r, 10)  # nothing more, nothing twice


async def test_cat_roundtrip_with_real_child(pipes: list[int]) -> None:
    """1 MiB of random bytes through a real `cat`, pumped in and out by splice."""
    data = os.urandom(MiB)
    src_r, src_w = _pipe(pipes)  # test -> pump
    in_r, in_w = _pipe(pipes)  # pump -> cat
    out_r, out_w = _pipe(pipes)  # cat -> pump
    dst_r, dst_w = _pipe(pipes)  # pump -> test
    got = bytearray()
    with trio.fail_after(20):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            child = reaper.spawn(["cat"], stdin=in_r, stdout=out_w)
            os.close(in_r)
            os.close(out_w)

            async def feed() -> None:
                assert (await pump(src_r, in_w)).end is PumpEnd.EOF
                os.close(in_w)

            async def drain() -> None:
                assert (await pump(out_r, dst_w)).end is PumpEnd.EOF
                os.close(dst_w)

            nursery.start_soon(write_all_closed, src_w, data)
            nursery.start_soon(feed)
            nursery.start_soon(drain)
            nursery.start_soon(read_to_eof, dst_r, got, False)
            assert await child.wait() == 0
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_set_pipe_size_and_errno_text(pipes: list[int]) -> None:
    r, _ = _pipe(pipes)
    size = set_pipe_size(r, 256 * 1024)
    if os.geteuid() == 0:
        assert size is not None and size >= 256 * 1024
    assert set_pipe_size(r, 4096) == size  # never shrinks
    assert errno_text(OSError(errno.ENOENT, "x")) == "no such file or directory"
    assert errno_text(OSError(errno.ENXIO, "x")) == "no such device or address"


async def test_pty_write_eio_is_retried_until_the_stop(
    pipes: list[int], autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stdin -> master: EIO writing to the master does not end the copy; it is retried (the
    backoff timer: a reopened slave that only reads wakes nothing on the master), and after
    the stop the bytes that cannot be written are dropped (BROKEN)."""
    master, slave = os.openpty()
    pipes += [master, slave]
    tty.setraw(slave)
    os.set_blocking(slave, False)
    in_r, in_w = _pipe(pipes)
    failures = 3
    real_write = os.write

    def flaky_write(fd: int, data: bytes) -> int:
        nonlocal failures
        if fd == master and failures:
            failures -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    monkeypatch.setattr(copymod.os, "write", flaky_write)
    stop, result = StopSignal(), list[PumpResult]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_into, result, in_r, master, stop)
        os.write(in_w, b"typed")
        assert await read_exactly(slave, 5) == b"typed"  # after three EIO
        assert failures == 0
        failures = 10**6  # now the master stays unwritable
        os.write(in_w, b"lost")
        await trio.testing.wait_all_tasks_blocked()
        assert failures < 10**6  # tried
        assert not result
        await trio.sleep(10)  # virtual: retries at most a second apart, with a backoff
        assert 10 <= 10**6 - failures <= 40
        assert not result
        stop.set()
    assert result == [(PumpEnd.BROKEN, 5)]
