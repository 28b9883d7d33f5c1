"""Each stdio mode opens what containerd asked for and closes what it opened."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from trioshim.shim.reaper import open_reaper
from trioshim.task.errors import InvalidArgumentError, UnimplementedError
from trioshim.task.fifo import FIFO_POLL_MAX, OUTPUT_FLUSH_TIMEOUT
from trioshim.task.logger import logger_argv
from trioshim.task.stdio import StdioError, StdioSpec, open_stdio


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


async def test_null_is_dev_null_for_all_three() -> None:
    async with open_reaper() as reaper:
        io = await open_stdio(StdioSpec(), reaper=reaper, container_id="c", namespace="n")
        assert io.stdin == io.stdout == io.stderr
        assert os.readlink(f"/proc/self/fd/{io.stdout}") == "/dev/null"
        await io.aclose()
        with pytest.raises(OSError):
            os.fstat(io.stdout)


async def test_fifos_need_no_reader_and_stdin_ends_at_close_io(tmp_path: Path) -> None:
    spec = StdioSpec(_fifo(tmp_path / "in"), _fifo(tmp_path / "out"), "")
    async with open_reaper() as reaper:
        io = await open_stdio(spec, reaper=reaper, container_id="c", namespace="n")
        os.write(io.stdout, b"kept until read")  # no reader yet: waits in the FIFO
        reader = os.open(spec.stdout, os.O_RDONLY | os.O_NONBLOCK)
        assert os.read(reader, 100) == b"kept until read"
        os.close(reader)
        client = os.open(spec.stdin, os.O_WRONLY)
        os.write(client, b"typed")
        os.close(client)  # the client went away: no end of file yet (the keeper)
        assert os.read(io.stdin, 100) == b"typed"
        os.set_blocking(io.stdin, False)
        with pytest.raises(BlockingIOError):
            os.read(io.stdin, 100)
        io.close_stdin()
        assert os.read(io.stdin, 100) == b""  # CloseIO and no writer: end of file
        assert os.readlink(f"/proc/self/fd/{io.stderr}") == "/dev/null"
        await io.aclose()


async def test_file_mode_appends_both_streams_to_one_created_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "c.log"
    spec = StdioSpec(stdout=f"file://{log}", stderr=f"file://{log}")
    async with open_reaper() as reaper:
        io = await open_stdio(spec, reaper=reaper, container_id="c", namespace="n")
        os.write(io.stdout, b"out ")
        os.write(io.stderr, b"err")
        await io.aclose()
    assert log.read_text() == "out err"
    assert stat.S_IMODE(log.stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_binary_logger_gets_fd3_and_fd4_and_is_stopped(tmp_path: Path) -> None:
    logger = tmp_path / "logger.py"
    sink = tmp_path / "sink"
    logger.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a logger flushes before it goes
        "os.close(5)\n"  # ready
        f"with open({str(sink)!r}, 'wb') as f:\n"
        "    f.write(os.environ['CONTAINER_ID'].encode() + b' ' + sys.argv[1].encode() + b' ')\n"
        "    f.write(os.read(3, 100) + b' ' + os.read(4, 100))\n"
    )
    logger.chmod(0o755)
    spec = StdioSpec(stdout=f"binary://{logger}?level=debug", stderr=f"binary://{logger}")
    async with open_reaper() as reaper:
        io = await open_stdio(spec, reaper=reaper, container_id="c9", namespace="n")
        os.write(io.stdout, b"to-out")
        os.write(io.stderr, b"to-err")
        await io.aclose()  # the logger reads, then ends (or is stopped)
    assert sink.read_bytes() == b"c9 level to-out to-err"


async def test_what_is_not_served_is_refused_before_opening(tmp_path: Path) -> None:
    async with open_reaper() as reaper:
        with pytest.raises(UnimplementedError, match="terminal with file://"):
            await open_stdio(
                StdioSpec(stdout="file:///tmp/x", terminal=True),
                reaper=reaper,
                container_id="c",
                namespace="n",
            )
        with pytest.raises(InvalidArgumentError, match="unknown STDIO scheme ftp"):
            await open_stdio(
                StdioSpec(stdout="ftp://x"), reaper=reaper, container_id="c", namespace="n"
            )
        with pytest.raises(StdioError, match="missing"):
            await open_stdio(
                StdioSpec(stdout=str(tmp_path / "missing")),
                reaper=reaper,
                container_id="c",
                namespace="n",
            )
        with pytest.raises(InvalidArgumentError, match="absolute"):
            await open_stdio(
                StdioSpec(stdout="file://relative/x"),
                reaper=reaper,
                container_id="c",
                namespace="n",
            )


async def test_close_waits_until_the_client_read_the_output_fifo(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The exit is reported after the stdio closes, and containerd 1.6 stops reading at the
    exit: closing waits for the client to empty the FIFO (bounded, see the next test)."""
    spec = StdioSpec("", _fifo(tmp_path / "out"), "")
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        io = await open_stdio(spec, reaper=reaper, container_id="c", namespace="n")
        reader = os.open(spec.stdout, os.O_RDONLY | os.O_NONBLOCK)
        os.write(io.stdout, b"the tail")
        closed = trio.Event()

        async def close() -> None:
            await io.aclose()
            closed.set()

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()  # time stands still: only the read can end the wait
        assert os.read(reader, 100) == b"the tail"
        mock_clock.jump(FIFO_POLL_MAX)  # the next look at the FIFO
        await closed.wait()
        os.close(reader)


async def test_close_gives_up_on_a_client_that_never_reads(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    spec = StdioSpec("", _fifo(tmp_path / "out"), "")
    async with open_reaper() as reaper:
        io = await open_stdio(spec, reaper=reaper, container_id="c", namespace="n")
        os.write(io.stdout, b"never read")
        start = trio.current_time()
        await io.aclose()
        assert trio.current_time() - start >= OUTPUT_FLUSH_TIMEOUT


def test_logger_argv() -> None:
    assert logger_argv("binary:///usr/bin/log%20ger?a=1&b&c=x%2Fy&a=2") == [
        "/usr/bin/log ger",
        "a",
        "1",
        "b",
        "",
        "c",
        "x/y",
    ]
