"""Events to containerd: ``containerd.services.events.ttrpc.v1.Events/Forward`` on
``$TTRPC_ADDRESS``, containerd's ttrpc socket, which it passes to every shim it starts.

One ordered queue, one sender task (:meth:`Publisher.run`, owned by the root nursery).
:meth:`Publisher.publish` only enqueues, so an RPC handler never waits for containerd. Each
Forward has a 5 s timeout; a call that finds the connection closed reconnects (dial bounded by
5 s) and is retried once at once. A failed event is re-queued in the background after k
seconds for its k-th retry (k = 1..5); after the 5th retry fails it waits 6 s more and is
dropped with the error ``evicting <topic> from queue because of retry count`` (Go's
``RemoteEventsPublisher``; retries can reorder events, as in Go). The queue holds 2048 events; a
publish into a full queue is dropped and logged.

:meth:`Publisher.close` stops accepting events; :meth:`Publisher.drain` waits until every
accepted event was delivered or dropped. The daemon bounds the drain by 5 s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import trio
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from trioshim.api.containerd.services.ttrpc.events.v1 import events_pb2
from trioshim.ttrpc import ClosedError, open_client
from trioshim.ttrpc.client import Client

__all__ = [
    "EVENTS_SERVICE",
    "FORWARD_METHOD",
    "NAMESPACE_KEY",
    "Publisher",
    "make_envelope",
    "pack_any",
]

EVENTS_SERVICE: Final = "containerd.services.events.ttrpc.v1.Events"
FORWARD_METHOD: Final = "Forward"
NAMESPACE_KEY: Final = "containerd-namespace-ttrpc"
QUEUE_SIZE: Final = 2048
MAX_REQUEUE: Final = 5
CALL_TIMEOUT: Final = 5.0
DIAL_TIMEOUT: Final = 5.0


def pack_any(message: Message) -> any_pb2.Any:
    """An ``Any`` with the *bare* type URL (the message's full name): containerd 1.6 looks the
    URL up verbatim and rejects a ``type.googleapis.com/`` prefix."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def make_envelope(
    namespace: str, topic: str, event: Message, *, timestamp_ns: int | None = None
) -> events_pb2.Envelope:
    ns = time.time_ns() if timestamp_ns is None else timestamp_ns
    return events_pb2.Envelope(
        timestamp=timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000),
        namespace=namespace,
        topic=topic,
        event=pack_any(event),
    )


@dataclass(eq=False)
class _Item:
    envelope: events_pb2.Envelope
    count: int = 0


class Publisher:
    """The event publisher plugin instance (type ``io.containerd.event.v1``)."""

    def __init__(
        self,
        ttrpc_address: str,
        namespace: str,
        *,
        log: logging.Logger | None = None,
        queue_size: int = QUEUE_SIZE,
        max_requeue: int = MAX_REQUEUE,
        call_timeout: float = CALL_TIMEOUT,
        dial_timeout: float = DIAL_TIMEOUT,
    ) -> None:
        self.address = ttrpc_address.removeprefix("unix://")
        self.namespace = namespace
        self._log = log or logging.getLogger("trioshim.shim.publisher")
        self._max_requeue = max_requeue
        self._call_timeout = call_timeout
        self._dial_timeout = dial_timeout
        self._send, self._receive = trio.open_memory_channel[_Item](queue_size)
        self._outstanding = 0  # accepted and neither delivered nor dropped
        self._drained = trio.Event()
        self._drained.set()
        self._closed = False
        self.delivered = 0
        self.dropped = 0
        self._client: Client | None = None
        self._client_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery

    # -- producer side ------------------------------------------------------------------------

    def publish(self, topic: str, event: Message, *, namespace: str | None = None) -> bool:
        """Queue ``event`` for ``topic``; never blocks. Returns ``False`` (and logs) when the
        event was dropped because the publisher is closed or the queue is full."""
        if self._closed:
            self._log.error("publisher closed, dropping %s", topic)
            self.dropped += 1
            return False
        item = _Item(make_envelope(namespace or self.namespace, topic, event))
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self._log.error("event queue full, dropping %s", topic)
            self.dropped += 1
            return False
        self._outstanding += 1
        self._drained = trio.Event() if self._drained.is_set() else self._drained
        return True

    def close(self) -> None:
        """Accept no more events (queued ones are still sent)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return self._outstanding

    async def drain(self) -> None:
        """Wait until every accepted event was delivered or dropped."""
        await self._drained.wait()

    # -- sender ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The single sender: forward queued events in order until cancelled. Connects lazily
        and keeps one connection (held by a child task, see :meth:`_hold_client`)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for item in self._receive:
                if item.count > self._max_requeue:
                    self._log.error(
                        "evicting %s from queue because of retry count", item.envelope.topic
                    )
                    self._settle(delivered=False)
                    continue
                try:
                    await self._forward(item.envelope)
                except Exception as exc:
                    self._log.error(
                        "forward event: %s",
                        str(exc) or type(exc).__name__,
                        extra={"fields": {"topic": item.envelope.topic}},
                    )
                    item.count += 1
                    nursery.start_soon(self._requeue_later, item)
                else:
                    self._settle(delivered=True)

    async def _requeue_later(self, item: _Item) -> None:
        await trio.sleep(item.count)
        await self._send.send(item)

    def _settle(self, *, delivered: bool) -> None:
        if delivered:
            self.delivered += 1
        else:
            self.dropped += 1
        self._outstanding -= 1
        if self._outstanding == 0:
            self._drained.set()

    async def _hold_client(self, *, task_status: trio.TaskStatus[Client]) -> None:
        # The connection lives in its own task so that its nursery nests properly; the
        # sender cancels _client_scope to drop it.
        stream = await trio.open_unix_socket(self.address)
        async with open_client(stream) as client:
            with trio.CancelScope() as scope:
                self._client_scope = scope
                task_status.started(client)
                await trio.sleep_forever()

    async def _connect(self) -> Client:
        if self._client is not None and not self._client.closed:
            return self._client
        self._disconnect()
        with trio.fail_after(self._dial_timeout):
            client: Client = await self._nursery.start(self._hold_client)
        self._client = client
        return client

    def _disconnect(self) -> None:
        self._client = None
        if self._client_scope is not None:
            self._client_scope.cancel()
            self._client_scope = None

    async def _forward(self, envelope: events_pb2.Envelope) -> None:
        request = events_pb2.ForwardRequest(envelope=envelope)
        metadata = [(NAMESPACE_KEY, envelope.namespace)]
        for attempt in (1, 2):
            client = await self._connect()
            try:
                await client.call(
                    EVENTS_SERVICE,
                    FORWARD_METHOD,
                    request,
                    empty_pb2.Empty,
                    metadata=metadata,
                    timeout=self._call_timeout,
                )
                return
            except ClosedError:
                self._disconnect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
