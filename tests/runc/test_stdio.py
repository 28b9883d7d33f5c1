from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.runc.stdio_helpers import Fifos, client_reader, open_fds, process_io, spawn_container
from tests.task.fdio import read_exactly, read_to_eof, write_all
from trioshim.runc.stdio import ProcessIO, StdioDeadlineExceeded, StdioError
from trioshim.runc.stdio_modes import RuncStdio, StdioConfig, StdioMode
from trioshim.shim.reaper import open_reaper

MiB = 1 << 20


# ---------------------------------------------------------------------------------------------
# null and scheme selection


async def test_null_io() -> None:
    async with (
        open_reaper() as reaper,
        trio.open_nursery() as nursery,
        process_io(reaper, nursery, StdioConfig()) as io,
    ):
        assert io.mode is StdioMode.NULL
        assert io.runc_stdio == RuncStdio(None, None, None)
        assert io.console_socket is None
        child = spawn_container(reaper, io, ["sh", "-c", "echo hidden; echo hidden >&2"])
        await io.after_start()
        assert await child.wait() == 0
        assert await io.wait_drained(1)


async def test_unknown_scheme_and_bad_uri() -> None:
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        with pytest.raises(StdioError, match=r"^unknown STDIO scheme http$"):
            await ProcessIO.open(
                StdioConfig(stdout="http://x/y"),
                nursery=nursery,
                reaper=reaper,
                container_id="c",
                process_id="c",
                namespace="ns",
            )
        with pytest.raises(StdioError, match="missing protocol scheme"):
            await ProcessIO.open(
                StdioConfig(stdout=":nope"),
                nursery=nursery,
                reaper=reaper,
                container_id="c",
                process_id="c",
                namespace="ns",
            )


# ---------------------------------------------------------------------------------------------
# fifo mode


async def test_stdin_through_cat_kept_open_until_close_stdin(fifos: Fifos) -> None:
    """1 MiB of random stdin through `cat`; the client detaches and re-attaches stdin, and the
    container sees end of file only after close_stdin() and the client writer is gone."""
    data = os.urandom(MiB)
    more = os.urandom(4096)
    fds_before = open_fds()
    with trio.fail_after(30):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig(fifos.stdin, fifos.stdout, fifos.stderr)
            async with process_io(reaper, nursery, cfg) as io:
                assert io.mode is StdioMode.FIFO
                out = client_reader(fifos.stdout)
                err = client_reader(fifos.stderr)
                child = spawn_container(reaper, io, ["cat"])
                await io.after_start()
                stdin = os.open(fifos.stdin, os.O_WRONLY | os.O_NONBLOCK)
                got = bytearray()
                async with trio.open_nursery() as inner:

                    async def feed() -> None:
                        await write_all(stdin, data)
                        os.close(stdin)  # the client detaches: no end of file for cat

                    inner.start_soon(feed)
                    got += await read_exactly(out, len(data))
                assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
                # Re-attach: cat still reads, so its stdin was never closed.
                stdin = os.open(fifos.stdin, os.O_WRONLY | os.O_NONBLOCK)
                await write_all(stdin, more)
                assert await read_exactly(out, len(more)) == more
                assert child.returncode is None
                await io.close_stdin()
                await io.close_stdin()  # twice is fine
                os.close(stdin)
                assert await child.wait() == 0
                assert await read_to_eof(out) == b""
                assert await read_to_eof(err) == b""
                assert await io.wait_drained(5)
    assert open_fds() <= fds_before


