"""Shared mode: one process serves every daemon of a runtime for one containerd.

::

    trio.run(SharedShims.serve)
     └─ process nursery
         ├─ reaper             the process's only one, shared by every daemon (subreaper)
         ├─ signal receiver    SIGTERM/SIGINT -> every daemon shuts down, then the process
         ├─ stack dumps        SIGUSR1 -> the process's task tree into every daemon's log
         ├─ containerd watch   its containerd gone: the process ends with its last daemon
         │                     (:mod:`trioshim.shim.sharedcontainerd`)
         ├─ control socket     "start"/"delete" (a helper's action, run here:
         │                     :mod:`trioshim.shim.sharedactions`), "serve" (a socket +
         │                     ShimSpec from a start helper), "ping" (is the process alive):
         │                     :mod:`trioshim.shim.sharedcontrol`,
         │                     :mod:`trioshim.shim.sharedclient`
         └─ one task per daemon: :func:`~trioshim.shim.daemon.serve_daemon`, whose root
            nursery (ttrpc server, publisher, plugins, abandonment watch) is a child of this
            one; its own socket, address file, bundle, identity and log FIFO

A daemon ends as a process of its own would (its Shutdown, abandonment): its
listener and connections close, which containerd takes for the shim's exit; the other
daemons are untouched. A daemon that crashes is logged in its own log and ends alone
(``serve_daemon`` never raises for a crash). Once no daemon is left and no request is being
served, the process ends: at once when its containerd has gone (a pidfd or polling:
:mod:`trioshim.shim.sharedcontainerd`; a containerd restarted at the same address makes the
process its own with its first start), else after ``$TRIOSHIM_SHARED_IDLE`` seconds (default
600, as long as the fork server idles: meanwhile it serves the next start as it would any). It
takes the control lock (no helper is mid-hand-over), removes its control socket and lock file,
exits. While daemons are left it serves them, whether or not its containerd is alive.
The trade-off: a death of the process (SIGKILL, OOM kill) takes every daemon with it;
containerd then cleans up each as it does after any shim's death.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import trio

from trioshim.shim.daemon import DaemonConfig, serve_daemon
from trioshim.shim.log import LOG_NAME, FdHandler, LogrusFormatter, open_log_fifo
from trioshim.shim.manager import Manager
from trioshim.shim.plugin import Registry
from trioshim.shim.reaper import Reaper, set_child_subreaper
from trioshim.shim.sharedclient import ShimSpec
from trioshim.shim.sharedcontainerd import Containerd
from trioshim.shim.sharedcontrol import serve_control
from trioshim.shim.stackdump import serve_stack_dumps

__all__ = [
    "ENV_IDLE",
    "IDLE_TIMEOUT",
    "SharedShims",
    "current_log",
    "idle_timeout",
    "route_module_logs",
    "run_shared",
]

ENV_IDLE = "TRIOSHIM_SHARED_IDLE"
IDLE_TIMEOUT = 600.0

_current_log: contextvars.ContextVar[logging.Logger] = contextvars.ContextVar("shim_log")


class _ToCurrentShim(logging.Handler):
    """On the ``trioshim`` logger: a record of a module logger (``trioshim.runc.backend``...)
    goes to the log of the daemon whose task tree wrote it."""

    def emit(self, record: logging.LogRecord) -> None:
        log = _current_log.get(None)
        if log is not None:
            log.callHandlers(record)


def route_module_logs() -> None:
    logger = logging.getLogger(LOG_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(_ToCurrentShim())
    logger.setLevel(logging.DEBUG)  # each daemon's handler applies its own level
    logger.propagate = False


@contextlib.contextmanager
def current_log(log: logging.Logger) -> Iterator[None]:
    """Module loggers' records written in this task (and the tasks it starts) go to ``log``."""
    token = _current_log.set(log)
    try:
        yield
    finally:
        _current_log.reset(token)


def idle_timeout(env: Mapping[str, str]) -> float:
    """``$TRIOSHIM_SHARED_IDLE`` seconds (0: end with the last daemon); the default when it
    is unset, empty or not a number."""
    try:
        value = float(env.get(ENV_IDLE) or IDLE_TIMEOUT)
    except ValueError:
        return IDLE_TIMEOUT
    return value if value >= 0 else IDLE_TIMEOUT


