"""Handlers marked ``nonblocking``: run in the connection's reader, not a task each."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import wrappers_pb2
from test_ttrpc_server import assert_echo_works, echo, request_frame
from ttrpc_testing import TEST_SERVICE, RawPeer, TestService

from trioshim.ttrpc import RequestContext, Server, nonblocking, open_unix_listener


class Recording(TestService):
    """Echo remembers the task it ran in, and is marked nonblocking."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[trio.lowlevel.Task] = []

    @nonblocking
    async def Echo(self, ctx: RequestContext, req: Any) -> Any:
        self.tasks.append(trio.lowlevel.current_task())
        return await super().Echo(ctx, req)


class MarkedSleep(Recording):
    """Sleep marked nonblocking too, though it waits."""

    @nonblocking
    async def Sleep(self, ctx: RequestContext, req: Any) -> Any:
        return await super().Sleep(ctx, req)


class Unmarked(Recording):
    async def Echo(self, ctx: RequestContext, req: Any) -> Any:
        return await super().Echo(ctx, req)


class ThroughPartial:
    """Echo bound with functools.partial (as the runc shim binds its handlers per API)."""

    def __init__(self) -> None:
        self.tasks: list[trio.lowlevel.Task] = []
        self.Echo = functools.partial(self._echo, "prefix ")

    @nonblocking
    async def _echo(self, prefix: str, ctx: RequestContext, req: Any) -> Any:
        self.tasks.append(trio.lowlevel.current_task())
        return wrappers_pb2.StringValue(value=prefix + req.value)


async def serve(nursery: trio.Nursery, path: Path, impl: object) -> Server:
    server = Server()
    server.register(TEST_SERVICE, impl)
    await nursery.start(server.serve, await open_unix_listener(path))
    return server


@pytest.fixture
async def marked_sleep_peer(
    nursery: trio.Nursery, sock_path: Path
) -> AsyncIterator[tuple[MarkedSleep, Server, RawPeer]]:
    impl = MarkedSleep()
    server = await serve(nursery, sock_path, impl)
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    yield impl, server, peer
    await peer.aclose()
    server.close()


async def echo_replies(peer: RawPeer, ids: range) -> list[tuple[int, str]]:
    await peer.send(b"".join(request_frame(i, "Echo", echo(f"m{i}")) for i in ids))
    replies = []
    for _ in ids:
        sid, response = await peer.response()
        replies.append((sid, wrappers_pb2.StringValue.FromString(response.payload).value))
    return replies


@pytest.mark.parametrize("impl_type", [Recording, Unmarked])
async def test_marked_handlers_run_in_the_reader_in_order(
    nursery: trio.Nursery, sock_path: Path, impl_type: type[Recording]
) -> None:
    impl = impl_type()
    await serve(nursery, sock_path, impl)
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    ids = range(1, 40, 2)
    replies = await echo_replies(peer, ids)
    assert sorted(replies) == [(i, f"m{i}") for i in ids]
    if impl_type is Recording:
        # One task (the reader) for all, answering in the order the requests were read.
        assert replies == [(i, f"m{i}") for i in ids]
        assert len(set(impl.tasks)) == 1
    else:
        assert len(set(impl.tasks)) == len(ids)
    await peer.aclose()


async def test_marked_through_partial(nursery: trio.Nursery, sock_path: Path) -> None:
    impl = ThroughPartial()
    await serve(nursery, sock_path, impl)
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    ids = range(1, 10, 2)
    assert await echo_replies(peer, ids) == [(i, f"prefix m{i}") for i in ids]
    assert len(set(impl.tasks)) == 1
    await peer.aclose()


async def test_marked_replies_not_held_back_by_a_task_sibling(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, sock_path: Path
) -> None:
    # Marked Echos read together with unmarked calls, one of which waits: the other replies go
    # out at once, not when the waiting sibling from the same read answers.
    await serve(nursery, sock_path, Recording())
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    sleep = wrappers_pb2.DoubleValue(value=5).SerializeToString()
    await peer.send(
        request_frame(1, "Echo", echo("a"))
        + request_frame(3, "Meta", b"")
        + request_frame(5, "Echo", echo("b"))
        + request_frame(7, "Sleep", sleep)
    )
    first = {(await peer.response())[0] for _ in range(3)}
    assert first == {1, 3, 5} and trio.current_time() == 0
    assert (await peer.response())[0] == 7
    assert trio.current_time() == pytest.approx(5.0)
    await assert_echo_works(peer, 9)
    await peer.aclose()


async def test_marked_handler_that_waits(
    autojump_clock: trio.testing.MockClock,
    marked_sleep_peer: tuple[MarkedSleep, Server, RawPeer],
) -> None:
    _, _, peer = marked_sleep_peer
    start = trio.current_time()
    # Its deadline still applies.
    await peer.request(
        1,
        "Sleep",
        wrappers_pb2.DoubleValue(value=100).SerializeToString(),
        timeout_nano=2_000_000_000,
    )
    assert await peer.status() == (1, 4, "context deadline exceeded")
    assert trio.current_time() - start == pytest.approx(2.0)
    # Served correctly, but the requests read after it wait for it (documented).
    await peer.send(
        request_frame(3, "Sleep", wrappers_pb2.DoubleValue(value=5).SerializeToString())
        + request_frame(5, "Echo", echo("after"))
    )
    assert (await peer.response())[0] == 3
    assert (await peer.response())[0] == 5
    assert trio.current_time() - start == pytest.approx(7.0)


async def start_sleep(impl: MarkedSleep, peer: RawPeer, seconds: float) -> None:
    await peer.request(1, "Sleep", wrappers_pb2.DoubleValue(value=seconds).SerializeToString())
    await impl.sleep_started.wait()


async def test_waiting_marked_handler_cancelled_when_the_server_closes(
    autojump_clock: trio.testing.MockClock,
    marked_sleep_peer: tuple[MarkedSleep, Server, RawPeer],
) -> None:
    # (A peer's disconnect is only noticed once it returns: the reader is busy running it.)
    impl, server, peer = marked_sleep_peer
    await start_sleep(impl, peer, 10)
    server.close()
    await trio.testing.wait_all_tasks_blocked()
    assert impl.cancelled == ["sleep 10.0"]
    assert await peer.next_frame() is None
    assert trio.current_time() == 0


async def test_shutdown_waits_for_a_marked_handler(
    autojump_clock: trio.testing.MockClock,
    marked_sleep_peer: tuple[MarkedSleep, Server, RawPeer],
) -> None:
    impl, server, peer = marked_sleep_peer
    await start_sleep(impl, peer, 3)
    await server.shutdown(grace=60)
    assert trio.current_time() == pytest.approx(3.0)
    sid, response = await peer.response()
    assert sid == 1 and not response.HasField("status")
    assert await peer.next_frame() is None  # then closed
