"""Our server driven by a hand-written client over a real unix socket: every rule a peer can
exercise, checked against the bytes Go's server would send."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import pytest
import trio
import trio.testing
from google.protobuf import empty_pb2, wrappers_pb2
from ttrpc_testing import (
    EMPTY_RESPONSE_FRAME,
    KILL_REQUEST_FRAME,
    NOT_FOUND_RESPONSE_FRAME,
    SERVICE,
    TEST_SERVICE,
    UNKNOWN_SERVICE_FRAME,
    RawPeer,
    TestService,
)

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.api.ttrpc.request_pb2 import Request, Response
from trioshim.ttrpc import NotFound, RequestContext, Server, open_unix_listener
from trioshim.ttrpc.codec import MAX_MESSAGE_SIZE, FrameType, encode_frame

MAX = MAX_MESSAGE_SIZE
TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
OVERSIZE_TEXT = "message length {} exceed maximum message size of 4194304"


async def connect(path: Path) -> RawPeer:
    return RawPeer(await trio.open_unix_socket(str(path)))


def echo(text: str) -> bytes:
    return wrappers_pb2.StringValue(value=text).SerializeToString()


async def assert_echo_works(peer: RawPeer, stream_id: int) -> None:
    await peer.request(stream_id, "Echo", echo(f"hello {stream_id}"))
    sid, response = await peer.response()
    assert sid == stream_id
    assert not response.HasField("status")
    assert wrappers_pb2.StringValue.FromString(response.payload).value == f"hello {stream_id}"


# --- a Kill call as containerd sends it, byte for byte -------------------------------------------


class KillOnly:
    def __init__(self, exited: bool) -> None:
        self.exited = exited
        self.seen: list[tuple[str, int, str | None, float]] = []

    async def Kill(self, ctx: RequestContext, req: shim_pb2.KillRequest) -> empty_pb2.Empty:
        self.seen.append((req.id, req.signal, ctx.namespace, ctx.deadline - trio.current_time()))
        if self.exited:
            raise NotFound("process already finished")
        return empty_pb2.Empty()


@pytest.mark.parametrize("exited", [True, False])
async def test_worked_example_bytes(nursery: trio.Nursery, sock_path: Path, exited: bool) -> None:
    impl = KillOnly(exited)
    server = Server()
    server.register(TASK, impl)
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    peer = await connect(sock_path)
    await peer.send(KILL_REQUEST_FRAME)
    expected = NOT_FOUND_RESPONSE_FRAME if exited else EMPTY_RESPONSE_FRAME
    got = await peer.stream.receive_some(len(expected))
    assert got == expected
    ((cid, signal, namespace, remaining),) = impl.seen
    assert (cid, signal, namespace) == ("c1", 9, "default")
    assert 0 < remaining <= 10
    # A containerd 2.x v3 probe on this v2-only server, stream 3.
    await peer.request(3, "Create", service="containerd.task.v3.Task")
    assert await peer.stream.receive_some(len(UNKNOWN_SERVICE_FRAME)) == UNKNOWN_SERVICE_FRAME
    # An rpc of Task the implementation lacks answers Unimplemented by itself.
    await peer.request(
        5,
        "Pause",
        shim_pb2.PauseRequest(id="c1").SerializeToString(),
        service="containerd.task.v2.Task",
    )
    assert await peer.status() == (5, 12, "/containerd.task.v2.Task/Pause: not implemented")
    server.close()


# --- framing ---------------------------------------------------------------------------------


async def test_zero_length_request(peer: RawPeer) -> None:
    await peer.send(encode_frame(1, FrameType.REQUEST, 0, b""))
    assert await peer.status() == (1, 12, "service ")


def exact_size_request(stream_id: int, size: int) -> bytes:
    """A Blob Request frame whose Request encodes to exactly ``size`` bytes."""
    for blob in range(size - 64, size):
        payload = wrappers_pb2.BytesValue(value=bytes(blob)).SerializeToString()
        body = Request(service=SERVICE, method="Blob", payload=payload).SerializeToString()
        if len(body) == size:
            return struct.pack(">IIBB", size, stream_id, 1, 0) + body
    raise AssertionError("no exact size")


async def test_size_limit_on_receive(peer: RawPeer) -> None:
    await peer.send(exact_size_request(1, MAX))
    sid, response = await peer.response()
    assert sid == 1 and not response.HasField("status")
    assert MAX - 64 < wrappers_pb2.UInt64Value.FromString(response.payload).value < MAX
    await peer.send(exact_size_request(3, MAX + 1))
    assert await peer.status() == (3, 8, OVERSIZE_TEXT.format(MAX + 1))
    # The oversize frame did not count as a Request: id 3 is still fresh.
    await assert_echo_works(peer, 3)


@pytest.mark.parametrize(("stream_id", "type_"), [(2, 1), (0, 1), (5, 3), (5, 9)])
async def test_oversize_checked_first(peer: RawPeer, stream_id: int, type_: int) -> None:
    await peer.send(struct.pack(">IIBB", MAX + 7, stream_id, type_, 0) + bytes(MAX + 7))
    assert await peer.status() == (stream_id, 8, OVERSIZE_TEXT.format(MAX + 7))
    await assert_echo_works(peer, 7)


async def test_oversize_reply_replaced(peer: RawPeer) -> None:
    await peer.request(1, "Big", wrappers_pb2.UInt64Value(value=MAX).SerializeToString())
    frame = await peer.next_frame()
    assert frame is not None and len(frame.payload) < 100
    status = Response.FromString(frame.payload).status
    assert (status.code, status.message) == (
        8,
        OVERSIZE_TEXT.format(MAX + 10),
    )  # BytesValue in Response
    await assert_echo_works(peer, 3)


async def test_huge_length_then_eof(peer: RawPeer, server: Server) -> None:
    await peer.send(b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00" + bytes(1000))
    await peer.stream.send_eof()  # type: ignore[attr-defined]
    assert await peer.next_frame() is None
    await server.shutdown()  # nothing left open


# --- stream ids ------------------------------------------------------------------------------


async def test_even_ids(peer: RawPeer) -> None:
    text = "StreamID must be odd for client initiated streams"
    await peer.request(0, "Echo", echo("x"))
    assert await peer.status() == (0, 3, text)
    await peer.request(2, "Echo", echo("x"))
    assert await peer.status() == (2, 3, text)
    await assert_echo_works(peer, 1)


async def test_reused_and_decreasing_ids(peer: RawPeer) -> None:
    text = "StreamID cannot be re-used and must increment"
    await assert_echo_works(peer, 7)  # the first id need not be 1
    await peer.request(7, "Echo", echo("x"))
    assert await peer.status() == (7, 3, text)
    await peer.request(5, "Echo", echo("x"))
    assert await peer.status() == (5, 3, text)
    await assert_echo_works(peer, 101)


async def test_unknown_types_ignored(peer: RawPeer) -> None:
    await peer.send(encode_frame(1, 7, 0, b"whatever"))
    await peer.send(encode_frame(3, FrameType.RESPONSE, 0, b""))
    await assert_echo_works(peer, 5)


async def test_data_for_unknown_id(peer: RawPeer) -> None:
    await peer.send(encode_frame(1, FrameType.DATA, 0, b"x"))
    assert await peer.status() == (1, 3, "StreamID is no longer active")
    await peer.send(encode_frame(3, FrameType.DATA, 5, b""))
    assert await peer.status() == (3, 3, "StreamID is no longer active")
    await assert_echo_works(peer, 5)


# --- dispatch and errors ---------------------------------------------------------------------


async def test_unknown_service_and_method(peer: RawPeer) -> None:
    await peer.request(1, "Found", service="Not")
    assert await peer.status() == (1, 12, "service Not")
    await peer.request(3, "Nope")
    assert await peer.status() == (3, 12, "method Nope")
    await peer.request(5, "echo")  # case-sensitive
    assert await peer.status() == (5, 12, "method echo")
    await peer.request(7, "Missing")
    assert await peer.status() == (7, 12, f"/{SERVICE}/Missing: not implemented")
    await peer.request(9, "Watch")
    assert await peer.status() == (9, 12, f"/{SERVICE}/Watch: streaming is not supported")


async def test_garbage_request(peer: RawPeer) -> None:
    await peer.send(encode_frame(1, FrameType.REQUEST, 0, b"\xff\xff\xff\xff"))
    sid, code, message = await peer.status()
    assert (sid, code) == (1, 3) and message.startswith("unmarshal request error: ")
    bad_utf8 = b"\x0a\x03\xffab\x12\x04Echo"
    await peer.send(encode_frame(3, FrameType.REQUEST, 0, bad_utf8))
    sid, code, message = await peer.status()
    assert (sid, code) == (3, 3) and message.startswith("unmarshal request error: ")
    await assert_echo_works(peer, 5)


async def test_bad_payload(peer: RawPeer) -> None:
    await peer.request(1, "Echo", b"\x0a\x05ab")
    sid, code, message = await peer.status()
    assert (sid, code) == (1, 13)
    assert message.startswith("ttrpc: error unmarshalling payload: ")


@pytest.mark.parametrize("code", range(1, 17))
async def test_status_errors_verbatim(peer: RawPeer, code: int) -> None:
    await peer.request(
        1,
        "Status",
        wrappers_pb2.Int32Value(value=code).SerializeToString(),
        metadata=[("detail", "one"), ("detail", "two")],
    )
    sid, response = await peer.response()
    assert response.payload == b""
    status = response.status
    assert (sid, status.code, status.message) == (1, code, f"status {code} \u00e9")
    assert [(d.type_url, d.value) for d in status.details] == [("t/u", b"one"), ("t/u", b"two")]


@pytest.mark.parametrize(
    ("method", "arg", "expected"),
    [
        ("Nil", b"", (2, "ttrpc: marshal called with nil")),
        ("Raise", echo("value:boom"), (2, "boom")),
        ("Raise", echo("exists:x"), (6, "[Errno 17] x")),
        ("Raise", echo("noent:x"), (5, "[Errno 2] x")),
        ("Raise", echo("perm:x"), (7, "[Errno 1] x")),
        ("Raise", echo("timeout:"), (4, "context deadline exceeded")),
    ],
)
async def test_handler_outcomes(
    peer: RawPeer,
    method: str,
    arg: bytes,
    expected: tuple[int, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL)
    await peer.request(1, method, arg)
    assert await peer.status() == (1, *expected)
    await assert_echo_works(peer, 3)


async def test_wrong_result_type(peer: RawPeer) -> None:
    await peer.request(1, "Wrong")
    sid, code, message = await peer.status()
    assert (sid, code) == (1, 13)
    assert message.startswith("ttrpc: error marshaling payload: ")


async def test_metadata(peer: RawPeer) -> None:
    metadata = [
        ("b", "1"),
        ("containerd-namespace-ttrpc", "k8s.io"),
        ("Mixed-Case", "x"),
        ("b", "2"),
        ("traceparent", "00-abc"),
        ("b", "3"),
        ("containerd-namespace-ttrpc", "ignored second"),
    ]
    await peer.request(1, "Meta", metadata=metadata)
    _, response = await peer.response()
    meta = json.loads(wrappers_pb2.StringValue.FromString(response.payload).value)
    assert meta["metadata"] == {
        "b": ["1", "2", "3"],
        "containerd-namespace-ttrpc": ["k8s.io", "ignored second"],
        "Mixed-Case": ["x"],
        "traceparent": ["00-abc"],
    }
    assert meta["namespace"] == "k8s.io"
    assert (meta["service"], meta["method"], meta["stream_id"]) == (SERVICE, "Meta", 1)
    assert meta["remaining"] is None


async def test_deadlines(autojump_clock: trio.testing.MockClock, peer: RawPeer) -> None:
    start = trio.current_time()
    await peer.request(1, "Meta", timeout_nano=5_000_000_000)
    _, response = await peer.response()
    meta = json.loads(wrappers_pb2.StringValue.FromString(response.payload).value)
    assert meta["remaining"] == pytest.approx(5.0)
    # The handler runs in a cancel scope with that deadline.
    await peer.request(
        3,
        "Sleep",
        wrappers_pb2.DoubleValue(value=100).SerializeToString(),
        timeout_nano=2_000_000_000,
    )
    assert await peer.status() == (3, 4, "context deadline exceeded")
    assert trio.current_time() - start == pytest.approx(2.0)
    # Negative: already expired, the handler is not run.
    await peer.request(5, "Echo", echo("x"), timeout_nano=-1)
    assert await peer.status() == (5, 4, "context deadline exceeded")
    # Zero: no deadline.
    await peer.request(7, "Sleep", wrappers_pb2.DoubleValue(value=1000).SerializeToString())
    sid, response = await peer.response()
    assert sid == 7 and not response.HasField("status")
    assert trio.current_time() - start == pytest.approx(1002.0)


# --- concurrency and lifecycle ---------------------------------------------------------------


async def test_completion_order(autojump_clock: trio.testing.MockClock, peer: RawPeer) -> None:
    # A slow call on id 1 and a fast one on id 3: the fast one is answered first.
    await peer.request(1, "Sleep", wrappers_pb2.DoubleValue(value=5).SerializeToString())
    await peer.request(3, "Echo", echo("fast"))
    sid, response = await peer.response()
    assert sid == 3 and wrappers_pb2.StringValue.FromString(response.payload).value == "fast"
    sid, response = await peer.response()
    assert sid == 1 and response.payload == b"" and not response.HasField("status")
    assert trio.current_time() == pytest.approx(5.0)


def request_frame(stream_id: int, method: str, payload: bytes) -> bytes:
    body = Request(service=SERVICE, method=method, payload=payload).SerializeToString()
    return encode_frame(stream_id, FrameType.REQUEST, 0, body)


async def test_replies_to_requests_read_together(peer: RawPeer) -> None:
    # Requests arriving in one read are answered in one write: every reply still arrives.
    ids = range(1, 200, 2)
    await peer.send(b"".join(request_frame(i, "Echo", echo(f"m{i}")) for i in ids))
    replies = {}
    for _ in ids:
        sid, response = await peer.response()
        replies[sid] = wrappers_pb2.StringValue.FromString(response.payload).value
    assert replies == {i: f"m{i}" for i in ids}


async def test_blocked_sibling_does_not_hold_back_replies(
    autojump_clock: trio.testing.MockClock, peer: RawPeer
) -> None:
    # A slow request read together with fast ones: the fast replies are not held back until
    # the slow one answers, even when all of them arrived in one read.
    sleep = wrappers_pb2.DoubleValue(value=5).SerializeToString()
    await peer.send(
        request_frame(1, "Echo", echo("a"))
        + request_frame(3, "Sleep", sleep)
        + request_frame(5, "Echo", echo("b"))
    )
    first = {(await peer.response())[0], (await peer.response())[0]}
    assert first == {1, 5} and trio.current_time() == 0
    assert (await peer.response())[0] == 3
    assert trio.current_time() == pytest.approx(5.0)


async def test_client_disconnect_cancels_handlers(
    autojump_clock: trio.testing.MockClock,
    peer: RawPeer,
    service: TestService,
    sock_path: Path,
    server: Server,
) -> None:
    other = await connect(sock_path)
    await other.request(1, "Sleep", wrappers_pb2.DoubleValue(value=10).SerializeToString())
    await peer.request(1, "Sleep", wrappers_pb2.DoubleValue(value=5).SerializeToString())
    while len(service.started) < 2:
        await trio.testing.wait_all_tasks_blocked()
    await peer.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert service.cancelled == ["sleep 5.0"]
    # The other connection is unaffected.
    sid, response = await other.response()
    assert sid == 1 and not response.HasField("status")
    assert service.finished == ["sleep 10.0"]
    await assert_echo_works(other, 3)
    await other.aclose()


@pytest.mark.parametrize("cut", [3, 10, 20])
async def test_close_mid_frame(
    autojump_clock: trio.testing.MockClock,
    peer: RawPeer,
    sock_path: Path,
    cut: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    frame = encode_frame(1, 1, 0, Request(service=SERVICE, method="Echo").SerializeToString())
    await peer.send(frame[:cut])
    await peer.stream.send_eof()  # type: ignore[attr-defined]
    with trio.fail_after(60):  # virtual time: only fails if the server lingers
        assert await peer.next_frame() is None
    if cut > 0:
        assert "middle of a frame" in caplog.text
    other = await connect(sock_path)
    await assert_echo_works(other, 1)
    await other.aclose()


class UndecodablePath(TestService):
    async def Raise(self, ctx: RequestContext, req: object) -> object:
        # A file name that is not UTF-8 decodes (os.fsdecode) to a surrogate escape; an error
        # text quoting it cannot go into a protobuf string as is.
        path = os.fsdecode(b"/run/x/\xff")
        raise FileNotFoundError(2, f"open {path}: no such file")


async def test_error_text_not_utf8(
    nursery: trio.Nursery, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()
    server.register(TEST_SERVICE, UndecodablePath())
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    peer = await connect(sock_path)
    other = await connect(sock_path)
    await peer.request(1, "Raise", echo("noent:x"))
    sid, code, message = await peer.status()
    assert (sid, code) == (1, 5)
    assert message.startswith("[Errno 2] open /run/x/") and message.endswith(": no such file")
    # Neither this connection nor another one (nor the server) went down.
    await assert_echo_works(peer, 3)
    await assert_echo_works(other, 1)
    await peer.aclose()
    await other.aclose()
    server.close()


class GatedEcho(TestService):
    """Echo of "late" answers only once `gate` is set."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def Echo(self, ctx: RequestContext, req: wrappers_pb2.StringValue) -> object:
        if req.value == "late":
            await self.gate.wait()
        return wrappers_pb2.StringValue(value=req.value)


