"""Our client against a hand-driven fake server over a socketpair, and against our server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from google.protobuf import empty_pb2, wrappers_pb2
from ttrpc_testing import (
    NOT_FOUND_RESPONSE_FRAME,
    RUST_EMPTY_RESPONSE_FRAME,
    SERVICE,
    TEST_SERVICE,
    RawPeer,
    TestService,
)

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.ttrpc import (
    Client,
    ClosedError,
    DeadlineExceeded,
    NotFound,
    RemoteProtocolError,
    ResourceExhausted,
    Server,
    Stub,
    TTRPCError,
    Unimplemented,
    open_client,
    open_unix_client,
)
from trioshim.ttrpc.codec import MAX_MESSAGE_SIZE, FrameType, encode_frame

MAX = MAX_MESSAGE_SIZE
StringValue = wrappers_pb2.StringValue


@dataclass
class Pair:
    client: Client
    peer: RawPeer
    closes: list[str] = field(default_factory=list)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    a, b = trio.socket.socketpair()
    closes: list[str] = []
    async with open_client(trio.SocketStream(a), on_close=lambda: closes.append("closed")) as c:
        yield Pair(c, RawPeer(trio.SocketStream(b)), closes)


async def echo_call(client: Client, text: str, **kw: object) -> str:
    reply = await client.call(SERVICE, "Echo", StringValue(value=text), StringValue, **kw)  # type: ignore[arg-type]
    return reply.value


async def serve_echo(peer: RawPeer, count: int = 1) -> None:
    for _ in range(count):
        sid, request = await peer.read_request()
        await peer.send_response(sid, request.payload)


# --- responses -------------------------------------------------------------------------------


async def test_empty_and_status_forms(pair: Pair, nursery: trio.Nursery) -> None:
    async def fake() -> None:
        sid, _ = await pair.peer.read_request()
        await pair.peer.send(encode_frame(sid, FrameType.RESPONSE, 0, b""))  # Go style
        sid, _ = await pair.peer.read_request()
        await pair.peer.send(RUST_EMPTY_RESPONSE_FRAME.replace(b"\x01\x02", bytes([sid, 2])))
        sid, _ = await pair.peer.read_request()
        assert sid == 5
        await pair.peer.send(NOT_FOUND_RESPONSE_FRAME.replace(b"\x01\x02", b"\x05\x02"))

    nursery.start_soon(fake)
    for _ in range(2):
        reply = await pair.client.call("s", "m", empty_pb2.Empty(), StringValue)
        assert reply == StringValue()
    with pytest.raises(NotFound) as info:
        await pair.client.call("s", "m", empty_pb2.Empty(), empty_pb2.Empty)
    assert info.value.message == "process already finished: not found"
    assert info.value.code == 5


async def test_concurrent_ids(pair: Pair, nursery: trio.Nursery) -> None:
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = await echo_call(pair.client, f"call {i}")

    async with trio.open_nursery() as calls:
        for i in range(100):
            calls.start_soon(one, i)
        received = []
        for _ in range(100):
            received.append(await pair.peer.read_request())
        ids = [sid for sid, _ in received]
        assert ids == list(range(1, 200, 2))
        for sid, request in reversed(received):
            await pair.peer.send_response(sid, request.payload)
    assert results == {i: f"call {i}" for i in range(100)}


async def test_oversize_request_is_local(pair: Pair, nursery: trio.Nursery) -> None:
    with pytest.raises(ResourceExhausted) as info:
        await pair.client.call("s", "m", wrappers_pb2.BytesValue(value=bytes(MAX)), StringValue)
    assert info.value.code == 8
    assert info.value.message.endswith(" exceed maximum message size of 4194304")
    nursery.start_soon(serve_echo, pair.peer)
    assert await echo_call(pair.client, "after") == "after"
    # Nothing of the oversize call was written: the echo request was the first frame (id 1).
    assert pair.peer.decoder.trailing_data == 0


async def test_oversize_frame_from_server(pair: Pair, nursery: trio.Nursery) -> None:
    async def fake() -> None:
        sid, _ = await pair.peer.read_request()
        await pair.peer.send(encode_frame(sid, 2, 0, bytes(MAX + 1), max_message_size=MAX + 1))
        await serve_echo(pair.peer)

    nursery.start_soon(fake)
    with pytest.raises(ResourceExhausted) as info:
        await echo_call(pair.client, "x")
    assert info.value.message == "message length 4194305 exceed maximum message size of 4194304"
    assert await echo_call(pair.client, "still fine") == "still fine"


async def test_unknown_and_duplicate_responses(pair: Pair, nursery: trio.Nursery) -> None:
    async def fake() -> None:
        sid, request = await pair.peer.read_request()
        await pair.peer.send_response(99, b"\x0a\x01x")
        await pair.peer.send_response(sid, request.payload)
        await pair.peer.send_response(sid, b"\x0a\x01y")
        await serve_echo(pair.peer)

    nursery.start_soon(fake)
    assert await echo_call(pair.client, "first") == "first"
    assert await echo_call(pair.client, "second") == "second"


async def test_data_frame_on_unary_call(pair: Pair, nursery: trio.Nursery) -> None:
    async def fake() -> None:
        sid, _ = await pair.peer.read_request()
        await pair.peer.send(encode_frame(sid, FrameType.DATA, 0, b""))
        await serve_echo(pair.peer)

    nursery.start_soon(fake)
    with pytest.raises(RemoteProtocolError, match='unexpected "data" message received'):
        await echo_call(pair.client, "x")
    assert await echo_call(pair.client, "y") == "y"


# --- deadlines -------------------------------------------------------------------------------


async def test_timeout_sent_and_enforced(
    autojump_clock: trio.testing.MockClock, pair: Pair, nursery: trio.Nursery
) -> None:
    seen: list[int] = []

    async def fake() -> None:
        sid, request = await pair.peer.read_request()
        seen.append(request.timeout_nano)
        await trio.sleep(20)  # too late
        await pair.peer.send_response(sid, request.payload)
        sid, request = await pair.peer.read_request()
        seen.append(request.timeout_nano)
        await pair.peer.send_response(sid, request.payload)

    nursery.start_soon(fake)
    start = trio.current_time()
    with pytest.raises(DeadlineExceeded) as info:
        await echo_call(pair.client, "slow", timeout=10)
    assert info.value.message == "context deadline exceeded"
    assert trio.current_time() - start == pytest.approx(10)
    # An enclosing deadline shorter than `timeout` wins.
    with trio.move_on_after(30):
        assert await echo_call(pair.client, "ok", timeout=100) == "ok"
    assert seen[0] == pytest.approx(10e9, abs=1000)
    assert seen[1] == pytest.approx(30e9, abs=1000)  # sent at t=10, enclosing deadline t=40
    assert len(seen) == 2


async def test_enclosing_deadline_sent(
    autojump_clock: trio.testing.MockClock, pair: Pair, nursery: trio.Nursery
) -> None:
    async def fake() -> None:
        sid, request = await pair.peer.read_request()
        await pair.peer.send_response(
            sid, StringValue(value=str(request.timeout_nano)).SerializeToString()
        )

    nursery.start_soon(fake)
    with trio.fail_after(3):
        assert int(await echo_call(pair.client, "x", timeout=50)) == pytest.approx(3e9, abs=1000)


async def test_expired_deadline_sends_nothing(pair: Pair, nursery: trio.Nursery) -> None:
    with pytest.raises(DeadlineExceeded):
        await echo_call(pair.client, "x", timeout=0)
    with pytest.raises(DeadlineExceeded):
        await echo_call(pair.client, "x", timeout=-5)
    with trio.CancelScope(deadline=trio.current_time() - 1) as scope:
        await echo_call(pair.client, "x")
    assert scope.cancelled_caught
    nursery.start_soon(serve_echo, pair.peer)
    assert await echo_call(pair.client, "y") == "y"


# --- connection loss -------------------------------------------------------------------------


async def test_server_closes_with_calls_pending(pair: Pair) -> None:
    errors: list[BaseException] = []

    async def pending_call() -> None:
        try:
            await echo_call(pair.client, "x")
        except ClosedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(pending_call)
        for _ in range(5):
            await pair.peer.read_request()
        await pair.peer.aclose()
    assert len(errors) == 5 and all(str(e) == "ttrpc: closed" for e in errors)
    await pair.client.wait_closed()
    assert pair.client.closed
    with pytest.raises(ClosedError):
        await echo_call(pair.client, "later")
    await pair.client.aclose()
    assert pair.closes == ["closed"]


async def test_close_mid_frame_from_server(pair: Pair) -> None:
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            with pytest.raises(ClosedError):
                await echo_call(pair.client, "x")

        nursery.start_soon(call)
        await pair.peer.read_request()
        await pair.peer.send(encode_frame(1, 2, 0, b"abcdef")[:-2])
        await pair.peer.aclose()
    await pair.client.wait_closed()
    assert pair.closes == ["closed"]


async def test_local_aclose_and_async_on_close() -> None:
    a, b = trio.socket.socketpair()
    calls: list[str] = []

    async def on_close() -> None:
        await trio.lowlevel.checkpoint()
        calls.append("on_close")

    async with open_client(trio.SocketStream(a), on_close=on_close) as client:
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                with pytest.raises(ClosedError):
                    await echo_call(client, "x")

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await client.aclose()
        assert calls == ["on_close"]
        await client.aclose()  # idempotent
    assert calls == ["on_close"]
    b.close()


# --- against our server ----------------------------------------------------------------------


async def test_stub_against_server(server: Server, sock_path: Path) -> None:
    async with open_unix_client(f"unix://{sock_path}") as client:
        stub = Stub(client, TEST_SERVICE, metadata=[("containerd-namespace-ttrpc", "ns1")])
        assert (await stub.Echo(StringValue(value="hi"))).value == "hi"
        meta = json.loads(
            (await stub.Meta(empty_pb2.Empty(), metadata=[("x", "1")], timeout=7)).value
        )
        assert meta["namespace"] == "ns1"
        assert meta["metadata"] == {"containerd-namespace-ttrpc": ["ns1"], "x": ["1"]}
        assert 0 < meta["remaining"] <= 7
        with pytest.raises(Unimplemented) as info:
            await stub.Missing(empty_pb2.Empty())
        assert info.value.message == f"/{SERVICE}/Missing: not implemented"
        with pytest.raises(AttributeError):
            stub.Nope  # noqa: B018
        assert "Echo" in dir(stub)


async def test_calls_interleave_against_server(
    autojump_clock: trio.testing.MockClock, server: Server, sock_path: Path
) -> None:
    order: list[str] = []
    async with open_unix_client(sock_path) as client:
        stub = Stub(client, TEST_SERVICE)

        async def slow() -> None:
            await stub.Sleep(wrappers_pb2.DoubleValue(value=5))
            order.append("slow")

        async def fast() -> None:
            assert (await stub.Echo(StringValue(value="f"))).value == "f"
            order.append("fast")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            nursery.start_soon(fast)
    assert order == ["fast", "slow"]


async def test_task_stub_unimplemented(nursery: trio.Nursery, sock_path: Path) -> None:
    task = shim_pb2.DESCRIPTOR.services_by_name["Task"]

    class OnlyState:
        async def State(self, ctx: object, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
            return shim_pb2.StateResponse(id=req.id, pid=42)

    server = Server()
    server.register(task, OnlyState())
    from trioshim.ttrpc import open_unix_listener

    await nursery.start(server.serve, await open_unix_listener(sock_path))
    async with open_unix_client(sock_path) as client:
        stub = Stub(client, task)
        state = await stub.State(shim_pb2.StateRequest(id="c1"))
        assert isinstance(state, shim_pb2.StateResponse)
        assert (state.id, state.pid) == ("c1", 42)
        typed = await client.call(
            task.full_name, "State", shim_pb2.StateRequest(id="c2"), shim_pb2.StateResponse
        )
        assert typed.id == "c2"
        with pytest.raises(TTRPCError) as info:
            await stub.Pause(shim_pb2.PauseRequest(id="c1"))
        assert info.value.code == 12
    server.close()


async def test_service_registered_twice() -> None:
    server = Server()
    server.register(TEST_SERVICE, TestService())
    with pytest.raises(ValueError, match="already registered"):
        server.register(TEST_SERVICE, TestService())

    class NotAsync:
        def Echo(self, ctx: object, req: object) -> None: ...

    with pytest.raises(TypeError, match="not an async method"):
        Server().register(TEST_SERVICE, NotAsync())


async def test_timeout_while_peer_does_not_read(
    autojump_clock: trio.testing.MockClock, pair: Pair
) -> None:
    # The request is far bigger than the socket buffers and the peer reads nothing: the write
    # stalls; the timeout still fires, and the connection, left with half a frame, is closed.
    big = wrappers_pb2.BytesValue(value=bytes(MAX - 100))
    with pytest.raises(DeadlineExceeded):
        await pair.client.call(SERVICE, "Blob", big, wrappers_pb2.UInt64Value, timeout=5)
    assert trio.current_time() == pytest.approx(5)
    await pair.client.wait_closed()
    with pytest.raises(ClosedError):
        await echo_call(pair.client, "x")
    assert pair.closes == ["closed"]