async def test_stdout_20mb_intact_and_stderr_apart(fifos: Fifos, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    data = os.urandom(20 * 1000 * 1000)
    blob.write_bytes(data)
    script = f"cat {blob}; printf 'to stderr' >&2"
    with trio.fail_after(60):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", fifos.stdout, fifos.stderr)
            async with process_io(reaper, nursery, cfg) as io:
                assert io.runc_stdio is not None and io.runc_stdio.stdin is None
                out = client_reader(fifos.stdout)
                err = client_reader(fifos.stderr)
                child = spawn_container(reaper, io, ["sh", "-c", script])
                await io.after_start()
                results: dict[str, bytes] = {}
                async with trio.open_nursery() as inner:

                    async def collect(name: str, fd: int) -> None:
                        results[name] = await read_to_eof(fd)

                    inner.start_soon(collect, "out", out)
                    inner.start_soon(collect, "err", err)
                    assert await child.wait() == 0
                assert await io.wait_drained(5)
    assert hashlib.sha256(results["out"]).digest() == hashlib.sha256(data).digest()
    assert results["err"] == b"to stderr"


async def test_reader_goes_away_and_comes_back(fifos: Fifos, tmp_path: Path) -> None:
    """containerd restarts: the FIFO reader closes mid-stream, the container blocks instead of
    getting EPIPE, and a new reader receives everything, nothing lost."""
    blob = tmp_path / "blob"
    data = os.urandom(8 * MiB)
    blob.write_bytes(data)
    with trio.fail_after(60):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", fifos.stdout, "")
            async with process_io(reaper, nursery, cfg) as io:
                out = client_reader(fifos.stdout)
                child = spawn_container(reaper, io, ["cat", str(blob)])
                await io.after_start()
                first = await read_exactly(out, 1 * MiB)
                os.close(out)  # the reader goes away
                # Everything stalls on full pipes: the container blocks, nobody fails.
                await trio.testing.wait_all_tasks_blocked()
                assert child.returncode is None
                out = client_reader(fifos.stdout)  # ...and comes back
                rest = await read_to_eof(out)
                assert await child.wait() == 0
    assert first + rest == data


async def test_not_drained_until_the_client_read_the_fifo(fifos: Fifos) -> None:
    """containerd 1.6 closes its readers as soon as it learns of the exit: the copier counts
    as drained (and the exit is reported) only once the client has read everything."""
    with trio.fail_after(30):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", fifos.stdout, "")
            async with process_io(reaper, nursery, cfg) as io:
                out = client_reader(fifos.stdout)
                child = spawn_container(reaper, io, ["head", "-c", "1000", "/dev/zero"])
                await io.after_start()
                assert await child.wait() == 0
                await trio.testing.wait_all_tasks_blocked()
                # The container is gone and its pipe at end of file, but 1000 bytes wait in
                # the FIFO: not delivered yet.
                assert not io.drained
                assert await read_exactly(out, 1000) == bytes(1000)
                assert await io.wait_drained(10)
                assert await read_to_eof(out) == b""


async def test_output_fifo_without_reader_hits_deadline(fifos: Fifos) -> None:
    with trio.fail_after(10):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", fifos.stdout, "")
            async with process_io(reaper, nursery, cfg) as io:
                with pytest.raises(StdioDeadlineExceeded) as info:
                    await io.after_start(timeout=0.2)
    assert str(info.value) == (
        "failed to start io pipe copy: unable to copy pipes: containerd-shim: opening w/o fifo "
        f'"{fifos.stdout}" failed: context deadline exceeded'
    )


async def test_reader_appearing_late_is_waited_for(fifos: Fifos) -> None:
    with trio.fail_after(10):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", fifos.stdout, "")
            async with process_io(reaper, nursery, cfg) as io:
                child = spawn_container(reaper, io, ["echo", "late"])
                async with trio.open_nursery() as inner:
                    inner.start_soon(io.after_start)
                    await trio.testing.wait_all_tasks_blocked()
                    out = client_reader(fifos.stdout)
                assert await read_to_eof(out) == b"late\n"
                assert await child.wait() == 0


async def test_missing_output_path_fails() -> None:
    with trio.fail_after(10):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig("", "/nonexistent/out", "")
            async with process_io(reaper, nursery, cfg) as io:
                with pytest.raises(StdioError) as info:
                    await io.after_start()
    assert str(info.value) == (
        "failed to start io pipe copy: unable to copy pipes: containerd-shim: opening file "
        '"/nonexistent/out" failed: open /nonexistent/out: no such file or directory'
    )


async def test_runc_ends_owned_by_io_uid(fifos: Fifos) -> None:
    if os.geteuid() != 0:
        pytest.skip("fchown to another uid needs root")
    async with open_reaper() as reaper, trio.open_nursery() as nursery:
        io = await ProcessIO.open(
            StdioConfig(fifos.stdin, fifos.stdout, ""),
            nursery=nursery,
            reaper=reaper,
            container_id="c",
            process_id="c",
            namespace="ns",
            io_uid=1234,
            io_gid=4321,
        )
        async with io:
            assert io.runc_stdio is not None
            for fd in (io.runc_stdio.stdin, io.runc_stdio.stdout):
                assert fd is not None
                st = os.fstat(fd)
                assert (st.st_uid, st.st_gid) == (1234, 4321)
                assert stat.S_ISFIFO(st.st_mode)
                assert os.get_blocking(fd)  # runc's ends stay blocking
            assert io.runc_stdio.stderr is None


async def test_stdin_pipe_not_enlarged(fifos: Fifos) -> None:
    """Only output pipes grow: stdin buffering before Start stays what the reference has
    (`ctr run` loses its CloseIO when all of stdin fits in the buffers before Start)."""
    async with (
        open_reaper() as reaper,
        trio.open_nursery() as nursery,
        process_io(reaper, nursery, StdioConfig(fifos.stdin, fifos.stdout, "")) as io,
    ):
        assert io.runc_stdio is not None
        assert io.runc_stdio.stdin is not None and io.runc_stdio.stdout is not None
        assert fcntl.fcntl(io.runc_stdio.stdin, fcntl.F_GETPIPE_SZ) == 65536
        if os.geteuid() == 0:
            assert fcntl.fcntl(io.runc_stdio.stdout, fcntl.F_GETPIPE_SZ) > 65536


async def test_aclose_stops_copiers_and_closes_everything(fifos: Fifos) -> None:
    fds_before = open_fds()
    with trio.fail_after(10):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            cfg = StdioConfig(fifos.stdin, fifos.stdout, fifos.stderr)
            io = await ProcessIO.open(
                cfg,
                nursery=nursery,
                reaper=reaper,
                container_id="c",
                process_id="c",
                namespace="ns",
            )
            out = client_reader(fifos.stdout)
            err = client_reader(fifos.stderr)
            child = spawn_container(reaper, io, ["sleep", "30"])
            await io.after_start()
            assert not await io.wait_drained(0.05)  # sleep holds its stdout open
            await io.aclose()
            await io.aclose()
            child.kill()
            await child.wait()
            os.close(out)
            os.close(err)
    assert open_fds() <= fds_before
