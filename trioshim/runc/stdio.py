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

Modes, chosen by the scheme of ``stdout`` alone (stdin/stderr never select anything):

- null (all three empty, no terminal): runc's stdio is ``/dev/null``, nothing to copy.
- fifo (no scheme, or ``fifo``): one pipe per non-empty stream; runc's ends are fchown'ed to
  ``io_uid:io_gid`` and closed here after start. Output FIFOs: ``open(O_WRONLY|O_NONBLOCK)``
  polled (``ENXIO`` = no reader yet) until a reader exists or the deadline, then a *keeper*
  reader ``O_RDONLY|O_NONBLOCK`` held (never read) so the client can go away and come back
  without our writes failing: data waits in the FIFO and the container blocks, nothing is
  lost. A non-FIFO path is opened ``O_WRONLY|O_APPEND`` (never created). Stdin: the FIFO's
  reader ``O_RDONLY|O_NONBLOCK`` first, then the *stdin keeper* writer (so the copier sees end
  of file only after :meth:`ProcessIO.close_stdin` *and* every client writer closed).
- file (``file:///abs/path``): parent dirs created (0755), the file created for appending
  (0644); stdout and stderr are copied into one shared append descriptor.
- binary (``binary:///abs/logger?k=v``): the logger is spawned through the reaper with fd 3 =
  stdout pipe, fd 4 = stderr pipe, fd 5 = readiness pipe, environment ``CONTAINER_ID`` /
  ``CONTAINER_NAMESPACE`` only, and awaited (one byte or end of file); runc gets the write
  ends; nothing is copied by the shim. Closing stops it: SIGTERM, 12 s, SIGKILL. Stdin is not
  connected (as in containerd-shim-runc-v2).
- terminal: a console socket (see :mod:`trioshim.runc.console`); after start, the master is
  copied to the stdout FIFO (or a ``binary://`` logger's fd 3), stdin FIFO -> master; stderr is
  ignored. The output is drained once the console is shut down at the exit (a terminal with no
  slave open may be reopened, so its hang-up is not the end) and the client has read the FIFO.
  Stdin's end of file shuts the console down.
- any other scheme: ``StdioError("unknown STDIO scheme <s>")``.

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

import enum
import errno
import logging
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, NamedTuple

import trio

from trioshim.runc.console import Console, ConsoleError, ConsoleSocket
from trioshim.shim.reaper import Child, Reaper
from trioshim.task.copy import (
    PumpEnd,
    errno_text,
    pump,
    set_nonblocking,
    set_pipe_size,
)
from trioshim.task.fifo import FIFO_POLL_MAX, OUTPUT_FLUSH_TIMEOUT, wait_fifo_read
from trioshim.task.logger import LOGGER_TERM_TIMEOUT, logger_argv, start_logger, stop_logger
from trioshim.task.stdio import StdioError as KitStdioError

__all__ = [
    "IO_START_TIMEOUT",
    "LOGGER_TERM_TIMEOUT",
    "ProcessIO",
    "RuncStdio",
    "StdioConfig",
    "StdioDeadlineExceeded",
    "StdioError",
    "StdioMode",
]

log = logging.getLogger(__name__)

IO_START_TIMEOUT: Final = 30.0
"""Default deadline of :meth:`ProcessIO.after_start` (FIFO readers, console master)."""

_PIPE_PREFIX: Final = "failed to start io pipe copy: unable to copy pipes: "
_CONSOLE_PREFIX: Final = "failed to start console copy: "
_DEADLINE: Final = "context deadline exceeded"


class StdioError(Exception):
    """Stdio could not be set up (Unknown on the wire unless a subclass says otherwise)."""


class StdioDeadlineExceeded(StdioError):
    """The deadline of :meth:`ProcessIO.after_start` passed (DeadlineExceeded on the wire)."""


@dataclass(frozen=True, slots=True)
class StdioConfig:
    """The stdio of a process as containerd sends it (``CreateTaskRequest`` /
    ``ExecProcessRequest``)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def is_null(self) -> bool:
        return not (self.stdin or self.stdout or self.stderr)


class RuncStdio(NamedTuple):
    """Descriptors to give runc as its stdin/stdout/stderr; ``None`` = ``/dev/null``."""

    stdin: int | None
    stdout: int | None
    stderr: int | None


class StdioMode(enum.Enum):
    NULL = "null"
    FIFO = "fifo"
    FILE = "file"
    BINARY = "binary"
    TERMINAL = "terminal"


# ---------------------------------------------------------------------------------------------
# URIs (Go's net/url rules for what matters here)

_SCHEME_CHARS: Final = re.compile(r"[A-Za-z0-9+.\-]")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _scheme(uri: str) -> str:
    """The lower-cased scheme of ``uri`` ('' for a plain path), as Go's url.Parse finds it."""
    for i, ch in enumerate(uri):
        if ch.isascii() and ch.isalpha():
            continue
        if ch == ":":
            if i == 0:
                raise StdioError(
                    f'unable to parse stdout uri: parse "{uri}": missing protocol scheme'
                )
            return uri[:i].lower()
        if i > 0 and _SCHEME_CHARS.fullmatch(ch):
            continue
        return ""
    return ""


def _check_uri(uri: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise StdioError(
            f'unable to parse stdout uri: parse "{uri}": net/url: invalid control character in URL'
        )
    bad = _BAD_ESCAPE.search(uri.split("?", 1)[0])
    if bad is not None:
        esc = uri[bad.start() : bad.start() + 3]
        raise StdioError(f'unable to parse stdout uri: parse "{uri}": invalid URL escape "{esc}"')


def _uri_path(uri: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(uri).path)


# ---------------------------------------------------------------------------------------------
# the IO object


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
        self._nursery = nursery
        self._reaper = reaper
        self.mode = StdioMode.NULL
        self.runc_stdio: RuncStdio | None = None
        """Pipe modes: runc's stdin/stdout/stderr (``None`` = /dev/null). Terminal: ``None``."""
        self.console_socket: str | None = None
        """Terminal mode: the path for ``runc --console-socket``. Pipe modes: ``None``."""
        self.stdout_path = ""  # file mode: the log file
        self._fds: dict[int, int] = {}  # our descriptors -> reference count
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
        self._drained: list[trio.Event] = []
        self._cancel = trio.CancelScope()
        self._copiers_done: trio.Event | None = None
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
        config = self.config
        if config.terminal:
            self.mode = StdioMode.TERMINAL
            try:
                self._socket = ConsoleSocket.create()
            except OSError as exc:
                raise StdioError(f"{exc.strerror or exc}") from exc
            self.console_socket = self._socket.path
            return
        if config.is_null:
            self.mode = StdioMode.NULL
            self.runc_stdio = RuncStdio(None, None, None)
            return
        _check_uri(config.stdout)
        scheme = _scheme(config.stdout)
        if scheme in ("", "fifo"):
            self.mode = StdioMode.FIFO
            self._make_pipes()
        elif scheme == "file":
            self.mode = StdioMode.FILE
            path = _uri_path(config.stdout)
            try:
                os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
                os.close(
                    os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                )
            except OSError as exc:
                raise StdioError(_path_error("open", path, exc)) from exc
            self.stdout_path = path
            self._make_pipes()
        elif scheme == "binary":
            self.mode = StdioMode.BINARY
            await self._start_binary_logger()
        else:
            raise StdioError(f"unknown STDIO scheme {scheme}")

    def _make_pipes(self) -> None:
        cfg = self.config
        stdin = stdout = stderr = None
        if cfg.stdin:
            runc_end, self._stdin_w = self._pipe(runc_reads=True, name="stdin")
            stdin = runc_end
        if cfg.stdout:
            runc_end, self._stdout_r = self._pipe(runc_reads=False, name="stdout")
            stdout = runc_end
        if cfg.stderr:
            runc_end, self._stderr_r = self._pipe(runc_reads=False, name="stderr")
            stderr = runc_end
        self.runc_stdio = RuncStdio(stdin, stdout, stderr)

    def _pipe(self, *, runc_reads: bool, name: str) -> tuple[int, int]:
        """A pipe for one stream: returns (runc's end, our non-blocking end)."""
        # Output pipes are enlarged (fewer, bigger splices). The stdin pipe keeps the default
        # 64 KiB: what it buffers before the container reads is what a client can push before
        # Start returns, and `ctr run` only wires up CloseIO once the task exists (stdin that
        # all fits in the buffers by then never gets its CloseIO, and the container hangs).
        r, w = self._new_pipe(large=not runc_reads)
        runc_end, ours = (r, w) if runc_reads else (w, r)
        self._runc_ends.append(runc_end)
        set_nonblocking(ours)
        st = os.fstat(runc_end)
        if (st.st_uid, st.st_gid) != (self.io_uid, self.io_gid):
            try:
                os.fchown(runc_end, self.io_uid, self.io_gid)
            except OSError as exc:
                raise StdioError(f"failed to chown {name}: {errno_text(exc)}") from exc
        return runc_end, ours

    def _new_pipe(self, *, large: bool = False) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        self._own(r)
        self._own(w)
        if large and os.geteuid() == 0:  # unprivileged users have a budget of pipe pages
            set_pipe_size(w)
        return r, w

    async def _spawn_logger(self, uri: str) -> tuple[int, int]:
        """Start the ``binary://`` logger; returns our write ends (stdout, stderr) and keeps
        the read ends until :meth:`after_start` in pipe mode (closed at once for a terminal)."""
        if not self.namespace:
            raise StdioError("namespace is required: failed precondition")
        argv = logger_argv(uri)
        out_r, out_w = self._new_pipe(large=True)
        err_r, err_w = self._new_pipe(large=True)
        try:
            child = await start_logger(
                self._reaper,
                argv,
                container_id=self.process_id,
                namespace=self.namespace,
                stdout=out_r,
                stderr=err_r,
            )
        except KitStdioError as exc:
            raise StdioError(str(exc)) from exc
        self._logger = child
        self._after_start_close += [out_r, err_r]
        return out_w, err_w

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
            self._close(fd)
        self._runc_ends.clear()
        self._after_start_close.clear()
        if self.mode in (StdioMode.FIFO, StdioMode.FILE):
            await self._start_pipe_copy(deadline)
        elif self.mode is StdioMode.TERMINAL:
            await self._start_console(deadline)

    def _open_stdin(self) -> int:
        """The stdin FIFO: our reader first (never blocks), then the keeper writer (succeeds
        because a reader exists now)."""
        path = self.config.stdin
        try:
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StdioError(
                f"failed to open stdin fifo {path}: {_path_error('open', path, exc)}"
            ) from exc
        self._own(reader)
        if not self._stdin_close_requested:
            try:
                keeper = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise StdioError(
                    f"failed to open stdin fifo {path}: {_path_error('open', path, exc)}"
                ) from exc
            self._keeper = self._own(keeper)
        return reader

    async def _open_output(
        self, path: str, deadline: float, prefix: str, *, append: bool = True
    ) -> tuple[int, int | None]:
        """Open an output destination: (our writer, the keeper reader of a FIFO or None)."""
        try:
            is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
        except FileNotFoundError:
            is_fifo = False
        except OSError as exc:
            raise StdioError(prefix + _path_error("stat", path, exc)) from exc
        if not is_fifo:
            flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_APPEND if append else 0)
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                what = f'containerd-shim: opening file "{path}" failed: '
                raise StdioError(prefix + what + _path_error("open", path, exc)) from exc
            return self._own(fd), None
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
                        raise StdioError(prefix + what + _path_error("open", path, exc)) from exc
                await trio.sleep(delay)
                delay = min(delay * 2, FIFO_POLL_MAX)
        if writer is None:
            raise StdioDeadlineExceeded(prefix + what + _DEADLINE)
        self._own(writer)
        try:
            keeper = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            what = f'containerd-shim: opening r/o fifo "{path}" failed: '
            raise StdioError(prefix + what + _path_error("open", path, exc)) from exc
        self._own(keeper)
        if os.geteuid() == 0:
            set_pipe_size(writer)
        return writer, keeper

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
                self._fds[shared] += 1
                dst, keeper = shared, None
            else:
                dst, keeper = await self._open_output(path, deadline, _PIPE_PREFIX)
                if keeper is None and out_path == err_path:
                    shared = dst
            done = trio.Event()
            drained.append(done)
            jobs.append((name, self._output_job(name, src, dst, keeper, done)))
        if stdin_r is not None and self._stdin_w is not None:
            jobs.append(("stdin", self._stdin_job(stdin_r, self._stdin_w)))
        self._run(jobs, drained)

    def _output_job(
        self, name: str, src: int, dst: int, keeper: int | None, done: trio.Event
    ) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            try:
                result = await pump(src, dst)
                if result.end is PumpEnd.EOF:
                    self._close(src)  # every writer is gone; nothing more will come
                    if keeper is not None:
                        await wait_fifo_read(keeper, OUTPUT_FLUSH_TIMEOUT)
                else:
                    log.warning("%s: error copying %s: %s", self.process_id, name, result.end.value)
            finally:
                self._close(dst)
                if keeper is not None:
                    self._close(keeper)
                done.set()

        return job

    def _stdin_job(self, src: int, dst: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            try:
                await pump(src, dst)
            finally:
                self._close(dst)  # the container sees end of file
                self._close(src)

        return job

    async def _start_console(self, deadline: float) -> None:
        assert self._socket is not None
        cfg = self.config
        stdin_r = self._open_stdin() if cfg.stdin else None
        console: Console | None = None
        try:
            with trio.move_on_at(deadline):
                console = await self._socket.receive_master()
        except (ConsoleError, OSError) as exc:
            raise StdioError(f"failed to retrieve console master: {exc}") from exc
        finally:
            self._socket.close()
            self._socket = None
        if console is None:
            raise StdioDeadlineExceeded(f"failed to retrieve console master: {_DEADLINE}")
        self._console = console
        if self._exited:
            console.shutdown()
        extra: list[int] = []  # closed with the output
        keeper: int | None = None
        if _scheme_or_none(cfg.stdout) == "binary":
            try:
                out_w, err_w = await self._spawn_logger(cfg.stdout)
            except StdioError as exc:
                raise StdioError(_CONSOLE_PREFIX + str(exc)) from exc
            for fd in self._after_start_close:  # the logger has its own copies
                self._close(fd)
            self._after_start_close.clear()
            output, extra = out_w, [err_w]
        elif cfg.stdout:
            output, keeper = await self._open_output(cfg.stdout, deadline, _CONSOLE_PREFIX)
        else:
            output = self._own(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        done = trio.Event()

        def close_output() -> None:
            if done.is_set():
                return  # closed already (a descriptor number may have been reused since)
            for fd in (output, keeper, *extra):
                if fd is not None:
                    self._close(fd)
            done.set()

        async def output_done(end: PumpEnd) -> None:
            # The console was shut down (exit, stdin's end) and drained, or the output broke:
            # the output is complete once the client has read it (the exit waits for this).
            try:
                if end is PumpEnd.BROKEN:
                    log.warning("%s: error copying console output: broken", self.process_id)
                elif keeper is not None:
                    await wait_fifo_read(keeper, OUTPUT_FLUSH_TIMEOUT)
            finally:
                close_output()

        async def job() -> None:
            try:
                await cons.copy(stdin=stdin_r, output=output, output_done=output_done)
            finally:
                close_output()  # if copy() failed before its output side ended
                if stdin_r is not None:
                    self._close(stdin_r)

        cons = console
        self._run([("console", job)], [done])

    # -- copier tasks ----------------------------------------------------------------------

    def _run(
        self, jobs: list[tuple[str, Callable[[], Awaitable[None]]]], drained: list[trio.Event]
    ) -> None:
        self._drained += drained
        if not jobs:
            return
        self._copiers_done = done = trio.Event()
        self._nursery.start_soon(self._supervise, jobs, done, name=f"stdio {self.process_id}")

    async def _supervise(
        self, jobs: list[tuple[str, Callable[[], Awaitable[None]]]], done: trio.Event
    ) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    for name, job in jobs:
                        nursery.start_soon(self._guard, name, job, name=f"{name} {self.process_id}")
        finally:
            done.set()

    async def _guard(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception:
            log.exception("%s: copying %s failed", self.process_id, name)

    # -- operations ------------------------------------------------------------------------

    async def close_stdin(self) -> None:
        """CloseIO: close the stdin keeper (idempotent). The container sees end of file once
        every client writer is closed too (terminal: the console is then shut down). Before
        :meth:`after_start` it is remembered: no keeper will be opened."""
        self._stdin_close_requested = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            self._close(keeper)
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
        with trio.move_on_after(timeout):
            for done in self._drained:
                await done.wait()
        await trio.lowlevel.checkpoint()
        return all(done.is_set() for done in self._drained)

    @property
    def drained(self) -> bool:
        return all(done.is_set() for done in self._drained)

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
            self._cancel.cancel()
            if self._copiers_done is not None:
                await self._copiers_done.wait()
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._console is not None:
                self._console.close()
            for fd in list(self._fds):
                self._fds[fd] = 1
                self._close(fd)
            self._keeper = None
            for done in self._drained:
                done.set()
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

    # -- descriptors -----------------------------------------------------------------------

    def _own(self, fd: int) -> int:
        self._fds[fd] = 1
        return fd

    def _close(self, fd: int) -> None:
        count = self._fds.get(fd)
        if count is None:
            return
        if count > 1:
            self._fds[fd] = count - 1
            return
        del self._fds[fd]
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def _scheme_or_none(uri: str) -> str | None:
    try:
        return _scheme(uri)
    except StdioError:
        return None


def _path_error(op: str, path: str, exc: OSError) -> str:
    """Go's ``*PathError`` text: ``open /x: no such file or directory``."""
    return f"{op} {path}: {errno_text(exc)}"
