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
are answered as Go's server answers them (spec 3.2) or, for a broken framing (EOF in the middle
of a frame), end that connection only, with a log line. Exceptions escaping a handler become
status replies (:func:`~trioshim.ttrpc.errors.status_from_exception`). Accept errors caused by
resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) are treated as back-pressure: logged,
then retried after a growing pause. Other accept errors propagate out of ``serve``.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import logging
import math
import os
import socket as _stdlib_socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import trio
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, EncodeError, Message
from google.protobuf.message_factory import GetMessageClass

from trioshim.api.ttrpc.request_pb2 import Request, Response

from ._io import receive_some_fd, send_all_fd, stream_socket, write_some_fd
from .codec import (
    MAX_MESSAGE_SIZE,
    ConnectionClosed,
    ErrorReply,
    NeedData,
    RequestReceived,
    ServerConnection,
)
from .errors import (
    CONTEXT_DEADLINE_EXCEEDED,
    Code,
    RemoteProtocolError,
    ServerClosedError,
    status_from_exception,
)

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

#: Metadata key carrying the containerd namespace on every namespaced call.
NAMESPACE_KEY: Final = "containerd-namespace-ttrpc"

_RECEIVE_SIZE: Final = 65536
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
_ACCEPT_BACKOFF_MIN: Final = 0.001
_ACCEPT_BACKOFF_MAX: Final = 1.0


# ---------------------------------------------------------------------------------------------
# Peer credentials


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """``SO_PEERCRED`` of a unix socket: the peer's pid and effective ids at ``connect()``."""

    pid: int
    uid: int
    gid: int


_UCRED: Final = struct.Struct("iII")


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """Read ``SO_PEERCRED`` (Linux) from a connected unix socket."""
    raw = sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


class HandshakeError(Exception):
    """Raised by a handshake to refuse a connection (it is closed without a frame)."""


#: Runs on each accepted socket before anything is read; raises HandshakeError to refuse it.
#: Returns the peer's credentials (made available as ``RequestContext.peer``) or None.
Handshake = Callable[[trio.socket.SocketType], PeerCredentials | None]


def require_uid_gid(uid: int, gid: int) -> Handshake:
    """Accept only peers with this effective uid and gid (-1: any)."""

    def handshake(sock: trio.socket.SocketType) -> PeerCredentials:
        if sock.family != _stdlib_socket.AF_UNIX:
            raise HandshakeError("peer credentials need a unix socket")
        try:
            cred = peer_credentials(sock)
        except OSError as exc:
            raise HandshakeError(f"reading peer credentials: {exc}") from exc
        if (uid != -1 and cred.uid != uid) or (gid != -1 and cred.gid != gid):
            raise HandshakeError(
                f"ttrpc: peer uid/gid {cred.uid}/{cred.gid} does not match {uid}/{gid}"
            )
        return cred

    return handshake


def require_same_user() -> Handshake:
    """Accept only peers with our effective uid and gid, as read now (containerd's default)."""
    return require_uid_gid(os.geteuid(), os.getegid())


def require_root() -> Handshake:
    return require_uid_gid(0, 0)


# ---------------------------------------------------------------------------------------------
# Listeners


_SOMAXCONN_PATH: Final = "/proc/sys/net/core/somaxconn"
_BACKLOG_LIMIT: Final = 2**31 - 1  # listen() takes a C int


def listen_backlog() -> int:
    """The system's maximum listen backlog, what Go's ``net.Listen`` uses: the value of
    ``net.core.somaxconn`` (the kernel clamps any larger backlog to it anyway), else the
    compile-time ``SOMAXCONN``. Python's ``socket.SOMAXCONN`` is that constant (128 with
    older headers) and is not what the running kernel allows: a burst of connections beyond a
    small backlog is refused (``EAGAIN`` on a non-blocking unix socket connect)."""
    try:
        with open(_SOMAXCONN_PATH, "rb") as f:
            value = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _stdlib_socket.SOMAXCONN
    if value <= 0:
        return _stdlib_socket.SOMAXCONN
    return min(value, _BACKLOG_LIMIT)


