"""A process's stdio as containerd asked for it, opened as three descriptors for the workload.

containerd names the streams in Create and Exec (``stdin``, ``stdout``, ``stderr``,
``terminal``); the scheme of ``stdout`` picks the mode, as in containerd's runc shim. Each mode
is one small class owning the descriptors it opened; :meth:`Stdio.aclose` releases them. The
workload (a child process, a wasm runtime) gets :attr:`Stdio.stdin`, :attr:`Stdio.stdout` and
:attr:`Stdio.stderr` directly: nothing is copied by the shim.

- :class:`NullStdio`: every stream empty; ``/dev/null`` for all three.
- :class:`FifoStdio` (a path, or ``fifo://``): containerd's FIFOs. An output FIFO is opened
  read-write, so opening never waits for a reader and a reader that goes away and comes back
  loses nothing (the data waits in the FIFO). The stdin FIFO is opened for reading, and a
  *keeper* writer is held until :meth:`Stdio.close_stdin` (CloseIO), so the workload sees end
  of file only after CloseIO and every client writer closed. A path that is not a FIFO is
  opened for appending (never created). An empty stream is ``/dev/null``.
- :class:`FileStdio` (``file:///abs/path``): stdout and stderr appended to one file (parents
  created 0755, the file 0644).
- :class:`BinaryStdio` (``binary:///abs/logger?k=v``): the logger (in ``binary.py``).
- a terminal (with FIFOs): a pseudo-terminal, copied to and from the FIFOs
  (:class:`~trioshim.task.terminal.TerminalStdio`); with ``file://`` or ``binary://``,
  :class:`UnimplementedError` for now.

Closing waits, at most :data:`~trioshim.task.fifo.OUTPUT_FLUSH_TIMEOUT`, until the client has
read every output FIFO (the exit is reported after the close, and containerd 1.6 stops reading
at the exit: see :mod:`trioshim.task.fifo`).

runc's shim (:mod:`trioshim.runc.stdio`) cannot hand containerd's FIFOs to the container
directly: runc's ends must belong to the io uid/gid and the shim must know when the output is
complete, so it copies through pipes; it shares the parts beneath (the terminal copier
:mod:`trioshim.task.console`, the pumps :mod:`trioshim.task.copy`, the FIFO hand-off
:mod:`trioshim.task.fifo`, the ``binary://`` rules of :mod:`trioshim.task.logger`).
"""

from __future__ import annotations

import fcntl
import os
import stat
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from trioshim.task.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    TaskError,
    UnimplementedError,
)
from trioshim.task.fifo import wait_fifo_read
from trioshim.task.uri import UriError, stdout_scheme

if TYPE_CHECKING:
    from trioshim.shim.reaper import Reaper

__all__ = [
    "FifoStdio",
    "FileStdio",
    "NullStdio",
    "Stdio",
    "StdioError",
    "StdioSpec",
    "check_supported",
    "open_stdio",
    "scheme",
]


class StdioError(TaskError):
    """A stream could not be opened (missing FIFO, unwritable file...)."""


@dataclass(frozen=True)
class StdioSpec:
    """The streams of one Create or Exec request, as containerd sent them."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def is_null(self) -> bool:
        return not (self.stdin or self.stdout or self.stderr or self.terminal)


def scheme(uri: str) -> str:
    """``fifo`` for a bare path, else the URI's scheme (``file``, ``binary``...);
    InvalidArgument for what Go's ``url.Parse`` would refuse."""
    try:
        return stdout_scheme(uri) or "fifo"
    except UriError as exc:
        raise InvalidArgumentError(str(exc)) from None


@dataclass(eq=False)
class Stdio:
    """Three open descriptors for the workload's 0, 1 and 2; owned here until :meth:`aclose`."""

    stdin: int
    stdout: int
    stderr: int
    _owned: list[int] = field(default_factory=list, repr=False)
    _stdin_keeper: int | None = field(default=None, repr=False)
    _fifo_outputs: list[int] = field(default_factory=list, repr=False)

    def close_one(self, fd: int) -> None:
        """Close one owned descriptor now."""
        self._owned.remove(fd)
        if fd in self._fifo_outputs:
            self._fifo_outputs.remove(fd)
        os.close(fd)

    def resize(self, width: int, height: int) -> None:
        """ResizePty: only a terminal has a size."""
        raise FailedPreconditionError("the process has no terminal to resize")

    def close_stdin(self) -> None:
        """CloseIO: drop the stdin keeper; end of file once every client writer is gone too."""
        if self._stdin_keeper is not None:
            os.close(self._stdin_keeper)
            self._stdin_keeper = None

    async def aclose(self) -> None:
        """Close every descriptor this owns once the client read the output FIFOs
        (idempotent)."""
        self.close_stdin()
        outputs, self._fifo_outputs = self._fifo_outputs, []
        for fd in outputs:
            await wait_fifo_read(fd)
        owned, self._owned = self._owned, []
        for fd in owned:
            os.close(fd)

    def own(self, fd: int) -> int:
        """Take ``fd`` into this object's care (closed by :meth:`aclose`); returns it."""
        self._owned.append(fd)
        return fd


