"""The shim's side of one process's stdio: pipes or a console between runc and containerd.

Life of a :class:`ProcessIO`::

    io = await ProcessIO.open(StdioConfig(stdin, stdout, stderr, terminal), nursery=...,
                              reaper=..., container_id=..., process_id=..., namespace=...)
    try:
        # run `runc create|exec|restore`, with io.runc_stdio as the child's 0/1/2 (pipe
        # modes; None = /dev/null) or `--console-socket io.console_socket` (terminal mode)
        await io.after_start()            # runc returned: close runc's ends / take the master
        ...                               # io.close_stdin() (CloseIO), io.resize() (ResizePty)
        await io.process_exited()         # from exit handling
        await io.wait_drained(2)          # Delete: let the output copiers finish (bounded)
    finally:
        await io.aclose()                 # everything closed, copiers gone, logger stopped

The modes (null, fifo, file, binary, terminal), which request selects which, and the pipes
runc is given are :mod:`trioshim.runc.stdio_modes`; the descriptors and how each FIFO is opened
:mod:`trioshim.runc.stdio_fds`; the copy tasks :mod:`trioshim.runc.stdio_copiers`. This module
is the lifecycle that ties them together: prepare, start copying once runc returned, serve
CloseIO and ResizePty, drain at the exit, close.

Errors: :class:`StdioError` (maps to Unknown), :class:`StdioDeadlineExceeded` (an output FIFO
never got a reader, or runc never sent the master, before the deadline: DeadlineExceeded).
Messages follow containerd-shim-runc-v2. :meth:`ProcessIO.open` errors are bare, the service
prefixes them (``failed to create init process I/O: ...`` for pipe modes, ``failed to create
OCI runtime console socket: ...`` / ``failed to create runc console socket: ...`` for a
terminal); :meth:`ProcessIO.after_start` errors are complete (``failed to start io pipe copy:
unable to copy pipes: ...``, ``failed to retrieve console master: ...``, ``failed to start
console copy: ...``, ``failed to open stdin fifo <path>: ...``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

import trio

from trioshim.runc.console import Console, ConsoleSocket, receive_console
from trioshim.runc.stdio_copiers import Copiers, console_job, output_job, stdin_job
from trioshim.runc.stdio_fds import (
    Descriptors,
    StdioDeadlineExceeded,
    StdioError,
    open_output,
    open_stdin_fifo,
    start_pipe_logger,
)
from trioshim.runc.stdio_modes import (
    RuncStdio,
    StdioConfig,
    StdioMode,
    create_log_file,
    open_runc_pipes,
    scheme_or_none,
    select_mode,
)
from trioshim.shim.reaper import Child, Reaper
from trioshim.task.logger import LOGGER_TERM_TIMEOUT, stop_logger

__all__ = [
    "IO_START_TIMEOUT",
    "LOGGER_TERM_TIMEOUT",
    "ProcessIO",
    "StdioDeadlineExceeded",
    "StdioError",
]

log = logging.getLogger(__name__)

IO_START_TIMEOUT: Final = 30.0
"""Default deadline of :meth:`ProcessIO.after_start` (FIFO readers, console master)."""

_PIPE_PREFIX: Final = "failed to start io pipe copy: unable to copy pipes: "
_CONSOLE_PREFIX: Final = "failed to start console copy: "


class ProcessIO:
    """The shim's side of one process's stdio. Build with :meth:`open`; see the module doc."""

    def __init__(
        self,
        config: StdioConfig,
        *,
        nursery: trio.Nursery,
        reaper: Reaper,
        container_id: str,
        process_id: str,
        namespace: str,
        io_uid: int,
        io_gid: int,
    ) -> None:
        self.config = config
        self.container_id = container_id
        self.process_id = process_id
        self.namespace = namespace
        self.io_uid = io_uid
        self.io_gid = io_gid
        self._reaper = reaper
        self.mode = StdioMode.NULL
        self.runc_stdio: RuncStdio | None = None
        """Pipe modes: runc's stdin/stdout/stderr (``None`` = /dev/null). Terminal: ``None``."""
        self.console_socket: str | None = None
        """Terminal mode: the path for ``runc --console-socket``. Pipe modes: ``None``."""
        self.stdout_path = ""  # file mode: the log file
        self._fds = Descriptors()
        self._runc_ends: list[int] = []  # runc's ends, closed after start
        self._after_start_close: list[int] = []  # ours, also closed after start (binary)
        self._stdin_w: int | None = None  # our end of the container's stdin pipe
        self._stdout_r: int | None = None
        self._stderr_r: int | None = None
        self._keeper: int | None = None  # the stdin keeper (our writer of the stdin FIFO)
        self._stdin_close_requested = False
        self._logger: Child | None = None
        self._socket: ConsoleSocket | None = None
        self._console: Console | None = None
        self._exited = False
        self._copiers = Copiers(nursery, process_id)
        self._started = False
        self._closed = False

    # -- construction ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        config: StdioConfig,
        *,
        nursery: trio.Nursery,
        reaper: Reaper,
        container_id: str,
        process_id: str,
        namespace: str,
        io_uid: int = 0,
        io_gid: int = 0,
    ) -> ProcessIO:
        """Prepare stdio before runc runs: pipes (and the ``binary://`` logger, awaited until
        ready), or the console socket. ``process_id`` is the container id for an init, the
        exec id for an exec (the logger's ``CONTAINER_ID``)."""
        self = cls(
            config,
            nursery=nursery,
            reaper=reaper,
            container_id=container_id,
            process_id=process_id,
            namespace=namespace,
            io_uid=io_uid,
            io_gid=io_gid,
        )
        try:
            await self._setup()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _setup(self) -> None:
        self.mode = mode = select_mode(self.config)
        if mode is StdioMode.TERMINAL:
            try:
                self._socket = ConsoleSocket.create()
            except OSError as exc:
                raise StdioError(f"{exc.strerror or exc}") from exc
            self.console_socket = self._socket.path
        elif mode is StdioMode.NULL:
            self.runc_stdio = RuncStdio(None, None, None)
        elif mode is StdioMode.BINARY:
            await self._start_binary_logger()
        else:
            if mode is StdioMode.FILE:
                self.stdout_path = create_log_file(self.config.stdout)
            self._make_pipes()

    def _make_pipes(self) -> None:
        self.runc_stdio, ours = open_runc_pipes(
            self._fds, self.config, uid=self.io_uid, gid=self.io_gid
        )
        self._runc_ends += [fd for fd in self.runc_stdio if fd is not None]
        self._stdin_w, self._stdout_r, self._stderr_r = ours

    async def _spawn_logger(self, uri: str) -> tuple[int, int]:
        """Start the ``binary://`` logger; returns our write ends (stdout, stderr) and keeps
        the read ends until :meth:`after_start` in pipe mode (closed at once for a terminal)."""
        self._logger, readers, writers = await start_pipe_logger(
            self._fds, self._reaper, uri, container_id=self.process_id, namespace=self.namespace
        )
        self._after_start_close += readers
        return writers

    async def _start_binary_logger(self) -> None:
        out_w, err_w = await self._spawn_logger(self.config.stdout)
        self._runc_ends += [out_w, err_w]
        self.runc_stdio = RuncStdio(None, out_w, err_w)

    # -- after runc ------------------------------------------------------------------------

    async def after_start(self, *, timeout: float | None = IO_START_TIMEOUT) -> None:  # noqa: ASYNC109
        """runc create/exec/restore returned: close our copies of runc's ends and start
        copying (pipe modes; the output FIFOs must get a reader within ``timeout``), or receive
        the pty master and start the console copy (terminal). ``timeout=None``: no deadline
        (restore). Call :meth:`aclose` whatever happens."""
        if self._closed:
            raise StdioError("process io is closed")
        if self._started:
            raise StdioError("process io already started")
        self._started = True
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        for fd in self._runc_ends + self._after_start_close:
            self._fds.close(fd)
        self._runc_ends.clear()
        self._after_start_close.clear()
        if self.mode in (StdioMode.FIFO, StdioMode.FILE):
            await self._start_pipe_copy(deadline)
        elif self.mode is StdioMode.TERMINAL:
            await self._start_console(deadline)

    def _open_stdin(self) -> int:
        reader, self._keeper = open_stdin_fifo(
            self._fds, self.config.stdin, keep=not self._stdin_close_requested
        )
        return reader

    async def _start_pipe_copy(self, deadline: float) -> None:
        cfg = self.config
        stdin_r = self._open_stdin() if self._stdin_w is not None else None
        out_path = self.stdout_path if self.mode is StdioMode.FILE else cfg.stdout
        err_path = self.stdout_path if self.mode is StdioMode.FILE else cfg.stderr
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        drained: list[trio.Event] = []
        shared: int | None = None  # file mode: one append descriptor for both streams
        for name, src, path in (
            ("stdout", self._stdout_r, out_path),
            ("stderr", self._stderr_r, err_path),
        ):
            if src is None:
                continue
            if shared is not None:
                self._fds.share(shared)
                dst, keeper = shared, None
            else:
                dst, keeper = await open_output(self._fds, path, deadline, _PIPE_PREFIX)
                if keeper is None and out_path == err_path:
                    shared = dst
            done = trio.Event()
            drained.append(done)
            jobs.append(
                (name, output_job(self._fds, self.process_id, name, src, dst, keeper, done))
            )
        if stdin_r is not None and self._stdin_w is not None:
            jobs.append(("stdin", stdin_job(self._fds, stdin_r, self._stdin_w)))
        self._copiers.run(jobs, drained)

    async def _start_console(self, deadline: float) -> None:
        assert self._socket is not None
        cfg = self.config
        stdin_r = self._open_stdin() if cfg.stdin else None
        socket, self._socket = self._socket, None
        self._console = console = await receive_console(socket, deadline)
        if self._exited:
            console.shutdown()
        extra: list[int] = []  # closed with the output
        keeper: int | None = None
        if scheme_or_none(cfg.stdout) == "binary":
            try:
                out_w, err_w = await self._spawn_logger(cfg.stdout)
            except StdioError as exc:
                raise StdioError(_CONSOLE_PREFIX + str(exc)) from exc
            for fd in self._after_start_close:  # the logger has its own copies
                self._fds.close(fd)
            self._after_start_close.clear()
            output, extra = out_w, [err_w]
        elif cfg.stdout:
            output, keeper = await open_output(self._fds, cfg.stdout, deadline, _CONSOLE_PREFIX)
        else:
            output = self._fds.own(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        job, done = console_job(self._fds, self.process_id, console, stdin_r, output, keeper, extra)
        self._copiers.run([("console", job)], [done])

    # -- operations ------------------------------------------------------------------------

    async def close_stdin(self) -> None:
        """CloseIO: close the stdin keeper (idempotent). The container sees end of file once
        every client writer is closed too (terminal: the console is then shut down). Before
        :meth:`after_start` it is remembered: no keeper will be opened."""
        self._stdin_close_requested = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            self._fds.close(keeper)
        await trio.lowlevel.checkpoint()

    def resize(self, width: int, height: int) -> None:
        """ResizePty (``TIOCSWINSZ`` on the master); no console: nothing to do."""
        if self._console is not None:
            self._console.resize(width, height)

    async def process_exited(self) -> None:
        """The process exited: a console drains what the master holds and finishes (pipe
        modes need nothing: the copiers see end of file when the last writer is gone)."""
        self._exited = True
        if self._console is not None:
            self._console.shutdown()
        await trio.lowlevel.checkpoint()

    async def wait_drained(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the output copiers to finish; True if they
        have (also when there is nothing to copy)."""
        return await self._copiers.wait_drained(timeout)

    @property
    def drained(self) -> bool:
        return self._copiers.drained

    @property
    def console(self) -> Console | None:
        return self._console

    @property
    def logger(self) -> Child | None:
        """The ``binary://`` logger, if any."""
        return self._logger

    async def aclose(self) -> None:
        """Stop the copiers, close every descriptor, remove the console socket, and stop a
        logger (SIGTERM, up to 12 s, SIGKILL). Idempotent; unaffected by cancellation."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._copiers.aclose()
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._console is not None:
                self._console.close()
            self._fds.close_all()
            self._keeper = None
            logger, self._logger = self._logger, None
            if logger is not None:
                await stop_logger(logger)

    async def __aenter__(self) -> ProcessIO:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
