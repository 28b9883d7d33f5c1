"""ttrpc server on Trio.

Usage::

    server = Server()                       # peers must have our euid and egid
    server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], TaskService())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, await open_unix_listener(path))
        ...
        await server.shutdown(grace=5)

Handlers are looked up by rpc name on the implementation object, as
``async def State(self, ctx: RequestContext, request: StateRequest) -> StateResponse``; an rpc
the object does not have answers Unimplemented by itself. A handler that computes its reply
without waiting can be marked :func:`nonblocking`: it then runs in the connection's reader task,
which saves starting a task per request (the largest per-request cost of a trivial call).

Resource handling: :meth:`Server.serve` owns its listener (closed when serving stops) and every
connection accepted from it (closed, forcefully, when the connection ends, whatever happened).
Each connection has one nursery holding its reader, its writer and its request handlers; the
handlers of a connection are cancelled when its peer goes away.

Error handling: nothing a peer sends can make :meth:`Server.serve` raise. Protocol violations
are answered as Go's server answers them (a status reply on the offending stream id) or, for a
broken framing (EOF in the middle of a frame), end that connection only, with a log line.
Exceptions escaping a handler become status replies
(:func:`~trioshim.ttrpc.errors.status_from_exception`). Accept errors caused by resource
exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) are treated as back-pressure: logged, then
retried after a growing pause. Other accept errors propagate out of ``serve``.

The pieces, one module each: who may connect (:mod:`.handshake`), listeners (:mod:`.listeners`),
the services and their handlers (:mod:`.registry`), what a handler is told (:mod:`.context`),
calling a handler (:mod:`.dispatch`), and one connection's reads and writes
(:mod:`.connection`). This module serves listeners and owns the connections; the names of the
other modules are importable from here too.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from typing import Final

import trio
from google.protobuf.descriptor import ServiceDescriptor

from .connection import Connection
from .context import NAMESPACE_KEY, RequestContext
from .errors import ServerClosedError
from .handshake import (
    Handshake,
    HandshakeError,
    PeerCredentials,
    peer_credentials,
    require_root,
    require_same_user,
    require_uid_gid,
)
from .listeners import listen_backlog, open_unix_listener, unix_listener_from_fd
from .registry import ServiceRegistry, nonblocking

__all__ = [
    "NAMESPACE_KEY",
    "Handshake",
    "HandshakeError",
    "PeerCredentials",
    "RequestContext",
    "Server",
    "listen_backlog",
    "nonblocking",
    "open_unix_listener",
    "peer_credentials",
    "require_root",
    "require_same_user",
    "require_uid_gid",
    "unix_listener_from_fd",
]

log = logging.getLogger("trioshim.ttrpc.server")

_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
_ACCEPT_BACKOFF_MIN: Final = 0.001
_ACCEPT_BACKOFF_MAX: Final = 1.0


class _UseSameUser:
    def __repr__(self) -> str:
        return "require_same_user()"


_SAME_USER: Final = _UseSameUser()


class Server:
    """A ttrpc server: a registry of services and the connections serving them.

    ``handshake`` checks each accepted socket before anything is read; the default is
    :func:`require_same_user` evaluated at construction, ``None`` accepts everyone.
    """

    def __init__(self, *, handshake: Handshake | _UseSameUser | None = _SAME_USER) -> None:
        self._handshake: Handshake | None = (
            require_same_user() if isinstance(handshake, _UseSameUser) else handshake
        )
        self._registry = ServiceRegistry()
        self._closing = False
        self._accept_scopes: set[trio.CancelScope] = set()
        self._connections: set[Connection] = set()
        # Open listeners plus connections accepted and not yet closed (counted from accept).
        self._open_resources = 0
        self._all_closed = trio.Event()
        self._all_closed.set()

    # -- registry -------------------------------------------------------------------------

    def register(self, service: ServiceDescriptor, implementation: object) -> None:
        """Serve ``service`` (a protobuf ``ServiceDescriptor``) with ``implementation``.

        Each rpc is looked up on ``implementation`` by name; missing ones answer
        Unimplemented. Streaming rpcs are not supported and answer Unimplemented too. An
        async method named with a capital letter that is no rpc of ``service`` (a typo such
        as ``Creat``) is a ``TypeError`` here.
        """
        self._registry.register(service, implementation)

    @property
    def services(self) -> list[str]:
        return self._registry.names

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections from ``listener`` until shutdown or close.

        Reports readiness through ``task_status`` once accepting. Owns ``listener`` (closed as
        soon as accepting stops) and the connections accepted from it: returns when the
        server was shut down or closed and all of them are gone. Raises
        :class:`ServerClosedError` if the server was already shut down when called.
        """
        if self._closing:
            await listener.aclose()
            raise ServerClosedError()
        self._acquire()  # the listener, until it is closed
        accept_scope = trio.CancelScope()
        self._accept_scopes.add(accept_scope)
        accept_error: OSError | None = None
        async with trio.open_nursery() as nursery:
            try:
                with accept_scope:
                    task_status.started()
                    await self._accept_loop(listener, nursery)
            except OSError as exc:
                # A fatal accept error ends this serve() and its connections, then propagates.
                accept_error = exc
                nursery.cancel_scope.cancel()
            finally:
                self._accept_scopes.discard(accept_scope)
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                self._release()
        if accept_error is not None:
            raise accept_error

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        backoff = _ACCEPT_BACKOFF_MIN
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error(
                    "ttrpc: accept failed (%s), retrying in %.3fs",
                    os.strerror(exc.errno or 0),
                    backoff,
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _ACCEPT_BACKOFF_MAX)
                continue
            backoff = _ACCEPT_BACKOFF_MIN
            self._acquire()
            nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.abc.Stream) -> None:
        try:
            peer: PeerCredentials | None = None
            if self._handshake is not None:
                sock = getattr(stream, "socket", None)
                try:
                    if sock is None:
                        raise HandshakeError("stream has no socket to check")
                    peer = self._handshake(sock)
                except HandshakeError as exc:
                    log.warning("ttrpc: refusing connection after handshake: %s", exc)
                    return
            if self._closing:
                return
            connection = Connection(self._registry.lookup, stream, peer)
            self._connections.add(connection)
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)
        finally:
            await trio.aclose_forcefully(stream)
            self._release()

    def _acquire(self) -> None:
        if self._open_resources == 0:
            self._all_closed = trio.Event()
        self._open_resources += 1

    def _release(self) -> None:
        self._open_resources -= 1
        if self._open_resources == 0:
            self._all_closed.set()

    # -- stopping -------------------------------------------------------------------------

    def _stop_accepting(self) -> None:
        self._closing = True
        for scope in list(self._accept_scopes):
            scope.cancel()

    async def shutdown(self, grace: float = math.inf) -> None:
        """Stop accepting, close idle connections, let active ones finish, then close all.

        In-flight requests (and new ones arriving on their connections) are served until the
        connection has nothing in flight, then it is closed; after ``grace`` seconds whatever is
        left is closed forcefully (handlers cancelled) and this returns without waiting.
        """
        self._stop_accepting()
        for connection in list(self._connections):
            connection.close_when_idle()
        with trio.move_on_after(grace):
            await self._all_closed.wait()
            return
        log.warning(
            "ttrpc: shutdown grace of %ss expired with %d connection(s) left",
            grace,
            len(self._connections),
        )
        self.close()

    def close(self) -> None:
        """Stop accepting and close every connection now (their handlers are cancelled)."""
        self._stop_accepting()
        for connection in list(self._connections):
            connection.close()

    async def wait_closed(self) -> None:
        """Wait until no listener and no connection is left open."""
        await self._all_closed.wait()