async def open_unix_listener(
    path: str | bytes | os.PathLike[str], *, backlog: int | None = None
) -> trio.SocketListener:
    """Bind and listen on a unix socket path (a leading NUL byte means an abstract address).

    The path must not exist; removing a stale socket is the caller's decision. The default
    ``backlog`` is :func:`listen_backlog`.
    """
    sock = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        sock.listen(listen_backlog() if backlog is None else backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def unix_listener_from_fd(fd: int = 3) -> trio.SocketListener:
    """Adopt an inherited, already listening unix socket (the shim gets it as fd 3)."""
    sock = _stdlib_socket.socket(fileno=fd)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


# ---------------------------------------------------------------------------------------------
# Request context


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about its request besides the message.

    ``metadata`` maps each key (verbatim, as received) to its values in wire order.
    ``deadline`` is in Trio time (``math.inf`` when the caller set none); the handler already
    runs inside a cancel scope with that deadline.
    """

    service: str
    method: str
    metadata: Mapping[str, list[str]] = field(default_factory=dict)
    deadline: float = math.inf
    stream_id: int = 0
    peer: PeerCredentials | None = None

    @property
    def full_method(self) -> str:
        """``/<service>/<method>``, the form Go uses in logs and interceptors."""
        return f"/{self.service}/{self.method}"

    def get(self, key: str) -> str | None:
        """First value for ``key`` looked up lower-cased, like Go's ``GetMetadataValue``."""
        values = self.metadata.get(key.lower())
        return values[0] if values else None

    @property
    def namespace(self) -> str | None:
        """The containerd namespace (first ``containerd-namespace-ttrpc`` value), if sent."""
        return self.get(NAMESPACE_KEY)


class _Metadata(Mapping[str, list[str]]):
    """A request's metadata as ``{key: [values in wire order]}``, decoded on first use.

    Most handlers never look at it, and decoding the protobuf list costs about as much as the
    rest of a trivial call's dispatch.
    """

    __slots__ = ("_decoded", "_request")

    def __init__(self, request: Request) -> None:
        self._request: Request | None = request
        self._decoded: dict[str, list[str]] | None = None

    def _dict(self) -> dict[str, list[str]]:
        decoded = self._decoded
        if decoded is None:
            assert self._request is not None
            decoded = {}
            for kv in self._request.metadata:
                decoded.setdefault(kv.key, []).append(kv.value)
            self._decoded = decoded
            self._request = None
        return decoded

    def __getitem__(self, key: str) -> list[str]:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())


# Built once per request: fill the slots directly instead of through the frozen dataclass
# __init__ (one object.__setattr__ per field). The same object as RequestContext(...).
_new_context = object.__new__
_context_setters = tuple(
    RequestContext.__dict__[name].__set__
    for name in ("service", "method", "metadata", "deadline", "stream_id", "peer")
)
assert tuple(RequestContext.__dataclass_fields__) == (
    "service",
    "method",
    "metadata",
    "deadline",
    "stream_id",
    "peer",
)


def _request_context(
    service: str,
    method: str,
    metadata: Mapping[str, list[str]],
    deadline: float,
    stream_id: int,
    peer: PeerCredentials | None,
) -> RequestContext:
    ctx: RequestContext = _new_context(RequestContext)
    set_service, set_method, set_metadata, set_deadline, set_stream_id, set_peer = _context_setters
    set_service(ctx, service)
    set_method(ctx, method)
    set_metadata(ctx, metadata)
    set_deadline(ctx, deadline)
    set_stream_id(ctx, stream_id)
    set_peer(ctx, peer)
    return ctx


# ---------------------------------------------------------------------------------------------
# Service registry


Handler = Callable[[RequestContext, Any], Awaitable[Any]]
_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])
_NONBLOCKING_ATTR: Final = "__ttrpc_nonblocking__"


def nonblocking(handler: _H) -> _H:
    """Mark a handler that answers without waiting (no await that reaches Trio).

    The server runs it in the connection's reader, in the order the requests were read, instead
    of in a task of its own. Should it wait after all, it is still served correctly (deadline
    included), but the connection reads nothing else meanwhile, not even the peer's disconnect,
    so leave unmarked whatever may block (Wait, anything calling runc). Works through
    ``functools.partial`` and bound methods.
    """
    setattr(handler, _NONBLOCKING_ATTR, True)
    return handler


def _is_nonblocking(handler: object) -> bool:
    while isinstance(handler, functools.partial):
        handler = handler.func
    return getattr(handler, _NONBLOCKING_ATTR, False) is True


