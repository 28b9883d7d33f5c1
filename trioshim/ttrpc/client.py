"""ttrpc client on Trio.

Usage::

    async with open_unix_client(path, on_close=cleanup) as client:
        task = Stub(client, shim_pb2.DESCRIPTOR.services_by_name["Task"],
                    metadata=[("containerd-namespace-ttrpc", "default")])
        state = await task.State(shim_pb2.StateRequest(id="c1"))
        # or, typed:
        state = await client.call("containerd.task.v2.Task", "State", req, shim_pb2.StateResponse)

Resource handling: the client owns its socket and one reader task, both inside the
``async with`` block; leaving the block (or :meth:`Client.aclose`) closes the socket and waits
for the reader to finish and ``on_close`` to return.

Error handling: a status reply raises the :class:`~trioshim.ttrpc.errors.TTRPCError` subclass
for its code. When the connection is lost (EOF, reset, broken framing, local close) every
pending and later call raises :class:`~trioshim.ttrpc.errors.ClosedError`, and ``on_close``
runs exactly once. Nothing else escapes the reader task.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import trio
from google.protobuf.message import DecodeError, Message

from trioshim.api.ttrpc.request_pb2 import Response

from ._io import receive_some_fd, stream_socket, write_some_fd
from .codec import (
    MAX_MESSAGE_SIZE,
    CallFailed,
    ClientConnection,
    ConnectionClosed,
    NeedData,
    ResponseReceived,
)
from .errors import (
    ClosedError,
    DeadlineExceeded,
    RemoteProtocolError,
    TTRPCError,
)
from .stub import Stub

__all__ = ["Client", "OnClose", "Stub", "open_client", "open_unix_client"]

log = logging.getLogger("trioshim.ttrpc.client")

M = TypeVar("M", bound=Message)

#: Called once when the connection is gone; may be a plain or an async function.
OnClose = Callable[[], Awaitable[None] | None]
Metadata = Iterable[tuple[str, str]]

_RECEIVE_SIZE: Final = 65536


class _Pending:
    """One call waiting for its reply: a one-shot event for a single waiter (lighter than a
    ``trio.Event``, which needs a parking lot)."""

    __slots__ = ("done", "error", "response", "task")

    def __init__(self) -> None:
        self.done = False
        self.task: trio.lowlevel.Task | None = None
        self.response: Response | None = None
        self.error: BaseException | None = None

    def set(self) -> None:
        self.done = True
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until :meth:`set` (a checkpoint either way, cancellable while waiting)."""
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        self.task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class Client:
    """A ttrpc connection, client side. Build with :func:`open_unix_client` or
    :func:`open_client`; calls may run concurrently from any number of tasks."""

    def __init__(self, stream: trio.abc.Stream, *, on_close: OnClose | None = None) -> None:
        self._stream = stream
        self._on_close = on_close
        self._protocol = ClientConnection(MAX_MESSAGE_SIZE)
        self._send_lock = trio.Lock()
        # A socket stream is read and written through its fd directly (see _io.py).
        self._sock = stream_socket(stream)
        self._pending: dict[int, _Pending] = {}
        self._closed: ClosedError | None = None
        self._done = trio.Event()  # reader finished and on_close returned
        self._in_on_close = False

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- calls ------------------------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        metadata: Metadata = (),
        timeout: float | None = None,  # noqa: ASYNC109 (sent on the wire as timeout_nano)
    ) -> M:
        """Call ``/<service>/<method>`` and return its reply as ``response_type``.

        The effective deadline (``timeout`` seconds from now, or an enclosing Trio deadline,
        whichever is sooner) is sent as ``timeout_nano`` and enforced here: expiry of
        ``timeout`` raises :class:`DeadlineExceeded`; an enclosing scope cancels as usual. A
        deadline already past fails without sending anything. A request over 4 MiB raises
        ``ResourceExhausted`` (code 8) without sending anything.
        """
        payload = request.SerializeToString()
        if timeout is None:
            response = await self._call(service, method, payload, metadata)
        else:
            with trio.move_on_at(trio.current_time() + timeout) as scope:
                response = await self._call(service, method, payload, metadata)
            if scope.cancelled_caught:
                raise DeadlineExceeded()
        message = response_type()
        try:
            message.ParseFromString(response.payload)
        except DecodeError as exc:
            raise RemoteProtocolError(
                f"ttrpc: cannot decode {response_type.DESCRIPTOR.full_name} reply: {exc}"
            ) from exc
        return message

    async def _call(
        self, service: str, method: str, payload: bytes, metadata: Metadata
    ) -> Response:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed is not None:
            raise ClosedError() from self._closed.__cause__
        deadline = trio.current_effective_deadline()
        timeout_nano = 0
        if deadline != math.inf:
            timeout_nano = int((deadline - trio.current_time()) * 1e9)
            if timeout_nano <= 0:
                # Already expired: never send 0 (no deadline) or a negative timeout.
                await trio.sleep_forever()
        pending = _Pending()
        stream_id: int | None = None
        lock = self._send_lock
        try:
            # Uncontended, take the lock without a trip through the scheduler (the call is a
            # checkpoint anyway: it waits for its reply below).
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                if self._closed is not None:
                    raise ClosedError() from self._closed.__cause__
                stream_id, data = self._protocol.send_request(
                    service, method, payload, timeout_nano=timeout_nano, metadata=metadata
                )
                self._pending[stream_id] = pending
                try:
                    await self._write_frame(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    with trio.CancelScope(shield=True):
                        await self._lost(exc)
            finally:
                lock.release()
            await pending.wait()
        finally:
            if stream_id is not None and not pending.done:
                self._pending.pop(stream_id, None)
                self._protocol.forget(stream_id)
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        response = pending.response
        if response.HasField("status") and response.status.code != 0:
            status = response.status
            raise TTRPCError.from_status(status.code, status.message, list(status.details))
        return response

    async def _write_frame(self, frame: bytes) -> None:
        """Write one whole frame.

        Cancellation (a caller's deadline) is honoured while the frame waits for room in the
        socket buffer. Cut in the middle, the frame would corrupt the stream: the connection
        is then closed (pending calls get ClosedError). Streams other than sockets are written
        shielded instead.
        """
        sock = self._sock
        if sock is None:
            with trio.CancelScope(shield=True):
                await self._stream.send_all(frame)
            return
        # Usually the kernel takes the whole frame at once: no scheduler trip at all.
        sent = write_some_fd(sock, frame)
        if sent == len(frame):
            return
        view = memoryview(frame)[sent:]
        try:
            while view:
                # Raises Cancelled only while nothing of the rest is written.
                await trio.lowlevel.wait_writable(sock)
                view = view[write_some_fd(sock, view) :]
        except trio.Cancelled:
            if len(view) != len(frame):
                log.warning("ttrpc: call cancelled in the middle of a frame, closing connection")
                with trio.CancelScope(shield=True):
                    await self._lost(None)
            raise

    # -- reading ----------------------------------------------------------------------------

    async def _reader(self) -> None:
        cause: BaseException | None = None
        try:
            cause = await self._read_loop()
        finally:
            with trio.CancelScope(shield=True):
                await self._lost(cause)
                await self._run_on_close()

    async def _read_loop(self) -> BaseException | None:
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
                return exc
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            while True:
                try:
                    event = protocol.next_event()
                except RemoteProtocolError as exc:
                    log.warning("ttrpc: closing client connection: %s", exc)
                    return exc
                if isinstance(event, NeedData):
                    break
                if isinstance(event, ConnectionClosed):
                    return None
                pending = self._pending.pop(event.stream_id, None)
                if pending is None:
                    continue
                if isinstance(event, ResponseReceived):
                    pending.response = event.response
                elif isinstance(event, CallFailed):
                    pending.error = event.error
                pending.set()

    async def _lost(self, cause: BaseException | None) -> None:
        """The connection is unusable: fail everything pending, close the socket (idempotent)."""
        if self._closed is None:
            closed = ClosedError()
            closed.__cause__ = cause
            self._closed = closed
        for pending in self._pending.values():
            error = ClosedError()
            error.__cause__ = self._closed.__cause__
            pending.error = error
            pending.set()
        self._pending.clear()
        await trio.aclose_forcefully(self._stream)

    async def _run_on_close(self) -> None:
        try:
            if self._on_close is not None:
                self._in_on_close = True
                try:
                    result = self._on_close()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("ttrpc: on_close callback failed")
                finally:
                    self._in_on_close = False
        finally:
            self._done.set()

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection (idempotent): pending calls raise ClosedError, ``on_close``
        runs, and this returns once it has returned."""
        if self._closed is None:
            closed = ClosedError()
            self._closed = closed
        await trio.aclose_forcefully(self._stream)
        if not self._in_on_close:
            with trio.CancelScope(shield=True):
                await self._done.wait()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone and ``on_close`` has returned."""
        await self._done.wait()


@asynccontextmanager
async def open_client(
    stream: trio.abc.Stream, *, on_close: OnClose | None = None
) -> AsyncIterator[Client]:
    """A :class:`Client` over an already connected stream (which it takes ownership of)."""
    async with trio.open_nursery() as nursery:
        client = Client(stream, on_close=on_close)
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            await client.aclose()


@asynccontextmanager
async def open_unix_client(
    path: str | bytes | os.PathLike[str], *, on_close: OnClose | None = None
) -> AsyncIterator[Client]:
    """Connect to a ttrpc server on a unix socket (a ``unix://`` prefix is stripped)."""
    address = os.fspath(path)
    if isinstance(address, str) and address.startswith("unix://"):
        address = address[len("unix://") :]
    stream = await trio.open_unix_socket(address)
    async with open_client(stream, on_close=on_close) as client:
        yield client
