"""The engine level: a name and ``async run(ctx) -> exit status``; the kit does the rest.

An :class:`Engine` runs one workload to its end. :class:`EngineBackend` adapts it to the
instance level (:mod:`trioshim.task.instance`): each process (the init, and each exec when
the engine has ``execs = True``) gets a :class:`RunContext` with the OCI spec, the rootfs,
args, env and cwd, its stdio already open, and the signals containerd sends it.

The protocol of ``run``:

- call ``ctx.started(pid)`` once the workload runs (``pid`` defaults to the shim's own, for a
  workload that is not a process, such as a wasm module); Start replies then. Raising before
  it fails Start with the error; returning before it is a workload that ran to its end at once;
- watch ``ctx.signals`` for Kill: ``await ctx.signals.receive()``, or ``ctx.signals.last``;
  the kit does not interpret them (a SIGKILL you ignore keeps running);
- return the exit status (128 + n for death by signal n). An exception after ``started``
  is logged and reported as exit status 255;
- call ``ctx.report_oom()`` for an OOM the workload met while it runs (TaskOOM goes out at
  once, one per call), and ``ctx.oom()`` before returning for one not reported yet when it
  ends (say, the kill that ended it): the exit then carries it (``Exit(oom=True)``), and
  containerd gets TaskOOM just before TaskExit. Never both for the same OOM.

Optional: ``async stats(ctx) -> Any | None`` (:class:`EngineStats`) answers the Stats RPC for
the container whose init ran with ``ctx`` (``None``: an empty reply); without it Stats
answers Unimplemented.

The stdio descriptors belong to the kit: they are closed when ``run`` has returned.

The container's root filesystem is the kit's too: the Create request's mounts (an image's
snapshot, as ``ctr run IMAGE`` and CRI send them) are stacked on ``<bundle>/rootfs``
(:mod:`trioshim.shim.mounts`) before the engine sees the container, and unmounted when the
container is deleted (or its Create fails). ``ctx.rootfs`` is then a plain directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import trio
from google.protobuf import any_pb2

from trioshim.shim.mounts import Mount, RootfsMountError, mount_rootfs, unmount_all
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import FailedPreconditionError, TaskError, UnimplementedError
from trioshim.task.instance import CreateRequest, ExecRequest, Exit, Host, Instance
from trioshim.task.stdio import Stdio, StdioSpec

__all__ = ["Engine", "EngineBackend", "EngineStats", "RunContext", "Signals", "StartFailed"]

log = logging.getLogger(__name__)

FAILED_STATUS: Final = 255


class StartFailed(TaskError):
    """The engine raised before its workload started (Start answers Unknown with this)."""


class Engine(Protocol):
    """A workload runner: what an engine shim's author writes."""

    @property
    def name(self) -> str:
        """Shown in logs and errors (a class attribute will do)."""

    async def run(self, ctx: RunContext) -> int: ...


@runtime_checkable
class EngineStats(Protocol):
    """The optional stats hook of an engine (containerd's Stats, ``ctr task metrics``)."""

    async def stats(self, ctx: RunContext) -> any_pb2.Any | None: ...


class Signals:
    """The signals Kill delivered to one process, in order."""

    def __init__(self) -> None:
        self.last: int | None = None
        self._send, self._receive = trio.open_memory_channel[int](64)

    def deliver(self, signal: int) -> None:
        self.last = signal
        try:
            self._send.send_nowait(signal)
        except trio.WouldBlock:  # nobody reads: ``last`` still tells
            log.debug("signal %d not queued: the engine is not reading its signals", signal)

    async def receive(self) -> int:
        """The next signal (queued ones first)."""
        return await self._receive.receive()

    async def forward(self, send: Callable[[int], object]) -> None:
        """Pass every signal to ``send`` (e.g. ``child.send_signal``) until cancelled."""
        while True:
            send(await self.receive())


@dataclass(eq=False)
class RunContext:
    """Everything one run of an engine needs."""

    id: str
    """The container id."""
    exec_id: str | None
    """``None`` for the container's init."""
    bundle: str
    spec: Mapping[str, Any]
    """The OCI spec (``config.json``); for an exec, the spec with the exec's ``process``."""
    rootfs: str
    """The root filesystem directory (``root.path`` resolved against the bundle)."""
    args: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    stdio: Stdio
    host: Host
    signals: Signals = field(default_factory=Signals)
    pid: int | None = None
    oom_seen: bool = False
    """Set by :meth:`oom`: the exit is reported as an OOM."""
    _on_started: Callable[[int], object] | None = field(default=None, repr=False)
    _held_oom_reports: int | None = field(default=0, repr=False)
    """OOMs reported before the kit published the start; None once it has (they go at once)."""

    @property
    def reaper(self) -> Reaper:
        """Start children through this (one reaper per shim process)."""
        return self.host.reaper

    def started(self, pid: int | None = None) -> None:
        """The workload runs: Start replies with ``pid`` (default: the shim's pid)."""
        if self.pid is not None:
            raise RuntimeError("RunContext.started() called twice")
        self.pid = os.getpid() if pid is None else pid
        if self._on_started is not None:
            self._on_started(self.pid)

    def oom(self) -> None:
        """The workload met the OOM killer during this run: TaskOOM goes out just before its
        TaskExit (one, however often this is called)."""
        self.oom_seen = True

    def report_oom(self) -> None:
        """The workload meets the OOM killer now: TaskOOM for this container goes out at once
        (one per call), ahead of the exit if the run is still going. One reported before the
        kit has published the start (say, from the task that called :meth:`started`) is held
        until it has: TaskOOM never precedes TaskStart."""
        if self._held_oom_reports is None:
            self.host.report_oom(self.id)
        else:
            self._held_oom_reports += 1

    def _release_oom_reports(self) -> None:
        """The start is published: the OOMs held go out, later ones at once."""
        held, self._held_oom_reports = self._held_oom_reports or 0, None
        for _ in range(held):
            self.host.report_oom(self.id)