@dataclass(frozen=True, slots=True)
class _Method:
    service: str
    name: str
    full_name: str
    input_type: type[Message]
    output_type: type[Message]
    handler: Handler | None
    streaming: bool
    inline: bool


def _check_handler_names(descriptor: ServiceDescriptor, implementation: object) -> None:
    """A handler named like no rpc of the service (``Creat``) would never be called and its
    rpc would answer Unimplemented: refuse it at registration. Handlers are recognised as Go
    names them: async methods whose name starts with a capital letter."""
    rpcs = [method.name for method in descriptor.methods]
    for name in dir(implementation):
        if not name[:1].isupper() or name in rpcs:
            continue
        if inspect.iscoroutinefunction(getattr(implementation, name, None)):
            close = difflib.get_close_matches(name, rpcs, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(
                f"{type(implementation).__name__}.{name} is not an rpc of "
                f"{descriptor.full_name}{hint}; its rpcs are {', '.join(rpcs)}"
            )


def _bind_methods(descriptor: ServiceDescriptor, implementation: object) -> dict[str, _Method]:
    _check_handler_names(descriptor, implementation)
    methods: dict[str, _Method] = {}
    for method in descriptor.methods:
        full_name = f"/{descriptor.full_name}/{method.name}"
        handler = getattr(implementation, method.name, None)
        if handler is not None and not (callable(handler) and inspect.iscoroutinefunction(handler)):
            raise TypeError(f"{full_name}: {handler!r} is not an async method")
        methods[method.name] = _Method(
            service=descriptor.full_name,
            name=method.name,
            full_name=full_name,
            input_type=GetMessageClass(method.input_type),
            output_type=GetMessageClass(method.output_type),
            handler=handler,
            streaming=bool(method.client_streaming or method.server_streaming),
            inline=handler is not None and _is_nonblocking(handler),
        )
    return methods


# ---------------------------------------------------------------------------------------------
# Server


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
        self._services: dict[str, dict[str, _Method]] = {}
        self._closing = False
        self._accept_scopes: set[trio.CancelScope] = set()
        self._connections: set[_Connection] = set()
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
        if service.full_name in self._services:
            raise ValueError(f"service {service.full_name} is already registered")
        self._services[service.full_name] = _bind_methods(service, implementation)

    @property
    def services(self) -> list[str]:
        return list(self._services)

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
            connection = _Connection(self, stream, peer)
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

    # -- dispatch -------------------------------------------------------------------------

    def _lookup(self, request: Request) -> _Method | tuple[int, str]:
        methods = self._services.get(request.service)
        if methods is None:
            return Code.UNIMPLEMENTED, f"service {request.service}"
        method = methods.get(request.method)
        if method is None:
            return Code.UNIMPLEMENTED, f"method {request.method}"
        if method.streaming:
            return Code.UNIMPLEMENTED, f"{method.full_name}: streaming is not supported"
        if method.handler is None:
            return Code.UNIMPLEMENTED, f"{method.full_name}: not implemented"
        return method


def _status_response(code: int, message: str, details: tuple[Any, ...] = ()) -> Response:
    response = Response()
    response.status.code = code
    try:
        response.status.message = message
    except UnicodeEncodeError:
        # Not valid UTF-8 (a surrogate-escaped file name in an error text): a protobuf string
        # cannot hold it, and raising here would end the connection and the server with it.
        response.status.message = message.encode("utf-8", "replace").decode()
    response.status.details.extend(details)
    return response


class _Connection:
    """One accepted connection: its reader and its request handlers, in one nursery.

    The requests read in one chunk are handled in the order read: :func:`nonblocking` ones by
    the reader itself, the others each in a task of the connection's nursery.

    Frames are written whole by whichever task has one to send (the reader for protocol
    rejections and inline replies, a handler task for its reply, the flusher for batched
    replies): at once when nobody holds ``_send_lock`` and the kernel takes it all, else under
    the lock. Those writes are not shielded: the only thing that cancels a task of the
    connection is the end of the connection itself, so a frame cut short by cancellation is
    never followed by another one. A request counts as in flight until its reply is written,
    batched or not.
    """

    def __init__(
        self, server: Server, stream: trio.abc.Stream, peer: PeerCredentials | None
    ) -> None:
        self._server = server
        self._stream = stream
        self._peer = peer
        self._protocol = ServerConnection(MAX_MESSAGE_SIZE)
        self._scope = trio.CancelScope()
        self._send_lock = trio.Lock()
        # A socket stream is read and written through its fd directly (see _io.py); other
        # streams through the Stream interface.
        self._sock = stream_socket(stream)
        # Requests received whose reply is not yet written (nor abandoned).
        self._in_flight = 0
        self._close_when_idle = False
        # Replies batched into one write (socket streams only): several requests read in one
        # chunk are usually answered in one scheduler batch; all but the last answered queue
        # their frame here and the last writes them all (or _flusher, if a sibling blocks).
        self._outbox: list[bytes] = []
        self._batch_left: dict[int, int] = {}  # read-chunk number -> replies still to come
        self._chunk = 0
        self._flusher: trio.lowlevel.Task | None = None  # parked, waiting for work

    def close(self) -> None:
        self._scope.cancel()

    def close_when_idle(self) -> None:
        self._close_when_idle = True
        if self._in_flight == 0:
            self._scope.cancel()

    def _request_done(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._close_when_idle:
            self._scope.cancel()

    async def run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                if self._sock is not None:
                    nursery.start_soon(self._flush_loop)
                await self._reader(nursery)
                nursery.cancel_scope.cancel()

    async def _reader(self, nursery: trio.Nursery) -> None:
        protocol = self._protocol
        sock = self._sock
        stream = self._stream
        while True:
            try:
                if sock is None:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                else:
                    data = await receive_some_fd(sock, _RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("ttrpc: connection lost: %r", exc)
                return
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            requests: list[RequestReceived] = []
            while True:
                try:
                    event = protocol.next_event()
                except RemoteProtocolError as exc:
                    log.warning("ttrpc: closing connection: %s", exc)
                    return
                if type(event) is RequestReceived:
                    requests.append(event)
                elif isinstance(event, NeedData):
                    break
                elif isinstance(event, ConnectionClosed):
                    return
                elif isinstance(event, ErrorReply):
                    log.debug(
                        "ttrpc: rejecting frame on stream %d: %s", event.stream_id, event.message
                    )
                    if not await self._write(event.data):
                        return
            if requests:
                await self._start_requests(requests, nursery)

    async def _start_requests(self, requests: list[RequestReceived], nursery: trio.Nursery) -> None:
        """Handle the requests read in one chunk: inline ones here, the others in tasks."""
        self._in_flight += len(requests)
        # A lone request has no sibling to batch its reply with (chunk 0: write it at once).
        chunk = 0
        if len(requests) > 1:
            self._chunk += 1
            chunk = self._chunk
            self._batch_left[chunk] = len(requests)
        lookup = self._server._lookup
        received_at: float | None = None
        for event in requests:
            request = event.request
            # A deadline counts from reception; read the clock only when there is one.
            timeout_nano = request.timeout_nano
            deadline = math.inf
            if timeout_nano:
                if received_at is None:
                    received_at = trio.current_time()
                deadline = received_at + timeout_nano / 1e9
            found = lookup(request)
            if type(found) is _Method and found.inline:
                await self._handle(event, found, deadline, chunk)
            else:
                nursery.start_soon(self._handle, event, found, deadline, chunk)

    async def _write(self, frame: bytes) -> bool:
        """Write one whole frame; False when the connection broke (it is being closed).

        Uncontended (the usual case), the frame goes out in one non-blocking write without
        a trip through the scheduler, or even the lock (nothing can run between the check and
        the write); the rest of a partial write, and writers arriving meanwhile, wait for the
        socket under ``_send_lock``.
        """
        lock = self._send_lock
        sock = self._sock
        sent = 0
        try:
            if sock is not None and not lock.locked():
                sent = write_some_fd(sock, frame)
                if sent == len(frame):
                    return True
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return self._write_failed(exc)
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if sock is None:
                await self._stream.send_all(frame)
            else:
                await send_all_fd(sock, memoryview(frame)[sent:] if sent else frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return self._write_failed(exc)
        finally:
            lock.release()
        return True

    def _write_failed(self, exc: Exception) -> bool:
        log.debug("ttrpc: write failed, closing connection: %r", exc)
        self._scope.cancel()
        return False

    async def _handle(
        self,
        event: RequestReceived,
        found: _Method | tuple[int, str],
        deadline: float,
        chunk: int,
    ) -> None:
        stream_id = event.stream_id
        queued = False
        try:
            reply = await self._dispatch(found, event.request, stream_id, deadline)
            if type(reply) is bytes:
                frame = self._protocol.send_payload(stream_id, reply)
            else:
                assert isinstance(reply, Response)
                frame = self._protocol.send_response(stream_id, reply)
            left = self._batch_left.pop(chunk, 0) - 1 if chunk else 0
            if left > 0 and self._sock is not None:
                # Siblings from the same read are still to answer: leave the frame to the last
                # of them (or to the flusher, next scheduler batch, if one of them blocks).
                self._batch_left[chunk] = left
                self._outbox.append(frame)
                queued = True
                flusher = self._flusher
                if flusher is not None:
                    self._flusher = None
                    trio.lowlevel.reschedule(flusher)
            elif self._outbox:
                await self._flush(frame)
            else:
                await self._write(frame)
        finally:
            # Cancelled (the connection is going away): no reply; a no-op once replied.
            self._protocol.abandon(stream_id)
            if not queued:
                self._request_done()

    async def _flush(self, own_frame: bytes | None = None) -> None:
        """Write the queued frames, then the caller's own if any, in one write; the queued
        frames' requests are done once written (the caller accounts for its own)."""
        outbox = self._outbox
        queued = len(outbox)
        if own_frame is not None:
            outbox.append(own_frame)
        data = b"".join(outbox)
        outbox.clear()
        await self._write(data)
        for _ in range(queued):
            self._request_done()

    async def _flush_loop(self) -> None:
        """Write queued replies whose last sibling has not answered by the next batch."""

        def abort(_: object) -> trio.lowlevel.Abort:
            self._flusher = None
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            # Replies queued while a flush was writing found no parked flusher to wake: they
            # go out now, before parking, or they would wait for their last sibling.
            while self._outbox:
                await self._flush()
            self._flusher = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _dispatch(
        self, found: _Method | tuple[int, str], request: Request, stream_id: int, deadline: float
    ) -> bytes | Response:
        """The reply to ``request``: the serialized result, or a status Response."""
        if type(found) is not _Method:
            return _status_response(*found)  # type: ignore[misc]
        handler = found.handler
        assert handler is not None
        try:
            message = found.input_type.FromString(request.payload)
        except DecodeError as exc:
            return _status_response(Code.INTERNAL, f"ttrpc: error unmarshalling payload: {exc}")
        metadata = _Metadata(request)
        ctx = _request_context(found.service, found.name, metadata, deadline, stream_id, self._peer)
        try:
            if deadline == math.inf:
                result = await handler(ctx, message)
            else:
                if deadline <= trio.current_time():
                    return _status_response(Code.DEADLINE_EXCEEDED, CONTEXT_DEADLINE_EXCEEDED)
                with trio.CancelScope(deadline=deadline) as scope:
                    result = await handler(ctx, message)
                if scope.cancelled_caught:
                    return _status_response(Code.DEADLINE_EXCEEDED, CONTEXT_DEADLINE_EXCEEDED)
        except Exception as exc:
            code, text, details = status_from_exception(exc)
            if code == Code.UNKNOWN:
                log.warning("ttrpc: %s failed", found.full_name, exc_info=True)
            else:
                log.debug("ttrpc: %s: %s", found.full_name, text)
            return _status_response(code, text, details)
        if type(result) is found.output_type:
            try:
                return result.SerializeToString()
            except EncodeError as exc:
                return _status_response(Code.INTERNAL, f"ttrpc: error marshaling payload: {exc}")
        return self._encode_result(found, result)

    @staticmethod
    def _encode_result(method: _Method, result: object) -> bytes | Response:
        if result is None:
            return _status_response(Code.UNKNOWN, "ttrpc: marshal called with nil")
        if not isinstance(result, Message) or (
            result.DESCRIPTOR.full_name != method.output_type.DESCRIPTOR.full_name
        ):
            return _status_response(
                Code.INTERNAL,
                "ttrpc: error marshaling payload: "
                f"{method.full_name} returned {type(result).__name__}, "
                f"want {method.output_type.DESCRIPTOR.full_name}",
            )
        try:
            return result.SerializeToString()
        except EncodeError as exc:
            return _status_response(Code.INTERNAL, f"ttrpc: error marshaling payload: {exc}")
