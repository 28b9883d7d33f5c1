"""What init and exec processes share: identity, stdio, the exit record.

These are runc's side of the task kit's instances (:mod:`trioshim.runc.backend`): the kit keeps
the states containerd sees and calls a process only in the states that allow the call; a
process method does the work (a runc call, a signal).

Operations of one process are serialised by its ``lock`` (the Go shim's per-process mutex).
Exits never take the lock: :meth:`Process.set_exited` is synchronous, so an exit is recorded the
moment the instance's wait collected it from the reaper.

The refusals' words are in :mod:`trioshim.runc.states`; the init is
:class:`~trioshim.runc.init_process.InitProcess`, an exec
:class:`~trioshim.runc.exec_process.ExecProcess`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.runc import runc_cli, runc_errors
from trioshim.runc.states import unknown
from trioshim.runc.stdio import ProcessIO, StdioDeadlineExceeded, StdioError
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import (
    DeadlineExceededError,
    TaskError,
)
from trioshim.task.fifo import OUTPUT_FLUSH_TIMEOUT

IO_SETUP_TIMEOUT = 30.0
"""Seconds the stdio setup after runc create/exec may take (a FIFO reader must appear)."""
DELETE_DRAIN_TIMEOUT = 2.0
"""Seconds Delete waits for a process's output copiers before closing its stdio."""


# --- stdio as the processes see it ------------------------------------------------------------


IOOpener = Callable[["Process"], Awaitable[ProcessIO]]
"""Opens the stdio of a process (its ``id`` and ``stdio`` say what to open)."""


def runc_stdio(io: ProcessIO) -> runc_cli.Stdio | None:
    """runc's own stdio for ``io``: its pipes, or ``None`` (captured) in terminal mode."""
    if io.console_socket is not None:
        return None
    if io.runc_stdio is None:
        return runc_cli.Stdio()
    stdin, stdout, stderr = io.runc_stdio
    return runc_cli.Stdio(stdin=stdin, stdout=stdout, stderr=stderr)


# --- processes --------------------------------------------------------------------------------


class Process:
    """What init and exec processes share: identity, stdio, the exit record."""

    def __init__(self, process_id: str, container_id: str, stdio: StdioConfig) -> None:
        self.id = process_id
        self.container_id = container_id
        self.stdio = stdio
        self.pid = 0
        self.exit_status = 0
        #: wall-clock ns of the exit; None while it has not exited (the Go zero time)
        self.exited_at_ns: int | None = None
        self.io: ProcessIO | None = None
        self.lock = trio.Lock()
        self._exited = trio.Event()
        # Reaped but not recorded yet (the exit waits for the output to be delivered): the pid
        # may already belong to another process, so it must never be signalled again.
        self.reaped = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} pid={self.pid}>"

    def _record_exit(self, status: int, exited_at_ns: int) -> None:
        self.exit_status = status
        self.exited_at_ns = exited_at_ns
        self._exited.set()

    def set_exited(self, status: int, exited_at_ns: int) -> bool:
        """Record the exit (once: False for another)."""
        if self.has_exited:
            return False
        self._record_exit(status, exited_at_ns)
        return True

    @property
    def has_exited(self) -> bool:
        return self._exited.is_set()

    async def close_stdin(self) -> None:
        if self.io is not None:
            await self.io.close_stdin()

    async def on_exit_io(self) -> None:
        """Tell the stdio the process is gone (a console stops waiting for more output)."""
        if self.io is not None:
            await self.io.process_exited()

    def resize(self, width: int, height: int) -> None:
        if self.io is not None and self.stdio.terminal:
            self.io.resize(width & 0xFFFF, height & 0xFFFF)

    async def _close_io(self) -> None:
        io, self.io = self.io, None
        if io is not None:
            with trio.CancelScope(shield=True):
                await io.aclose()

    async def _start_io(self, io: ProcessIO, *, bounded: bool) -> None:
        """``io.after_start()``: 30 s for FIFO readers / the pty master (none for a restore)."""
        try:
            if bounded:
                await io.after_start(timeout=IO_SETUP_TIMEOUT)
            else:
                await io.after_start(timeout=None)
        except StdioDeadlineExceeded as exc:
            raise DeadlineExceededError(str(exc)) from exc
        except StdioError as exc:
            raise unknown(str(exc)) from exc

    async def _open_io(self, open_io: IOOpener, console_what: str) -> ProcessIO:
        try:
            return await open_io(self)
        except TaskError:
            raise
        except (StdioError, OSError) as exc:
            what = console_what if self.stdio.terminal else "failed to create init process I/O"
            raise unknown(f"{what}: {exc}") from exc


async def output_delivered(process: Process) -> None:
    """Wait (bounded) until the process's output copiers finished, so that a client learning of
    the exit has already been handed every byte: containerd 1.6 closes its FIFO readers as soon
    as the task stopped (see :data:`~trioshim.task.fifo.OUTPUT_FLUSH_TIMEOUT`). A pipe still
    held by a background child of the process ends the wait at the bound.

    A terminal's output does not end when it hangs up (the process may reopen it), and a
    background child may keep it open: the exit shuts the console down first (as the reference
    shim does at exit), so its copier drains what the process wrote and finishes without waiting
    for the bound (pipe modes have nothing to do at the exit; telling the stdio again once the exit
    is recorded changes nothing)."""
    io = process.io
    if io is not None and not io.drained:
        await io.process_exited()
        await io.wait_drained(OUTPUT_FLUSH_TIMEOUT)


def read_pid_file(path: str, what: str) -> int:
    try:
        return runc_cli.read_pid_file(path)
    except OSError as exc:
        raise unknown(f"{what}: {runc_errors.go_os_error('open', exc)}") from exc
    except ValueError as exc:
        raise unknown(f"{what}: {exc}") from exc


def io_opener(
    nursery: trio.Nursery, reaper: Reaper, namespace: str, options: oci_pb2.Options
) -> IOOpener:
    """How the processes of a container open their stdio: copiers in ``nursery``, a logger
    through ``reaper``, runc's ends owned by the options' io uid/gid."""

    async def open_io(process: Process) -> ProcessIO:
        return await ProcessIO.open(
            process.stdio,
            nursery=nursery,
            reaper=reaper,
            container_id=process.container_id,
            process_id=process.id,
            namespace=namespace,
            io_uid=options.io_uid,
            io_gid=options.io_gid,
        )

    return open_io
