"""Test a shim without containerd.

- :func:`open_fake_containerd`: containerd's side of events, an
  ``containerd.services.events.ttrpc.v1.Events/Forward`` sink on a unix socket that records
  every envelope (and can be told to stall or fail Forward, or restart).
- :func:`connect_task`: a ``containerd.task.v2.Task`` client for a shim's address, sending the
  namespace header as containerd does.
- :func:`open_shim`: a shim daemon (``Manager`` + plugin ``Registry``) running inside the
  current Trio run, served on a temporary socket, wired to a fake containerd, with its log and
  its shutdown stages recorded. Works on ``trio.testing.MockClock``.
- :func:`open_task_shim` (:mod:`trioshim.testing.task`): the same for a task-kit shim (an
  engine or an instance backend), with shortcuts (``run`` = ``ctr run --rm``, ``events``).

Example::

    async def test_my_shim():
        async with open_shim(MyManager(), registry) as shim:
            reply = await shim.task.Connect(shim_pb2.ConnectRequest(id="t"))
            await shim.containerd.wait_for(topic="/tasks/create")
        assert shim.status == 0
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from google.protobuf import any_pb2, descriptor_pool, empty_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

import trioshim.api.containerd.events.task_pb2  # noqa: F401  (registers the event types)
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.api.containerd.services.ttrpc.events.v1 import events_pb2
from trioshim.shim.address import new_socket
from trioshim.shim.daemon import DaemonConfig, serve_daemon
from trioshim.shim.flags import Flags
from trioshim.shim.log import LogrusFormatter
from trioshim.shim.manager import Manager
from trioshim.shim.plugin import Registry
from trioshim.ttrpc import NAMESPACE_KEY, RequestContext, Server, Stub, open_unix_client
from trioshim.ttrpc.client import Client

__all__ = [
    "EVENTS_SERVICE",
    "TASK_SERVICE",
    "FakeContainerd",
    "ShimHandle",
    "ShimStartupError",
    "connect_task",
    "open_fake_containerd",
    "open_shim",
    "open_task_shim",
    "unpack_event",
]

EVENTS_SERVICE = events_pb2.DESCRIPTOR.services_by_name["Events"]
TASK_SERVICE = shim_pb2.DESCRIPTOR.services_by_name["Task"]


def unpack_event(event: any_pb2.Any) -> Message:
    """Decode an envelope's ``Any`` (bare or prefixed type URL) into its message."""
    name = event.type_url.rsplit("/", 1)[-1]
    cls = GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
    message = cls()
    message.ParseFromString(event.value)
    return message


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _short_tempdir(prefix: str) -> str:
    # Unix socket paths are limited to 106 bytes: stay short, under /tmp.
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@dataclass(eq=False)
class FakeContainerd:
    """The recording Events service. ``forward_hook`` (async, gets the envelope) runs before
    a Forward is answered: stall with ``trio.sleep_forever``, fail by raising a
    ``TTRPCError``."""

    ttrpc_address: str
    envelopes: list[events_pb2.Envelope] = field(default_factory=list)
    namespaces: list[str | None] = field(default_factory=list)
    """The ``containerd-namespace-ttrpc`` header of each recorded Forward."""
    forward_hook: Callable[[events_pb2.Envelope], Awaitable[None]] | None = None
    calls: int = 0
    """Forward calls received (recorded or not)."""
    _changed: trio.Event = field(default_factory=trio.Event, repr=False)
    _nursery: trio.Nursery | None = field(default=None, repr=False)
    _server: Server | None = field(default=None, repr=False)

    @property
    def topics(self) -> list[str]:
        return [e.topic for e in self.envelopes]

    def events(self) -> list[tuple[str, Message]]:
        """``(topic, decoded event)`` for every recorded envelope, in arrival order."""
        return [(e.topic, unpack_event(e.event)) for e in self.envelopes]

    async def wait_for(
        self, count: int | None = None, *, topic: str | None = None
    ) -> list[events_pb2.Envelope]:
        """Until ``count`` envelopes (of ``topic``, if given) are recorded (default 1)."""
        want = 1 if count is None else count
        while True:
            matching = [e for e in self.envelopes if topic is None or e.topic == topic]
            if len(matching) >= want:
                return matching
            await self._changed.wait()

    # the Events service ---------------------------------------------------------------------

    async def Forward(
        self, ctx: RequestContext, request: events_pb2.ForwardRequest
    ) -> empty_pb2.Empty:
        self.calls += 1
        if self.forward_hook is not None:
            await self.forward_hook(request.envelope)
        self.envelopes.append(request.envelope)
        self.namespaces.append(ctx.get(NAMESPACE_KEY))
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return empty_pb2.Empty()

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        server = self._server = Server(handshake=None)
        server.register(EVENTS_SERVICE, self)
        with new_socket(self.ttrpc_address) as sock:
            sock.setblocking(False)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock.dup()))
        try:
            await server.serve(listener, task_status=task_status)
        finally:
            _unlink(self.ttrpc_address)

    async def stop(self) -> None:
        """containerd goes away: connections closed, socket removed."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        _unlink(self.ttrpc_address)

    async def restart(self) -> None:
        """containerd restarts: drop every connection, listen again on the same address."""
        await self.stop()
        assert self._nursery is not None
        await self._nursery.start(self._serve)


@asynccontextmanager
async def open_fake_containerd(ttrpc_address: str | None = None) -> AsyncIterator[FakeContainerd]:
    """A :class:`FakeContainerd` listening on ``ttrpc_address`` (default: a temporary path)."""
    tmp = None if ttrpc_address else _short_tempdir("fakectrd-")
    fake = FakeContainerd(ttrpc_address or os.path.join(tmp or "", "containerd.sock.ttrpc"))
    try:
        async with trio.open_nursery() as nursery:
            fake._nursery = nursery
            await nursery.start(fake._serve)
            try:
                yield fake
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@asynccontextmanager
async def connect_task(
    address: str,
    namespace: str = "default",
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (per call, sent as timeout_nano)
) -> AsyncIterator[Stub]:
    """A Task v2 stub on ``address`` (``unix://`` or a path) with the namespace header."""
    async with open_unix_client(address) as client:
        yield Stub(client, TASK_SERVICE, metadata=[(NAMESPACE_KEY, namespace)], timeout=timeout)


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines
        self.changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        changed, self.changed = self.changed, trio.Event()
        changed.set()


class ShimStartupError(RuntimeError):
    """The daemon exited before serving (a plugin's init failed, ...)."""

    def __init__(self, status: int, trace: list[str], log: list[str]) -> None:
        super().__init__(f"shim exited at start-up with status {status}: {trace}")
        self.status = status
        self.trace = trace
        self.log = log


@dataclass(eq=False)
class ShimHandle:
    """A running in-process shim daemon."""

    address: str
    """``unix://`` address of the shim's socket."""
    socket_path: str
    bundle: str
    containerd: FakeContainerd
    config: DaemonConfig
    """Also gives the daemon's ``shutdown`` service, ``publisher``, ``reaper``, ``server``."""
    trace: list[str]
    """The daemon's stages, in order (``serving``, ``shutdown: ...``, ``socket removed``...)."""
    log: list[str]
    """Log records, logrus-formatted."""
    status: int | None = None
    """Exit status once the daemon has returned."""
    exited: trio.Event = field(default_factory=trio.Event)
    client: Client = field(init=False)
    task: Stub = field(init=False)
    """``containerd.task.v2.Task`` on :attr:`client`, with the namespace header."""

    _lines: _Lines | None = field(default=None, repr=False)

    async def wait_for_log(self, text: str) -> str:
        """Until a log record containing ``text`` exists; that record."""
        assert self._lines is not None
        while True:
            for line in self.log:
                if text in line:
                    return line
            await self._lines.changed.wait()

    def shutdown(self, reason: str = "test") -> None:
        """Request shutdown (like SIGTERM); see :meth:`wait`."""
        assert self.config.shutdown is not None
        self.config.shutdown.shutdown(reason)

    async def wait(self) -> int:
        """Until the daemon has exited; its status."""
        await self.exited.wait()
        assert self.status is not None
        return self.status


@asynccontextmanager
async def open_shim(
    manager: Manager,
    registry: Registry,
    *,
    namespace: str = "default",
    id: str = "test",
    bundle: str | None = None,
    containerd: FakeContainerd | None = None,
    debug: bool = False,
    handle_signals: bool = False,
    plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
    trace: list[str] | None = None,
    abandon_timeout: float | None = None,
) -> AsyncIterator[ShimHandle]:
    """Run a shim daemon in this Trio run, connected to a Task client. Leaving the block shuts
    it down (if it is still running) and waits for it. :class:`ShimStartupError` if it exits
    before serving. ``handle_signals`` installs the SIGTERM/SIGINT/SIGUSR1 receivers (main
    thread only). The daemon's stages are appended to ``trace`` (default: a new list), so a
    test can interleave its own entries. ``abandon_timeout``: the daemon's
    :attr:`~trioshim.shim.daemon.DaemonConfig.abandon_timeout` (off by default: the client
    this opens makes no request by itself)."""
    tmp = _short_tempdir("shim-")
    socket_path = os.path.join(tmp, "s")
    lines: list[str] = []
    log = logging.getLogger(f"trioshim.testing.{os.path.basename(tmp)}")
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    handler = _Lines(lines)
    handler.setFormatter(LogrusFormatter({"runtime": manager.name}))
    log.addHandler(handler)
    serving = trio.Event()
    try:
        async with _maybe_containerd(containerd) as fake:
            handle = ShimHandle(
                address=f"unix://{socket_path}",
                socket_path=socket_path,
                bundle=bundle or tmp,
                containerd=fake,
                config=None,  # type: ignore[arg-type]
                trace=[] if trace is None else trace,
                log=lines,
                _lines=handler,
            )

            def on_stage(stage: str) -> None:
                handle.trace.append(stage)
                if stage == "serving" or stage.startswith("exit "):
                    serving.set()

            handle.config = DaemonConfig(
                flags=Flags(
                    namespace=namespace,
                    id=id,
                    address="/run/containerd/containerd.sock",
                    debug=debug,
                ),
                manager=manager,
                registry=registry,
                bundle=handle.bundle,
                ttrpc_address=fake.ttrpc_address,
                log=log,
                listener=new_socket(socket_path),
                socket_address=socket_path,
                handle_signals=handle_signals,
                plugin_config={} if plugin_config is None else plugin_config,
                trace=on_stage,
                abandon_timeout=abandon_timeout,
            )

            async def daemon() -> None:
                handle.status = await serve_daemon(handle.config)
                handle.exited.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(daemon)
                await serving.wait()
                if not handle.exited.is_set():
                    async with _client_for(handle, socket_path, namespace) as client:
                        try:
                            yield handle
                        finally:
                            if not handle.exited.is_set():
                                handle.shutdown("test finished")
                            await client.aclose()
                            await handle.wait()
                        return
        # The daemon exited before serving: raised here, outside every nursery.
        assert handle.status is not None
        raise ShimStartupError(handle.status, handle.trace, lines)
    finally:
        log.removeHandler(handler)
        shutil.rmtree(tmp, ignore_errors=True)


@asynccontextmanager
async def _client_for(
    handle: ShimHandle, socket_path: str, namespace: str
) -> AsyncIterator[Client]:
    async with open_unix_client(socket_path) as client:
        handle.client = client
        handle.task = Stub(client, TASK_SERVICE, metadata=[(NAMESPACE_KEY, namespace)])
        yield client


@asynccontextmanager
async def _maybe_containerd(fake: FakeContainerd | None) -> AsyncIterator[FakeContainerd]:
    if fake is not None:
        yield fake
        return
    async with open_fake_containerd() as own:
        yield own


def __getattr__(name: str) -> Any:
    # trioshim.testing.task builds on this module: imported when first asked for.
    if name in ("open_task_shim", "TaskShim"):
        from trioshim.testing import task

        return getattr(task, name)
    raise AttributeError(f"module 'trioshim.testing' has no attribute {name!r}")
