from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import termios
import tty
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.runc.stdio_helpers import client_reader
from tests.runc.test_stdio_file_binary import LOGGER
from tests.task.fdio import read_exactly, read_to_eof, write_all
from trioshim.runc.console import ConsoleError, ConsoleSocket
from trioshim.runc.stdio import ProcessIO, StdioDeadlineExceeded, StdioError
from trioshim.runc.stdio_modes import StdioConfig, StdioMode
from trioshim.shim.reaper import Child, Reaper, open_reaper
from trioshim.task import copy as copymod
from trioshim.task.fifo import OUTPUT_FLUSH_TIMEOUT


def send_master(path: str, fds: list[int], name: bytes = b"/dev/pts/99") -> None:
    """What runc does with --console-socket: connect, send the pty name and the master."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        socket.send_fds(sock, [name], fds)


def exists(path: str) -> bool:
    return os.path.exists(path)


def listdir(path: Path) -> list[str]:
    return os.listdir(path)


def winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return cols, rows


class Pty:
    """A pty as runc makes it: the master goes to the shim, the slave to the container."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline: bytes out == bytes in
        self.name = os.ttyname(self.slave)

    def reopen_and_write(self, data: bytes) -> None:
        """A process that closed its terminal opens /dev/tty again, writes and exits."""
        slave = os.open(self.name, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(slave, data)
        finally:
            os.close(slave)

    def hand_over(self, socket_path: str) -> None:
        send_master(socket_path, [self.master], os.ttyname(self.slave).encode())
        os.close(self.master)

    def spawn(self, reaper: Reaper, argv: list[str]) -> Child:
        child = reaper.spawn(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave)
        os.close(self.slave)
        return child


def process_wrote(io: ProcessIO, *, hang_up: bool) -> tuple[Pty, bytes]:
    """runc's part, then the process's: the master handed over, the process's last words (more
    than the line discipline's 4 KiB, well within what a pty buffers) written to the terminal,
    which hangs up if the process was its last user."""
    pty = Pty()
    assert io.console_socket is not None
    pty.hand_over(io.console_socket)
    data = os.urandom(6 * 1024 - 1) + b"$"
    os.write(pty.slave, data)
    if hang_up:
        os.close(pty.slave)
    return pty, data


# ---------------------------------------------------------------------------------------------
# the console socket


async def test_console_socket_receives_master() -> None:
    sock = ConsoleSocket.create()
    directory = os.path.dirname(sock.path)
    assert os.path.basename(sock.path) == "pty.sock"
    assert os.path.basename(directory).startswith("pty")
    master, slave = os.openpty()
    try:
        send_master(sock.path, [master], b"/dev/pts/7")
        with trio.fail_after(5):
            console = await sock.receive_master()
        assert console.name == "/dev/pts/7"
        assert not exists(directory)  # removed once the master is received
        assert not os.get_blocking(console.fd)
        console.resize(132, 43)
        assert winsize(slave) == (132, 43)
        assert console.size() == (132, 43)
        console.close()
        console.close()
        assert console.closed
        console.resize(1, 1)  # a closed console ignores it
    finally:
        os.close(master)
        os.close(slave)
        sock.close()


async def test_console_socket_rejects_non_tty() -> None:
    sock = ConsoleSocket.create()
    r, w = os.pipe()
    try:
        send_master(sock.path, [r])
        with (
            trio.fail_after(5),
            pytest.raises(ConsoleError, match="provided file is not a console"),
        ):
            await sock.receive_master()
        assert not exists(os.path.dirname(sock.path))
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("count", [0, 2])
async def test_console_socket_wants_exactly_one_fd(count: int) -> None:
    sock = ConsoleSocket.create()
    ptys = [os.openpty() for _ in range(count)]
    try:
        send_master(sock.path, [m for m, _ in ptys])
        with trio.fail_after(5), pytest.raises(ConsoleError, match="number of fds is not 1"):
            await sock.receive_master()
    finally:
        for m, s in ptys:
            os.close(m)
            os.close(s)
        sock.close()


async def test_console_socket_in_xdg_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    sock = ConsoleSocket.create()
    try:
        assert sock.path.startswith(str(tmp_path) + "/pty")
        assert os.stat(sock.path).st_mode & 0o7777 == 0o1755
    finally:
        sock.close()
    assert listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# terminal mode through ProcessIO


@pytest.fixture
def fifos(tmp_path: Path) -> tuple[str, str]:
    stdin, stdout = str(tmp_path / "t-stdin"), str(tmp_path / "t-stdout")
    os.mkfifo(stdin)
    os.mkfifo(stdout)
    return stdin, stdout


async def open_terminal_io(
    reaper: Reaper, nursery: trio.Nursery, stdin: str, stdout: str, stderr: str = ""
) -> ProcessIO:
    io = await ProcessIO.open(
        StdioConfig(stdin, stdout, stderr, terminal=True),
        nursery=nursery,
        reaper=reaper,
        container_id="c1",
        process_id="c1",
        namespace="ns",
    )
    assert io.mode is StdioMode.TERMINAL
    assert io.runc_stdio is None
    assert io.console_socket is not None
    return io


async def test_terminal_copy_resize_and_stdin_eof_shutdown(fifos: tuple[str, str]) -> None:
    stdin_path, stdout_path = fifos
    with trio.fail_after(20):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            # CRI passes a stderr path with a terminal: ignored.
            io = await open_terminal_io(reaper, nursery, stdin_path, stdout_path, "/nonexistent")
            async with io:
                out = client_reader(stdout_path)
                pty = Pty()
                assert io.console_socket is not None
                pty.hand_over(io.console_socket)  # runc create: master sent, then returns
                child = pty.spawn(reaper, ["cat"])
                await io.after_start()
                assert io.console is not None
                assert not exists(os.path.dirname(io.console_socket))
                stdin = os.open(stdin_path, os.O_WRONLY | os.O_NONBLOCK)
                payload = os.urandom(3000)
                await write_all(stdin, payload)
                assert await read_exactly(out, len(payload)) == payload

                io.resize(100, 40)
                assert io.console.size() == (100, 40)

                # stdin's end of file (CloseIO + client gone) shuts the console down: the
                # terminal hangs up, cat ends, the output FIFO reaches end of file.
                await io.close_stdin()
                os.close(stdin)
                assert await read_to_eof(out) == b""
                await child.wait()
                assert await io.wait_drained(5)
                assert io.console.closed
                io.resize(10, 10)  # no console any more: nothing to do


async def test_terminal_reopened_after_hang_up_loses_nothing(
    fifos: tuple[str, str], monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """The process wrote, closed its terminal (the master reads EIO) and later reopened it and
    wrote again (systemd, agetty): the output FIFO stays open, the copier waits without polling
    the master, and everything arrives. The exit then ends the output at once (frozen clock:
    nothing here may wait on a timer)."""
    _, stdout_path = fifos
    reads: dict[int, int] = {}
    real_readv = os.readv

    def counting_readv(fd: int, buffers: list[bytearray]) -> int:
        reads[fd] = reads.get(fd, 0) + 1
        return real_readv(fd, buffers)

    monkeypatch.setattr(copymod.os, "readv", counting_readv)
    async with trio.open_nursery() as nursery:
        io = await open_terminal_io(Reaper(), nursery, "", stdout_path)
        async with io:
            out = client_reader(stdout_path)
            pty, data = process_wrote(io, hang_up=True)
            await io.after_start()
            assert io.console is not None
            master = io.console.fd
            assert await read_exactly(out, len(data)) == data
            await trio.testing.wait_all_tasks_blocked()
            parked = reads.get(master, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert reads.get(master, 0) == parked <= 8  # waiting, not spinning on EIO
            assert not io.drained
            with pytest.raises(BlockingIOError):
                os.read(out, 1)  # the FIFO is still open: no end of file
            pty.reopen_and_write(b"second")
            assert await read_exactly(out, 6) == b"second"
            await io.process_exited()
            assert await read_to_eof(out) == b""
            assert await io.wait_drained(OUTPUT_FLUSH_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
            assert io.console.closed


async def test_exit_before_master_received(fifos: tuple[str, str]) -> None:
    """An exec that exits at once: exit handling may run before after_start has the master."""
    _, stdout_path = fifos
    with trio.fail_after(20):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            io = await open_terminal_io(reaper, nursery, "", stdout_path)
            async with io:
                out = client_reader(stdout_path)
                pty = Pty()
                assert io.console_socket is not None
                pty.hand_over(io.console_socket)
                child = pty.spawn(reaper, ["echo", "quick"])
                assert await child.wait() == 0
                await io.process_exited()
                await io.after_start()
                assert await io.wait_drained(5)
                assert await read_to_eof(out) == b"quick\n"  # raw mode: no \r


async def test_terminal_master_never_sent(fifos: tuple[str, str]) -> None:
    _, stdout_path = fifos
    with trio.fail_after(10):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            io = await open_terminal_io(reaper, nursery, "", stdout_path)
            socket_dir = os.path.dirname(io.console_socket or "")
            async with io:
                with pytest.raises(StdioDeadlineExceeded, match="console master"):
                    await io.after_start(timeout=0.1)
            assert not exists(socket_dir)


async def test_terminal_bad_stdout_path(fifos: tuple[str, str], tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            uri = f"file://{tmp_path}/log"  # not supported with a terminal: a FIFO path
            io = await open_terminal_io(reaper, nursery, "", uri)
            async with io:
                pty = Pty()
                assert io.console_socket is not None
                pty.hand_over(io.console_socket)
                with pytest.raises(StdioError, match=r"^failed to start console copy: "):
                    await io.after_start()
                os.close(pty.slave)


async def test_terminal_binary_logger(tmp_path: Path) -> None:
    logger = tmp_path / "logger"
    logger.write_text(LOGGER.format(python=sys.executable))
    logger.chmod(0o755)
    out = tmp_path / "logged"
    out.mkdir()
    uri = f"binary://{logger}?out={out}"
    with trio.fail_after(20):
        async with open_reaper() as reaper, trio.open_nursery() as nursery:
            io = await open_terminal_io(reaper, nursery, "", uri, uri)
            async with io:
                pty = Pty()
                assert io.console_socket is not None
                pty.hand_over(io.console_socket)
                child = pty.spawn(reaper, ["sh", "-c", "printf 'via logger'"])
                await io.after_start()
                assert await child.wait() == 0
                await io.process_exited()
                assert await io.wait_drained(5)
                logger_child = io.logger
                assert logger_child is not None
                assert await logger_child.wait() == 0  # both pipes reached end of file
    info = json.loads((out / "info.json").read_text())
    assert info["env"] == ["CONTAINER_ID=c1", "CONTAINER_NAMESPACE=ns"]
    assert (out / "stdout").read_bytes() == b"via logger"
    assert (out / "stderr").read_bytes() == b""