@contextlib.contextmanager
def _shim_log(manager: Manager, spec: ShimSpec) -> Iterator[logging.Logger]:
    """The daemon's logger, writing to its bundle's log FIFO (nowhere without a reader)."""
    try:
        fd = open_log_fifo(os.path.join(spec.bundle, "log"), stderr=False)
    except OSError:
        fd = None  # an unusable FIFO costs this daemon its log, never the process
    log = logging.Logger(LOG_NAME)  # not registered: nothing kept once the daemon ends
    log.propagate = False
    if fd is not None:
        handler = FdHandler(fd, logging.DEBUG if spec.flags.debug else logging.INFO)
        handler.setFormatter(LogrusFormatter({"runtime": manager.name}))
        log.addHandler(handler)
    else:
        log.addHandler(logging.NullHandler())
    try:
        yield log
    finally:
        if fd is not None:
            os.close(fd)


@dataclass
class _Daemon:
    config: DaemonConfig
    serving: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    status: int | None = None


class SharedShims:
    """The daemons of one shared process, by socket address."""

    def __init__(
        self,
        manager: Manager,
        registry: Registry,
        *,
        lock_path: str | None = None,
        handle_signals: bool = True,
        idle: float = 0.0,
        containerd: Containerd | None = None,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.lock_path = lock_path
        self.handle_signals = handle_signals
        self.reaper = Reaper()
        self.daemons: dict[str, _Daemon] = {}
        self.idle = idle  # seconds without daemons or requests before the process ends
        self._busy = 0  # helpers' requests being served
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._stopping: str | None = None  # shutdown_all's reason, for daemons still starting
        # Whose daemons these are (None: nobody watched); orphaned once it has gone.
        self.containerd = containerd
        self.orphaned = False

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        control: trio.socket.SocketType | None = None,
        control_path: str | None = None,
        *,
        task_status: trio.TaskStatus[SharedShims] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until no daemon is left and, unless our containerd has gone, no request
        came for ``idle`` seconds."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.reaper.serve)
            if self.containerd is not None:
                nursery.start_soon(self._watch_containerd, self.containerd)
            if self.handle_signals:
                await nursery.start(self._watch_signals)
                await nursery.start(serve_stack_dumps, self._every_log())
            if control is not None:
                nursery.start_soon(serve_control, self, control)
            task_status.started(self)
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                if self.daemons or self._busy:
                    continue
                linger = 0 if self._stopping or self.orphaned else self.idle
                with trio.move_on_after(linger) as idle:
                    await self._changed.wait()  # left set: the loop looks again
                if idle.cancelled_caught and await self._release_control(control_path):
                    break
            nursery.cancel_scope.cancel()
        self._nursery = None

    async def _watch_containerd(self, containerd: Containerd) -> None:
        try:
            await containerd.wait_gone()
        finally:
            containerd.close()
        self.orphaned = True
        self._changed.set()

    def adopt(self, helper_pid: int) -> None:
        """A start from the live helper ``helper_pid``: when our containerd has gone, the
        helper's (a containerd restarted at the same address) is ours from now on."""
        if not self.orphaned or self._nursery is None:
            return
        containerd = Containerd.parent_of(helper_pid)
        if containerd.pid > 0:
            self.containerd, self.orphaned = containerd, False
            self._nursery.start_soon(self._watch_containerd, containerd)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """A helper's request is being served: the process does not end meanwhile."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._changed.set()

    async def _release_control(self, control_path: str | None) -> bool:
        """Whether still no daemon is left once no helper can be mid-hand-over (the control
        lock held); if so the control socket and lock file are gone: no helper reaches us."""
        if self.lock_path is None or control_path is None:
            return True
        fd = await trio.to_thread.run_sync(_lock, self.lock_path, abandon_on_cancel=True)
        try:
            if self.daemons or self._busy:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(control_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            return True
        finally:
            os.close(fd)

    async def add(self, spec: ShimSpec, listener: socket.socket) -> int | None:
        """Start serving ``spec`` on ``listener`` (ours from now on); returns ``None`` once it
        serves, else the exit status of its failed start."""
        if self._nursery is None or self._stopping is not None:
            listener.close()
            raise RuntimeError("the shared process is not serving (or shutting down)")
        if spec.address in self.daemons:
            listener.close()
            raise ValueError(f"{spec.address} is already served by this process")
        config = DaemonConfig(
            flags=spec.flags,
            manager=self.manager,
            registry=self.registry,
            bundle=spec.bundle,
            ttrpc_address=spec.ttrpc_address,
            log=logging.Logger(LOG_NAME),  # replaced by the daemon's own in _run_daemon
            listener=listener,
            socket_address=spec.address,
            handle_signals=False,
            abandon_timeout=self.manager.abandon_timeout,
            shared_reaper=self.reaper,
        )
        daemon = self.daemons[spec.address] = _Daemon(config)
        self._nursery.start_soon(self._run_daemon, spec, daemon)
        await daemon.serving.wait()
        return daemon.status

    async def _run_daemon(self, spec: ShimSpec, daemon: _Daemon) -> None:
        config = daemon.config

        def trace(stage: str) -> None:
            # A shutdown_all that came before this daemon had its shutdown service reaches
            # it at its first stage (the service exists from then on).
            shutdown = config.shutdown
            if self._stopping is not None and shutdown is not None and not shutdown.is_shutdown:
                shutdown.shutdown(self._stopping)
            if stage == "serving":
                daemon.serving.set()

        config.trace = trace
        try:
            with _shim_log(self.manager, spec) as log:
                _current_log.set(log)
                config.log = log
                daemon.status = await serve_daemon(config)
        finally:
            del self.daemons[spec.address]
            daemon.serving.set()
            daemon.ended.set()
            self._changed.set()

    async def stop(self, address: str, reason: str) -> bool:
        """End the daemon serving ``address``; whether there was one."""
        daemon = self.daemons.get(address)
        if daemon is None:
            return False
        await daemon.serving.wait()
        if daemon.config.shutdown is not None:
            daemon.config.shutdown.shutdown(reason)
        await daemon.ended.wait()
        return True

    async def wait(self, address: str) -> int | None:
        """Wait until the daemon serving ``address`` (if any) has ended; its exit status."""
        daemon = self.daemons.get(address)
        if daemon is None:
            return None
        await daemon.ended.wait()
        return daemon.status

    def _every_log(self) -> logging.Logger:
        """A logger writing to every daemon's log (a SIGUSR1 stack dump is the process's:
        whoever debugs any of its shims finds it in that shim's log)."""
        daemons = self.daemons

        class ToEveryShim(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                for daemon in list(daemons.values()):
                    daemon.config.log.callHandlers(record)

        log = logging.Logger(LOG_NAME)
        log.propagate = False
        log.addHandler(ToEveryShim())
        return log

    def shutdown_all(self, reason: str) -> None:
        """Every daemon shuts down (its own ordered sequence); no new one is taken."""
        self._stopping = self._stopping or reason
        for daemon in list(self.daemons.values()):
            if daemon.config.shutdown is not None:
                daemon.config.shutdown.shutdown(reason)
        self._changed.set()

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.shutdown_all(f"signal {signal.Signals(signum).name}")


def _lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def run_shared(
    manager: Manager,
    registry: Registry,
    control: socket.socket,
    control_path: str,
    *,
    first: tuple[ShimSpec, socket.socket],
    containerd: Containerd,
) -> int:
    """The shared process (forked by a start helper, which holds the control lock): serve
    ``first`` and what the control socket brings for ``containerd`` (the helper's), until no
    daemon is left and either it has gone or the idle time is over."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    set_child_subreaper()
    route_module_logs()

    async def main() -> None:
        shims = SharedShims(
            manager,
            registry,
            lock_path=control_path + ".lock",
            idle=idle_timeout(os.environ),
            containerd=containerd,
        )
        control.setblocking(False)
        async with trio.open_nursery() as nursery:
            trio_control = trio.socket.from_stdlib_socket(control)
            await nursery.start(shims.serve, trio_control, control_path)
            await shims.add(*first)

    trio.run(main)
    return 0
