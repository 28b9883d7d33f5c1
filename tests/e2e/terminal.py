"""Running `ctr` on a pseudo-terminal for the end-to-end tests of `-t`: a pty of ours stands
in for a user's terminal (its size set, read with a bound on a hang), either to collect
everything until hang-up or to converse with the container interactively."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import tempfile
import termios
import time

from tests.support.containerd import PrivateContainerd


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def _read_chunk(self, deadline: float, what: str) -> bytes:
        """The next bytes from the tty; b"" once it hung up (EIO: the other side is gone)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} on the tty in time: {bytes(self.buf[-200:])!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    return os.read(self.fd, 65536)
                except OSError:
                    return b""

    def expect(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end() :]
                return m
            chunk = self._read_chunk(deadline, repr(pattern))
            if not chunk:
                raise AssertionError(f"tty closed before {pattern!r}: {bytes(self.buf)!r}")
            self.buf += chunk

    def read_to_hangup(self, timeout: float) -> bytes:
        """Everything until the other side is gone (``timeout`` only bounds a hang)."""
        deadline = time.monotonic() + timeout
        while chunk := self._read_chunk(deadline, "hang-up"):
            self.buf += chunk
        data, self.buf = bytes(self.buf), bytearray()
        return data


def ctr_on_tty(
    containerd: PrivateContainerd, *args: str, timeout: float = 120.0
) -> tuple[int, bytes, str]:
    """Run `ctr ARGS` with a fresh pty as its stdin and stdout (what `-t` wants) and its stderr
    apart, read the pty until it hangs up; returns (exit status, terminal output, stderr).
    ``timeout`` only bounds a hang."""
    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            containerd.ctr_argv(*args), stdin=slave, stdout=slave, stderr=err,
            env=containerd.env, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        try:
            out = PtyReader(master).read_to_hangup(timeout)
            status = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            os.close(master)
        err.seek(0)
        return status, out, err.read().decode(errors="replace")


class CtrTerminal:
    """`ctr ARGS...` with a pty of ours as its terminal (what a user's terminal would be), of
    `rows` x `cols`; a context manager that kills ctr if still running and closes the pty."""

    def __init__(
        self, containerd: PrivateContainerd, *args: str, rows: int = 40, cols: int = 100
    ) -> None:
        self.master, slave = pty.openpty()
        try:
            set_winsize(slave, rows, cols)
            self.proc = subprocess.Popen(
                containerd.ctr_argv(*args),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=containerd.env,
                start_new_session=True,
            )
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        self.tty = PtyReader(self.master)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        return self.tty.expect(pattern, timeout)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def __enter__(self) -> CtrTerminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)