def open_devnull(io: Stdio) -> int:
    """``/dev/null``, owned by ``io``."""
    return io.own(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))


def _os_error(what: str, path: str, exc: OSError) -> StdioError:
    return StdioError(f"open {what} {path}: {exc.strerror or exc}")


def open_output(io: Stdio, path: str, what: str) -> int:
    """An output path, owned by ``io``: a FIFO read-write (never waits for a reader), another
    file for appending (never created)."""
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            fd = io.own(os.open(path, os.O_RDWR | os.O_CLOEXEC))
            io._fifo_outputs.append(fd)
            return fd
        return io.own(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
    except OSError as exc:
        raise _os_error(what, path, exc) from None


def open_stdin(io: Stdio, path: str) -> int:
    """The stdin FIFO's read end (blocking), owned by ``io``, with its keeper writer."""
    try:
        reader = io.own(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        if stat.S_ISFIFO(os.fstat(reader).st_mode):
            io._stdin_keeper = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error("stdin", path, exc) from None
    flags = fcntl.fcntl(reader, fcntl.F_GETFL)
    fcntl.fcntl(reader, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # the workload reads blocking
    return reader


class NullStdio:
    """No streams at all: ``/dev/null`` everywhere."""

    @staticmethod
    def open(spec: StdioSpec) -> Stdio:
        io = Stdio(-1, -1, -1)
        try:
            null = open_devnull(io)
        except BaseException:
            close_all(io)
            raise
        io.stdin = io.stdout = io.stderr = null
        return io


class FifoStdio:
    """containerd's FIFOs (or plain paths); an empty stream is ``/dev/null``."""

    @staticmethod
    def open(spec: StdioSpec) -> Stdio:
        io = Stdio(-1, -1, -1)
        try:
            io.stdin = open_stdin(io, spec.stdin) if spec.stdin else open_devnull(io)
            io.stdout = (
                open_output(io, _path(spec.stdout), "stdout") if spec.stdout else open_devnull(io)
            )
            io.stderr = (
                open_output(io, _path(spec.stderr), "stderr") if spec.stderr else open_devnull(io)
            )
        except BaseException:
            close_all(io)
            raise
        return io


class FileStdio:
    """``file:///abs/path``: stdout and stderr appended to one file; stdin as a FIFO."""

    @staticmethod
    def open(spec: StdioSpec) -> Stdio:
        path = absolute_path(spec.stdout)
        io = Stdio(-1, -1, -1)
        try:
            io.stdin = open_stdin(io, spec.stdin) if spec.stdin else open_devnull(io)
            try:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                io.stdout = io.stderr = io.own(os.open(path, flags, 0o644))
            except OSError as exc:
                raise _os_error("log file", path, exc) from None
        except BaseException:
            close_all(io)
            raise
        return io


def _path(uri: str) -> str:
    return uri.removeprefix("fifo://")


def absolute_path(uri: str) -> str:
    """The path of a ``file://`` or ``binary://`` URI; InvalidArgument unless absolute."""
    parsed = urllib.parse.urlsplit(uri)
    path = urllib.parse.unquote(parsed.path)
    if parsed.netloc or not os.path.isabs(path):
        raise InvalidArgumentError(f"{uri!r}: the {parsed.scheme}:// path must be absolute")
    return path


def close_all(io: Stdio) -> None:
    """Close what ``io`` opened so far (a failed open; synchronous)."""
    io.close_stdin()
    for fd in io._owned:
        os.close(fd)
    io._owned.clear()
    io._fifo_outputs.clear()


def check_supported(spec: StdioSpec) -> None:
    """Refuse, before anything is opened, what no mode here serves."""
    kind = scheme(spec.stdout) if spec.stdout else "fifo"
    if kind not in ("fifo", "file", "binary"):
        raise InvalidArgumentError(f"unknown STDIO scheme {kind}")
    if spec.terminal and kind != "fifo":
        raise UnimplementedError(f"a terminal with {kind}:// stdout is not supported")


async def open_stdio(
    spec: StdioSpec,
    *,
    reaper: Reaper,
    container_id: str,
    namespace: str,
    nursery: trio.Nursery | None = None,
) -> Stdio:
    """Open ``spec`` in the mode its ``stdout`` selects (see the module's docstring).
    ``nursery`` runs a terminal's copiers (required for a terminal)."""
    check_supported(spec)
    if spec.terminal:
        from trioshim.task.terminal import TerminalStdio  # it builds on this module

        if nursery is None:
            raise ValueError("a terminal needs a nursery for its copiers")
        return TerminalStdio.open(spec, nursery=nursery)
    if spec.is_null:
        return NullStdio.open(spec)
    kind = scheme(spec.stdout) if spec.stdout else "fifo"
    if kind == "file":
        return FileStdio.open(spec)
    if kind == "binary":
        from trioshim.task.logger import BinaryStdio  # it builds on this module

        return await BinaryStdio.open(
            spec.stdout, reaper=reaper, container_id=container_id, namespace=namespace
        )
    return FifoStdio.open(spec)