async def test_a_reply_queued_while_the_flusher_writes_is_not_stranded(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    # Three requests in one read: a big reply the flusher is still writing (the peer reads
    # slowly), a reply queued meanwhile, and a sibling that never answers. The queued reply
    # must go out once the big one is written, not wait for the silent sibling.
    service = GatedEcho()
    server = Server()
    server.register(TEST_SERVICE, service)
    await nursery.start(server.serve, await open_unix_listener(sock_path))
    peer = await connect(sock_path)
    big = 3 << 20  # far more than the socket buffers hold
    with trio.fail_after(30):  # bounds a hang only
        await peer.send(
            request_frame(1, "Big", wrappers_pb2.UInt64Value(value=big).SerializeToString())
            + request_frame(3, "Echo", echo("late"))
            + request_frame(5, "Sleep", wrappers_pb2.DoubleValue(value=1e9).SerializeToString())
        )
        peer.decoder.receive_data(await peer.stream.receive_some(1))  # the big reply is going
        service.gate.set()
        await trio.testing.wait_all_tasks_blocked()  # "late" answered, queued behind the write
        sid, response = await peer.response()
        assert sid == 1 and len(wrappers_pb2.BytesValue.FromString(response.payload).value) == big
        sid, response = await peer.response()
        assert sid == 3 and wrappers_pb2.StringValue.FromString(response.payload).value == "late"
    await peer.aclose()
    server.close()
