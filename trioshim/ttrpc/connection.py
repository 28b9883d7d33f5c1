"""One accepted ttrpc connection: reading requests, running their handlers, writing replies.

A reply goes out as soon as it is ready: written at once, without a trip through the
scheduler, when the socket takes it and no other write is waiting; the replies to requests read
together are gathered into one write; a reply that does not fit waits for room under the send
lock, and the writes behind it wait their turn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

import trio

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
from .dispatch import dispatch
from .errors import RemoteProtocolError
from .handshake import PeerCredentials
from .registry import Method

__all__ = ["Connection"]

log = logging.getLogger("trioshim.ttrpc.server")

_RECEIVE_SIZE: Final = 65536


class Connection:
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
        self,
        lookup: Callable[[Request], Method | tuple[int, str]],
        stream: trio.abc.Stream,
        peer: PeerCredentials | None,
    ) -> None:
        self._lookup = lookup
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
        # A lone request has no sibling to batch its reply with: chunk 0, never held back.
        chunk = 0
        if len(requests) > 1:
            self._chunk += 1
            chunk = self._chunk
            self._batch_left[chunk] = len(requests)
        lookup = self._lookup
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
            if type(found) is Method and found.inline:
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
        found: Method | tuple[int, str],
        deadline: float,
        chunk: int,
    ) -> None:
        stream_id = event.stream_id
        queued = False
        try:
            reply = await dispatch(found, event.request, stream_id, deadline, self._peer)
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
