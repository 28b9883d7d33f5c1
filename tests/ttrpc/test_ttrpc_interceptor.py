"""A server's interceptor runs around every handler: it sees the request, may refuse it, and
its result is the reply; nonblocking handlers stay in the connection's reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from google.protobuf import wrappers_pb2
from test_ttrpc_nonblocking import Recording, ThroughPartial, echo_replies
from test_ttrpc_server import echo
from ttrpc_testing import TEST_SERVICE, RawPeer

from trioshim.ttrpc import (
    Code,
    Handler,
    Intercepted,
    Interceptor,
    RequestContext,
    Server,
    Unavailable,
    open_unix_listener,
)


class Gate:
    """Refuses everything while closed; otherwise tags each reply with the rpc's name."""

    def __init__(self) -> None:
        self.open = True
        self.seen: list[tuple[str, Any]] = []

    async def intercept(self, ctx: RequestContext, request: Any, handler: Handler) -> Any:
        self.seen.append((ctx.method, request))
        if not self.open:
            raise Unavailable("gate closed")
        reply = await handler(ctx, request)
        if isinstance(reply, wrappers_pb2.StringValue):
            reply = wrappers_pb2.StringValue(value=f"{ctx.method}({reply.value})")
        return reply


async def serve(nursery: trio.Nursery, path: Path, implementation: object, gate: Gate) -> RawPeer:
    server = Server(interceptor=gate.intercept)
    server.register(TEST_SERVICE, implementation)
    await nursery.start(server.serve, await open_unix_listener(path))
    return RawPeer(await trio.open_unix_socket(str(path)))


@pytest.fixture
async def gated(
    nursery: trio.Nursery, sock_path: Path
) -> AsyncIterator[tuple[Recording, Gate, RawPeer]]:
    implementation, gate = Recording(), Gate()
    peer = await serve(nursery, sock_path, implementation, gate)
    yield implementation, gate, peer
    await peer.aclose()


async def test_the_interceptor_sees_the_request_and_makes_the_reply(
    gated: tuple[Recording, Gate, RawPeer],
) -> None:
    _, gate, peer = gated
    assert await echo_replies(peer, range(1, 4, 2)) == [(1, "Echo(m1)"), (3, "Echo(m3)")]
    assert [(method, request.value) for method, request in gate.seen] == [
        ("Echo", "m1"),
        ("Echo", "m3"),
    ]


async def test_a_refusal_is_the_reply_and_the_handler_is_not_called(
    gated: tuple[Recording, Gate, RawPeer],
) -> None:
    implementation, gate, peer = gated
    gate.open = False
    await peer.request(1, "Echo", echo("x"))
    _, response = await peer.response()
    assert (response.status.code, response.status.message) == (
        Code.UNAVAILABLE,
        "gate closed: unavailable",
    )
    assert implementation.tasks == []


async def test_nonblocking_handlers_stay_in_the_reader(
    gated: tuple[Recording, Gate, RawPeer],
) -> None:
    implementation, _, peer = gated
    ids = range(1, 20, 2)
    assert await echo_replies(peer, ids) == [(i, f"Echo(m{i})") for i in ids]
    assert len(set(implementation.tasks)) == 1


async def test_handlers_set_on_the_instance_are_intercepted_too(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    implementation = ThroughPartial()
    peer = await serve(nursery, sock_path, implementation, Gate())
    assert await echo_replies(peer, range(1, 4, 2)) == [
        (1, "Echo(prefix m1)"),
        (3, "Echo(prefix m3)"),
    ]
    assert len(set(implementation.tasks)) == 1
    await peer.aclose()


async def test_a_service_interceptor_runs_inside_the_servers(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    order: list[str] = []

    def tracing(name: str) -> Interceptor:
        async def intercept(ctx: RequestContext, request: Any, handler: Handler) -> Any:
            order.append(f"{name} in")
            reply = await handler(ctx, request)
            order.append(f"{name} out")
            return reply

        return intercept

    server = Server(interceptor=tracing("server"))
    server.register(TEST_SERVICE, Intercepted(Recording(), tracing("service")))
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    assert await echo_replies(peer, range(1, 2)) == [(1, "m1")]
    assert order == ["server in", "service in", "service out", "server out"]
    await peer.aclose()


async def test_a_service_interceptor_alone(nursery: trio.Nursery, sock_path: Path) -> None:
    gate = Gate()
    server = Server()
    server.register(TEST_SERVICE, Intercepted(Recording(), gate.intercept))
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    peer = RawPeer(await trio.open_unix_socket(str(sock_path)))
    assert await echo_replies(peer, range(1, 2)) == [(1, "Echo(m1)")]
    await peer.aclose()
