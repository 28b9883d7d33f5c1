"""The daemon: one root nursery, plugins, and a fixed shutdown order.

::

    trio.run(serve)
     └─ root nursery
         ├─ reaper             SIGCHLD -> waitid(P_ALL) (the only waiter of children)
         ├─ signal receiver    SIGTERM/SIGINT -> shutdown (SIGPIPE is ignored)
         ├─ stack dumps        SIGUSR1 -> task tree + thread stacks into the log
         ├─ publisher          one ordered queue, one sender
         ├─ plugins' tasks     InitContext.nursery is the root nursery
         ├─ ttrpc server       every instance with ttrpc_services(), on fd 3 / -socket / a
         │                     socket handed over by the start action
         └─ abandonment watch  until the first request (``abandon_timeout``; abandon.py)

Shutdown is requested through the shutdown service (the Shutdown RPC with no task left,
SIGTERM/SIGINT, containerd abandoning the daemon before its first request) and then runs, in
this order, each stage observable in a trace:

1. ``stop accepting``: the listener is closed;
2. ``in-flight``: requests already running get ``Manager.shutdown_grace`` seconds to finish
   (``in-flight done``), then their connections are closed and the handlers cancelled, given
   at most 1 s more to unwind (``in-flight cancelled``);
3. ``publisher``: no new events; queued ones drain for at most 5 s, else the error
   ``publisher not closed`` is logged and the exit status is 1;
4. ``callbacks``: the shutdown service's callbacks, in registration order (bounded, 10 s);
5. the root nursery is cancelled (reaper, signals, plugin tasks);
6. ``socket removed`` (in a ``finally``, on every exit path, including a plugin's init
   failing and a crash inside the nursery): the socket we serve and the one named in the
   bundle's ``address`` file.

A crash (an exception out of the nursery) is logged and gives exit status 1. The daemon never
exits because a client connection closed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from trioshim.shim.abandon import Claim, watch_abandonment
from trioshim.shim.address import new_socket, read_address, remove_socket
from trioshim.shim.flags import Flags
from trioshim.shim.manager import Manager
from trioshim.shim.plugin import (
    EVENT_PLUGIN,
    INTERNAL_PLUGIN,
    REAPER_PLUGIN,
    InitContext,
    PluginError,
    Registration,
    Registry,
    init_plugins,
)
from trioshim.shim.publisher import Publisher
from trioshim.shim.reaper import Reaper
from trioshim.shim.shutdown import ShutdownService
from trioshim.shim.stackdump import serve_stack_dumps
from trioshim.ttrpc import Server

__all__ = ["PUBLISHER_TIMEOUT", "DaemonConfig", "serve_daemon"]

PUBLISHER_TIMEOUT: Final = 5.0
CALLBACKS_TIMEOUT: Final = 10.0
CANCELLED_UNWIND_TIMEOUT: Final = 1.0


@dataclass
class DaemonConfig:
    flags: Flags
    manager: Manager
    registry: Registry
    bundle: str
    """Absolute bundle path (resolved at start-up: a grouped daemon outlives its first bundle)."""
    ttrpc_address: str
    log: logging.Logger
    listener: socket.socket | trio.SocketListener | None = None
    """A listening socket to serve; ``None``: ``-socket`` if given, else fd 3."""
    socket_address: str | None = None
    """What ``listener`` is bound to (``unix://...`` or a path), removed at exit."""
    handle_signals: bool = True
    publisher_timeout: float = PUBLISHER_TIMEOUT
    plugin_config: Mapping[str, Mapping[str, Any]] | None = None
    """Per-plugin configuration; ``None`` reads ``<bundle>/trioshim-plugins.json``."""
    abandon_timeout: float | None = None
    """Shut down if no request comes within this many seconds of serving, or if the bundle
    goes before the first request (:mod:`trioshim.shim.abandon`); ``None``: never."""
    trace: Callable[[str], None] | None = None
    """Called with the name of every start-up and shutdown stage (tests assert the order)."""
    shared_reaper: Reaper | None = None
    """The process's reaper, already serving, when several daemons share one process
    (:mod:`trioshim.shim.shared`); ``None``: the daemon runs its own."""
    # Filled in while serving (tests look at them).
    shutdown: ShutdownService | None = field(default=None, init=False)
    publisher: Publisher | None = field(default=None, init=False)
    reaper: Reaper | None = field(default=None, init=False)
    server: Server | None = field(default=None, init=False)


def _listener(config: DaemonConfig, removals: list[str]) -> trio.SocketListener:
    listener = config.listener
    if isinstance(listener, trio.SocketListener):
        return listener
    if listener is not None:
        listener.setblocking(False)
        return trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    if config.flags.socket:
        sock = new_socket(config.flags.socket)
        removals.append(config.flags.socket)
        sock.setblocking(False)
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    try:
        mode = os.fstat(3).st_mode
    except OSError as exc:
        raise PluginError("no listening socket: fd 3 is not open and -socket not given") from exc
    if not stat.S_ISSOCK(mode):
        raise PluginError("no listening socket: fd 3 is not a socket and -socket not given")
    sock = socket.socket(fileno=3)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def _watch_signals(
    shutdown: ShutdownService,
    log: logging.Logger,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            log.debug("Caught exit signal", extra={"fields": {"signal": name}})
            shutdown.shutdown(f"signal {name}")


def _builtin(kind: str, id: str, instance: object) -> Registration:
    async def init(ctx: InitContext) -> object:
        return instance

    return Registration(type=kind, id=id, init=init)


async def serve_daemon(config: DaemonConfig) -> int:
    """Run the daemon until shutdown; returns the exit status (never raises for a crash)."""
    trace = config.trace or (lambda stage: None)
    log = config.log
    flags = config.flags
    shutdown = config.shutdown = ShutdownService(log)
    reaper = config.reaper = config.shared_reaper or Reaper()
    publisher = config.publisher = Publisher(config.ttrpc_address, flags.namespace, log=log)

    removals: list[str] = []
    if config.socket_address:
        removals.append(config.socket_address)
    with contextlib.suppress(OSError, ValueError):
        removals.append(read_address(os.path.join(config.bundle, "address")))

    status = 0
    try:
        listener = _listener(config, removals)
        async with trio.open_nursery() as root:
            if config.shared_reaper is None:
                await root.start(reaper.serve)
            trace("reaper")
            if config.handle_signals:
                signal.signal(signal.SIGPIPE, signal.SIG_IGN)
                await root.start(_watch_signals, shutdown, log)
                await root.start(serve_stack_dumps, log)
                trace("signals")
            await root.start(publisher.run)
            trace("publisher")

            registry = Registry(
                [
                    _builtin(INTERNAL_PLUGIN, "shutdown", shutdown),
                    _builtin(EVENT_PLUGIN, "publisher", publisher),
                    _builtin(REAPER_PLUGIN, "reaper", reaper),
                    *config.registry.registrations,
                ]
            )
            loaded = await init_plugins(
                registry,
                namespace=flags.namespace,
                id=flags.id,
                address=flags.address,
                ttrpc_address=config.ttrpc_address,
                bundle=config.bundle,
                debug=flags.debug,
                nursery=root,
                log=log,
                config=config.plugin_config,
                on_init=lambda reg: trace(f"plugin {reg.uri}"),
            )
            services = loaded.ttrpc_services()
            if not services:
                raise PluginError("required that ttrpc service")
            claim = Claim()
            watching = config.abandon_timeout is not None
            server = config.server = Server(interceptor=claim.intercept if watching else None)
            for descriptor, implementation in services:
                server.register(descriptor, implementation)
                log.debug(
                    "registering ttrpc service", extra={"fields": {"id": descriptor.full_name}}
                )
            await root.start(server.serve, listener)
            trace("serving")
            if config.abandon_timeout is not None:
                await root.start(
                    functools.partial(
                        watch_abandonment,
                        config.bundle,
                        claim,
                        shutdown,
                        log,
                        within=config.abandon_timeout,
                    )
                )
            log.info("starting signal loop", extra={"fields": {"pid": os.getpid()}})

            await shutdown.wait()
            trace(f"shutdown: {shutdown.reason}")
            log.info("shutting down", extra={"fields": {"reason": shutdown.reason}})
            status = await _shutdown_sequence(config, server, publisher, shutdown, trace)
            root.cancel_scope.cancel()
    except Exception as exc:
        status = 1
        log.error("shim daemon failed: %s", _describe(exc), exc_info=exc)
        trace(f"crash: {_describe(exc)}")
    finally:
        for path in removals:
            try:
                remove_socket(path)
            except OSError as exc:
                log.warning("remove socket %s: %s", path, exc)
        trace("socket removed")
    trace(f"exit {status}")
    return status


async def _shutdown_sequence(
    config: DaemonConfig,
    server: Server,
    publisher: Publisher,
    shutdown: ShutdownService,
    trace: Callable[[str], None],
) -> int:
    status = 0
    trace("stop accepting")
    with trio.move_on_after(config.manager.shutdown_grace) as grace:
        await server.shutdown()
    if grace.cancelled_caught:
        server.close()  # cancels the handlers still running; let them unwind (bounded)
        with trio.move_on_after(CANCELLED_UNWIND_TIMEOUT):
            await server.wait_closed()
        trace("in-flight cancelled")
    else:
        trace("in-flight done")

    publisher.close()
    with trio.move_on_after(config.publisher_timeout) as drain:
        await publisher.drain()
    if drain.cancelled_caught:
        config.log.error("publisher not closed")
        trace("publisher not closed")
        status = 1
    else:
        trace("publisher drained")

    trace("callbacks")
    with trio.move_on_after(CALLBACKS_TIMEOUT) as callbacks:
        await shutdown.run_callbacks()
    if callbacks.cancelled_caught:
        config.log.error("shutdown callbacks timed out")
        status = 1
    trace("callbacks done")
    return status


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    return str(exc) or type(exc).__name__
