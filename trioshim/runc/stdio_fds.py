"""The descriptors of one process's stdio in runc's shim, and how each end is opened.

:class:`Descriptors` holds every descriptor the shim opened for one process, with a reference
count (file mode copies stdout and stderr into one shared append descriptor), so closing is
idempotent and the last user closes. The openers give runc's errors their Go texts, because
containerd users see them verbatim:

- :func:`open_stdin_fifo`: the stdin FIFO's reader (never blocks), then the *keeper* writer,
  so the copier sees end of file only after CloseIO and every client writer closed;
- :func:`open_output`: an output FIFO is opened for writing, polled (``ENXIO``: no reader yet)
  until a reader exists or the deadline, then a keeper reader is held (never read) so a client
  may go away and come back without our writes failing; a non-FIFO path is opened for
  appending (never created);
- :func:`start_pipe_logger`: a ``binary://`` logger reading two new pipes.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

import trio

from trioshim.shim.reaper import Child, Reaper
from trioshim.task.copy import errno_text, set_nonblocking, set_pipe_size
from trioshim.task.fifo import FIFO_POLL_MAX
from trioshim.task.logger import logger_argv, start_logger
from trioshim.task.stdio import StdioError as KitStdioError

__all__ = [
    "DEADLINE_TEXT",
    "Descriptors",
    "StdioDeadlineExceeded",
    "StdioError",
    "open_output",
    "open_stdin_fifo",
    "path_error",
    "start_pipe_logger",
]

DEADLINE_TEXT: Final = "context deadline exceeded"


class StdioError(Exception):
    """Stdio could not be set up (Unknown on the wire unless a subclass says otherwise)."""


class StdioDeadlineExceeded(StdioError):
    """An output FIFO got no reader, or runc sent no master, in time (DeadlineExceeded)."""


def path_error(op: str, path: str, exc: OSError) -> str:
    """Go's ``*PathError`` text: ``open /x: no such file or directory``."""
    return f"{op} {path}: {errno_text(exc)}"


class Descriptors:
    """Descriptors owned by one process's stdio, reference-counted."""

    def __init__(self) -> None:
        self._refs: dict[int, int] = {}

    def own(self, fd: int) -> int:
        self._refs[fd] = 1
        return fd

    def share(self, fd: int) -> None:
        """One more user of ``fd``: it closes after one more :meth:`close`."""
        self._refs[fd] += 1

    def close(self, fd: int) -> None:
        """Drop one use of ``fd`` (closed with the last; unknown descriptors are ignored)."""
        count = self._refs.get(fd)
        if count is None:
            return
        if count > 1:
            self._refs[fd] = count - 1
            return
        del self._refs[fd]
        trio.lowlevel.notify_closing(fd)
        os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._refs):
            self._refs[fd] = 1
            self.close(fd)

    def pipe(self, *, large: bool = False) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        self.own(r)
        self.own(w)
        if large and os.geteuid() == 0:  # unprivileged users have a budget of pipe pages
            set_pipe_size(w)
        return r, w

    def runc_pipe(self, *, runc_reads: bool, name: str, uid: int, gid: int) -> tuple[int, int]:
        """A pipe for one stream: (runc's end, owned by ``uid:gid``; our non-blocking end)."""
        # Output pipes are enlarged (fewer, bigger splices). The stdin pipe keeps the default
        # 64 KiB: what it buffers before the container reads is what a client can push before
        # Start returns, and `ctr run` only wires up CloseIO once the task exists (stdin that
        # all fits in the buffers by then never gets its CloseIO, and the container hangs).
        r, w = self.pipe(large=not runc_reads)
        runc_end, ours = (r, w) if runc_reads else (w, r)
        set_nonblocking(ours)
        st = os.fstat(runc_end)
        if (st.st_uid, st.st_gid) != (uid, gid):
            try:
                os.fchown(runc_end, uid, gid)
            except OSError as exc:
                raise StdioError(f"failed to chown {name}: {errno_text(exc)}") from exc
        return runc_end, ours


def open_stdin_fifo(fds: Descriptors, path: str, *, keep: bool) -> tuple[int, int | None]:
    """The stdin FIFO: (our reader, the keeper writer if ``keep``); the keeper's open succeeds
    without waiting because a reader exists by then."""
    try:
        reader = fds.own(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        keeper = (
            fds.own(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)) if keep else None
        )
    except OSError as exc:
        raise StdioError(
            f"failed to open stdin fifo {path}: {path_error('open', path, exc)}"
        ) from exc
    return reader, keeper


async def open_output(
    fds: Descriptors, path: str, deadline: float, prefix: str, *, append: bool = True
) -> tuple[int, int | None]:
    """Open an output destination: (our writer, the keeper reader of a FIFO or None)."""
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        is_fifo = False
    except OSError as exc:
        raise StdioError(prefix + path_error("stat", path, exc)) from exc
    if not is_fifo:
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_APPEND if append else 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            what = f'containerd-shim: opening file "{path}" failed: '
            raise StdioError(prefix + what + path_error("open", path, exc)) from exc
        return fds.own(fd), None
    what = f'containerd-shim: opening w/o fifo "{path}" failed: '
    writer: int | None = None
    delay = 0.001
    with trio.move_on_at(deadline):
        while True:
            try:
                writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise StdioError(prefix + what + path_error("open", path, exc)) from exc
            await trio.sleep(delay)
            delay = min(delay * 2, FIFO_POLL_MAX)
    if writer is None:
        raise StdioDeadlineExceeded(prefix + what + DEADLINE_TEXT)
    fds.own(writer)
    try:
        keeper = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        what = f'containerd-shim: opening r/o fifo "{path}" failed: '
        raise StdioError(prefix + what + path_error("open", path, exc)) from exc
    fds.own(keeper)
    if os.geteuid() == 0:
        set_pipe_size(writer)
    return writer, keeper


async def start_pipe_logger(
    fds: Descriptors, reaper: Reaper, uri: str, *, container_id: str, namespace: str
) -> tuple[Child, list[int], tuple[int, int]]:
    """Start the ``binary://`` logger of ``uri`` on two new pipes: (the logger, the read ends
    it has its own copies of, the write ends (stdout, stderr) for the process)."""
    if not namespace:
        raise StdioError("namespace is required: failed precondition")
    argv = logger_argv(uri)
    out_r, out_w = fds.pipe(large=True)
    err_r, err_w = fds.pipe(large=True)
    try:
        child = await start_logger(
            reaper, argv, container_id=container_id, namespace=namespace, stdout=out_r, stderr=err_r
        )
    except KitStdioError as exc:
        raise StdioError(str(exc)) from exc
    return child, [out_r, err_r], (out_w, err_w)
