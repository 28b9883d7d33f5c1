"""The event publisher against the fake containerd, in virtual time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from trioshim.api.containerd.events import task_pb2 as events
from trioshim.shim.publisher import Publisher
from trioshim.testing import FakeContainerd, open_fake_containerd
from trioshim.ttrpc import Unavailable


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((trio.current_time(), record.getMessage()))
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_for(self, text: str) -> None:
        """Until a record containing ``text`` has been logged."""
        while not any(text in message for _, message in self.lines):
            await self._changed.wait()


@asynccontextmanager
async def publisher(
    containerd: FakeContainerd, **kwargs: Any
) -> AsyncIterator[tuple[Publisher, Records]]:
    log = logging.getLogger(f"test.publisher.{id(containerd)}")
    log.propagate = False
    records = Records()
    log.addHandler(records)
    pub = Publisher(containerd.ttrpc_address, "ns1", log=log, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        yield pub, records
        nursery.cancel_scope.cancel()


async def test_envelopes_in_order_bare_type_url_and_namespace_header() -> None:
    async with open_fake_containerd() as containerd, publisher(containerd) as (pub, _):
        assert pub.publish("/tasks/create", events.TaskCreate(container_id="c", bundle="/b"))
        assert pub.publish("/tasks/start", events.TaskStart(container_id="c", pid=7))
        assert pub.publish("/tasks/exit", events.TaskExit(container_id="c", id="c", pid=7))
        await pub.drain()
    assert containerd.topics == ["/tasks/create", "/tasks/start", "/tasks/exit"]
    assert [e.event.type_url for e in containerd.envelopes] == [
        "containerd.events.TaskCreate",
        "containerd.events.TaskStart",
        "containerd.events.TaskExit",
    ]
    assert containerd.namespaces == ["ns1"] * 3
    assert all(e.namespace == "ns1" and e.timestamp.seconds > 0 for e in containerd.envelopes)
    assert containerd.events()[1] == ("/tasks/start", events.TaskStart(container_id="c", pid=7))


async def test_retries_back_off_then_evict(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []
    async with open_fake_containerd() as containerd:

        async def refuse(envelope: Any) -> None:
            attempts.append(trio.current_time())
            raise Unavailable("containerd is busy")

        containerd.forward_hook = refuse
        async with publisher(containerd) as (pub, records):
            start = trio.current_time()
            pub.publish("/tasks/oom", events.TaskOOM(container_id="c"))
            await pub.drain()
            end = trio.current_time()
    # First try, then retry k after k seconds (k = 1..5), then 6 s more and dropped.
    assert [t - start for t in attempts] == [0, 1, 3, 6, 10, 15]
    assert end - start == 21
    assert (end, "evicting /tasks/oom from queue because of retry count") in records.lines
    assert (pub.delivered, pub.dropped, containerd.envelopes) == (0, 1, [])


async def test_retry_does_not_hold_up_later_events(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_containerd() as containerd:
        failed: list[str] = []

        async def fail_first(envelope: Any) -> None:
            if not failed:
                failed.append(envelope.topic)
                raise Unavailable("once")

        containerd.forward_hook = fail_first
        async with publisher(containerd) as (pub, _):
            pub.publish("/tasks/paused", events.TaskPaused(container_id="c"))
            pub.publish("/tasks/resumed", events.TaskResumed(container_id="c"))
            await containerd.wait_for(1)
            assert containerd.topics == ["/tasks/resumed"]  # the failed one waits 1 s
            await pub.drain()
    assert containerd.topics == ["/tasks/resumed", "/tasks/paused"]


async def test_reconnects_after_containerd_restart(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_containerd() as containerd, publisher(containerd) as (pub, _):
        pub.publish("/tasks/create", events.TaskCreate(container_id="a"))
        await pub.drain()
        await containerd.restart()  # every connection dropped, same address
        before = trio.current_time()
        pub.publish("/tasks/create", events.TaskCreate(container_id="b"))
        await pub.drain()
        assert trio.current_time() == before  # reconnected at once, no back-off
    assert [e.container_id for _, e in containerd.events()] == ["a", "b"]  # type: ignore[attr-defined]
    assert pub.dropped == 0


async def test_containerd_down_then_back(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_containerd() as containerd, publisher(containerd) as (pub, records):
        await containerd.stop()
        pub.publish("/tasks/start", events.TaskStart(container_id="c"))
        await records.wait_for("forward event")  # the first attempt failed...
        assert pub.pending == 1  # ...and the event is kept for a retry
        await containerd.restart()
        await pub.drain()
        assert containerd.topics == ["/tasks/start"]


async def test_queue_is_bounded_and_closed_publisher_drops() -> None:
    pub = Publisher("/nonexistent", "ns", queue_size=2)  # no sender running
    assert pub.publish("/a", events.TaskOOM())
    assert pub.publish("/b", events.TaskOOM())
    assert not pub.publish("/c", events.TaskOOM())
    pub.close()
    assert not pub.publish("/d", events.TaskOOM())
    assert (pub.pending, pub.dropped) == (2, 2)