def _context(
    request_id: str,
    exec_id: str | None,
    bundle: str,
    spec: Mapping[str, Any],
    stdio: Stdio,
    host: Host,
) -> RunContext:
    process = spec.get("process") or {}
    root = (spec.get("root") or {}).get("path") or "rootfs"
    env = dict(item.split("=", 1) for item in process.get("env") or () if "=" in item)
    return RunContext(
        id=request_id,
        exec_id=exec_id,
        bundle=bundle,
        spec=spec,
        rootfs=posixpath.join(bundle, root),
        args=tuple(process.get("args") or ()),
        env=env,
        cwd=process.get("cwd") or "/",
        stdio=stdio,
        host=host,
    )


class EngineInstance:
    """One run of the engine, as an :class:`~trioshim.task.instance.Instance`.

    ``mounted_rootfs``: the directory the kit mounted the container's rootfs on (the init's
    instance only), unmounted by :meth:`delete`."""

    def __init__(
        self,
        engine: Engine,
        ctx: RunContext,
        stdio_spec: StdioSpec,
        *,
        mounted_rootfs: str | None = None,
    ) -> None:
        self.engine, self.ctx, self.stdio_spec = engine, ctx, stdio_spec
        self.mounted_rootfs = mounted_rootfs
        self._exit: Exit | None = None
        self._done = trio.Event()
        self._starting = False

    async def start(self) -> int:
        self._starting = True
        try:
            pid: int = await self.ctx.host.nursery.start(self._run)
        except BaseException:
            # It never ran: still CREATED, so Kill ends it and Wait returns (containerd and
            # CRI clean up a failed Start with Kill, Wait, Delete).
            self._starting = False
            raise
        return pid

    async def _run(self, *, task_status: trio.TaskStatus[int]) -> None:
        ctx = self.ctx
        ctx._on_started = task_status.started
        try:
            status = await self.engine.run(ctx)
            if ctx.pid is None:  # ran to its end without saying it started
                ctx.started()
        except Exception as exc:
            if ctx.pid is None:  # Start fails with this error
                raise StartFailed(f"engine {self.engine.name}: {exc}") from exc
            log.exception("engine %s: the run of %s failed", self.engine.name, ctx.id)
            status = FAILED_STATUS
        finally:
            await ctx.stdio.aclose()
        self._finish(Exit(status, oom=ctx.oom_seen))

    def _finish(self, exit: Exit) -> None:
        if self._exit is None:
            self._exit = exit
            self._done.set()

    async def kill(self, signal: int, all: bool) -> None:
        if not self._starting and not self._done.is_set():
            # Never started: it will never run; it "exits" by this signal.
            await self.ctx.stdio.aclose()
            self._finish(Exit(128 + signal))
            return
        self.ctx.signals.deliver(signal)

    async def wait(self) -> Exit:
        # The kit calls wait once the start (or a Kill before it) is published: the hand-off
        # after which the run's OOM reports may go out.
        self.ctx._release_oom_reports()
        await self._done.wait()
        assert self._exit is not None
        return self._exit

    async def delete(self) -> None:
        await self.ctx.stdio.aclose()
        if self.mounted_rootfs is not None:
            try:
                await unmount_all(self.mounted_rootfs)
            except OSError as exc:
                raise TaskError(f"unmount rootfs of {self.ctx.id}: {exc}") from exc
            self.mounted_rootfs = None

    async def stats(self) -> any_pb2.Any | None:
        if not isinstance(self.engine, EngineStats):
            raise UnimplementedError(f"Stats is not implemented by engine {self.engine.name}")
        return await self.engine.stats(self.ctx)

    async def close_stdin(self) -> None:
        self.ctx.stdio.close_stdin()

    async def resize(self, width: int, height: int) -> None:
        self.ctx.stdio.resize(width, height)

    async def exec(self, request: ExecRequest) -> Instance:
        if not getattr(self.engine, "execs", False):
            raise UnimplementedError(f"Exec is not implemented by engine {self.engine.name}")
        spec = {**self.ctx.spec, "process": dict(request.process)}
        stdio = await request.open_stdio()
        ctx = _context(
            request.container_id, request.exec_id, self.ctx.bundle, spec, stdio, request.host
        )
        return EngineInstance(self.engine, ctx, request.stdio)


@dataclass(frozen=True)
class EngineBackend:
    """The instance-level backend of an engine."""

    engine: Engine

    async def create(self, request: CreateRequest) -> Instance:
        if request.checkpoint:
            raise FailedPreconditionError(f"engine {self.engine.name} cannot restore a checkpoint")
        mounted = await _mount_rootfs(request)
        try:
            stdio = await request.open_stdio()
        except BaseException:
            if mounted is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                    await unmount_all(mounted)
            raise
        ctx = _context(request.id, None, request.bundle, request.spec, stdio, request.host)
        return EngineInstance(self.engine, ctx, request.stdio, mounted_rootfs=mounted)


async def _mount_rootfs(request: CreateRequest) -> str | None:
    """Stack the request's rootfs mounts on ``<bundle>/rootfs`` (where containerd expects them,
    whatever ``root.path`` says); the directory, or None when there were none."""
    if not request.rootfs_mounts:
        return None
    target = posixpath.join(request.bundle, "rootfs")
    mounts = [Mount(m.type, m.source, m.target, tuple(m.options)) for m in request.rootfs_mounts]
    try:
        await mount_rootfs(mounts, target)
    except RootfsMountError as exc:
        raise TaskError(str(exc)) from exc
    return target
