"""The sans-IO codec, with plain bytes: framing, size limits and stream-id rules."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from ttrpc_testing import (
    EMPTY_RESPONSE_FRAME,
    KILL_PAYLOAD,
    KILL_REQUEST_FRAME,
    NOT_FOUND_RESPONSE_FRAME,
    RUST_EMPTY_RESPONSE_FRAME,
    UNKNOWN_SERVICE_FRAME,
)

from trioshim.api.ttrpc.request_pb2 import KeyValue, Request, Response
from trioshim.ttrpc import (
    LocalProtocolError,
    NotFound,
    RemoteProtocolError,
    ResourceExhausted,
    TTRPCError,
)
from trioshim.ttrpc.codec import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    NEED_DATA,
    CallFailed,
    ClientConnection,
    ConnectionClosed,
    ErrorReply,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    encode_frame,
)

MAX = MAX_MESSAGE_SIZE


def drain(source: FrameDecoder | ServerConnection | ClientConnection) -> list[object]:
    events = []
    while True:
        event = source.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def request_frame(stream_id: int, service: str = "svc", method: str = "M", **kw: object) -> bytes:
    body = Request(service=service, method=method, **kw).SerializeToString()  # type: ignore[arg-type]
    return encode_frame(stream_id, FrameType.REQUEST, 0, body)


def status_of(reply: ErrorReply) -> tuple[int, str]:
    decoder = FrameDecoder()
    decoder.receive_data(reply.data)
    (frame,) = drain(decoder)
    assert isinstance(frame, Frame)
    assert (frame.stream_id, frame.type, frame.flags) == (reply.stream_id, 2, 0)
    response = Response.FromString(frame.payload)
    assert response.payload == b""
    assert (response.status.code, response.status.message) == (reply.code, reply.message)
    return reply.code, reply.message


# --- 1. header ------------------------------------------------------------------------------


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=64),
)
def test_header_round_trip(stream_id: int, type_: int, flags: int, payload: bytes) -> None:
    data = encode_frame(stream_id, type_, flags, payload)
    assert data[:4] == len(payload).to_bytes(4, "big")
    assert data[4:8] == stream_id.to_bytes(4, "big")
    assert data[8] == type_ and data[9] == flags
    decoder = FrameDecoder()
    decoder.receive_data(data)
    assert drain(decoder) == [Frame(stream_id, type_, flags, payload)]


def test_encoder_limits() -> None:
    assert len(encode_frame(1, 1, 0, bytes(MAX))) == MAX + HEADER_SIZE
    with pytest.raises(LocalProtocolError, match="message length 4194305 exceed maximum"):
        encode_frame(1, 1, 0, bytes(MAX + 1))
    with pytest.raises(LocalProtocolError):
        encode_frame(2**32, 1, 0)
    with pytest.raises(LocalProtocolError):
        encode_frame(1, 256, 0)


# --- 2. splits and coalescing ----------------------------------------------------------------


def test_split_at_every_boundary_and_coalesced() -> None:
    frames = [
        Frame(1, 1, 0, b"abc"),
        Frame(3, 2, 0, b""),
        Frame(5, 3, 5, bytes(range(200))),
    ]
    wire = b"".join(encode_frame(f.stream_id, f.type, f.flags, f.payload) for f in frames)
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        events = []
        decoder.receive_data(wire[:cut])
        events += drain(decoder)
        decoder.receive_data(wire[cut:])
        events += drain(decoder)
        decoder.receive_eof()
        events += drain(decoder)
        assert events == [*frames, ConnectionClosed()]
    # One byte at a time.
    decoder = FrameDecoder()
    events = []
    for i in range(len(wire)):
        decoder.receive_data(wire[i : i + 1])
        events += drain(decoder)
    assert events == frames


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255), st.binary()),
        max_size=8,
    ),
    st.lists(st.integers(0, 300), max_size=20),
)
def test_round_trip_any_split(frames: list[tuple[int, int, int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(*f) for f in frames)
    decoder = FrameDecoder()
    events: list[object] = []
    pos = 0
    for cut in cuts:
        decoder.receive_data(wire[pos : pos + cut])
        pos += cut
        events += drain(decoder)
    decoder.receive_data(wire[pos:])
    decoder.receive_eof()
    events += drain(decoder)
    assert events == [*(Frame(*f) for f in frames), ConnectionClosed()]


@given(st.binary(max_size=200), st.lists(st.integers(1, 50), max_size=10))
def test_arbitrary_bytes_only_remote_errors(data: bytes, cuts: list[int]) -> None:
    for source in (
        FrameDecoder(max_message_size=64),
        ServerConnection(max_message_size=64),
        ClientConnection(max_message_size=64),
    ):
        if isinstance(source, ClientConnection):
            for _ in range(3):
                source.send_request("s", "m", b"")
        try:
            pos = 0
            for cut in cuts:
                source.receive_data(data[pos : pos + cut])
                pos += cut
                drain(source)
            source.receive_data(data[pos:])
            drain(source)
            source.receive_eof()
            assert isinstance(drain(source)[-1], ConnectionClosed)
        except RemoteProtocolError:
            pass


# --- 6, 7, 11: size limit on receive ---------------------------------------------------------


def test_exact_limit_accepted() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(1, 1, 0, bytes(MAX)))
    (frame,) = drain(decoder)
    assert isinstance(frame, Frame) and len(frame.payload) == MAX


def test_oversize_is_skipped_without_buffering() -> None:
    length = MAX + 1
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">IIBB", length, 7, 1, 0))
    chunk = bytes(65536)
    left = length
    while left:
        piece = chunk[: min(left, len(chunk))]
        left -= len(piece)
        decoder.receive_data(piece)
        events = drain(decoder)
        assert len(decoder._buf) == 0  # nothing of the oversize payload is kept
        assert events == ([] if left else [OversizedFrame(7, 1, 0, length)])
    decoder.receive_data(encode_frame(9, 1, 0, b"next"))
    assert drain(decoder) == [Frame(9, 1, 0, b"next")]


def test_oversize_skip_in_one_coalesced_read() -> None:
    decoder = FrameDecoder(max_message_size=4)
    decoder.receive_data(
        encode_frame(1, 1, 0, b"12345", max_message_size=10) + encode_frame(3, 1, 0, b"ok")
    )
    assert drain(decoder) == [OversizedFrame(1, 1, 0, 5), Frame(3, 1, 0, b"ok")]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00",  # mid-header
        encode_frame(1, 1, 0, b"abcdef")[:-1],  # mid-payload
        b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00",  # 4 GiB announced, then EOF
        b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00" + bytes(100),
    ],
)
def test_eof_mid_frame(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    assert drain(decoder) == []
    decoder.receive_eof()
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        decoder.next_event()


def test_receive_after_eof_is_local_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_eof()
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x")


# --- server state machine --------------------------------------------------------------------


def server_events(*chunks: bytes) -> list[object]:
    conn = ServerConnection()
    events: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events += drain(conn)
    return events


def test_server_worked_example_request() -> None:
    (event,) = server_events(KILL_REQUEST_FRAME)
    assert isinstance(event, RequestReceived)
    assert event.stream_id == 1
    req = event.request
    assert (req.service, req.method, req.payload) == (
        "containerd.task.v2.Task",
        "Kill",
        KILL_PAYLOAD,
    )
    assert req.timeout_nano == 10_000_000_000
    assert [(kv.key, kv.value) for kv in req.metadata] == [
        ("containerd-namespace-ttrpc", "default")
    ]


def test_server_worked_example_replies() -> None:
    conn = ServerConnection()
    conn.receive_data(KILL_REQUEST_FRAME)
    drain(conn)
    status = NotFound("process already finished").to_status()
    assert conn.send_response(1, Response(status=status)) == NOT_FOUND_RESPONSE_FRAME
    assert conn.active_streams == frozenset()
    with pytest.raises(LocalProtocolError):
        conn.send_response(1, Response())

    conn.receive_data(request_frame(3))
    drain(conn)
    assert conn.send_response(3, Response()) == EMPTY_RESPONSE_FRAME.replace(
        b"\x01\x02", b"\x03\x02"
    )
    conn.receive_data(request_frame(5))
    drain(conn)
    out = conn.send_status(5, 12, "service containerd.task.v3.Task")
    assert out == UNKNOWN_SERVICE_FRAME.replace(b"\x00\x03\x02", b"\x00\x05\x02")


def test_server_even_ids() -> None:
    events = server_events(request_frame(0), request_frame(2), encode_frame(4, 3, 0, b""))
    assert [(e.stream_id, status_of(e)) for e in events] == [  # type: ignore[union-attr,arg-type]
        (sid, (3, "StreamID must be odd for client initiated streams")) for sid in (0, 2, 4)
    ]


def test_server_reused_and_decreasing_ids() -> None:
    events = server_events(request_frame(7), request_frame(7), request_frame(5), request_frame(9))
    assert isinstance(events[0], RequestReceived) and events[0].stream_id == 7
    for event, sid in zip(events[1:3], (7, 5), strict=True):
        assert isinstance(event, ErrorReply) and event.stream_id == sid
        assert status_of(event) == (3, "StreamID cannot be re-used and must increment")
    assert isinstance(events[3], RequestReceived) and events[3].stream_id == 9


def test_server_bad_request_envelopes() -> None:
    bad_utf8 = b"\x0a\x02\xff\xfe"
    events = server_events(
        encode_frame(1, 1, 0, b"\xff\xff\xff"),
        encode_frame(3, 1, 0, bad_utf8),
        encode_frame(5, 1, 0, b""),
    )
    for event in events[:2]:
        assert isinstance(event, ErrorReply)
        code, message = status_of(event)
        assert code == 3 and message.startswith("unmarshal request error: ")
    # The id of an undecodable request counts as used.
    assert isinstance(events[2], RequestReceived)
    assert events[2].request == Request()


def test_server_ignores_unknown_types_and_inactive_data() -> None:
    events = server_events(
        encode_frame(1, 7, 0, b"junk"),
        encode_frame(3, 2, 0, b""),
        encode_frame(5, 0, 0, b""),
        encode_frame(7, 3, 0, b"x"),
        request_frame(9),
        encode_frame(9, 3, 0, b"data on a unary call"),
        request_frame(11),
    )
    assert isinstance(events[0], ErrorReply) and events[0].stream_id == 7
    assert status_of(events[0]) == (3, "StreamID is no longer active")
    assert [type(e) for e in events[1:]] == [RequestReceived, RequestReceived]


def test_server_oversize_comes_first() -> None:
    big = struct.pack(">IIBB", MAX + 1, 2, 3, 0) + bytes(MAX + 1)
    big_odd = struct.pack(">IIBB", MAX + 1, 1, 1, 0) + bytes(MAX + 1)
    events = server_events(big, big_odd, request_frame(1))
    text = "message length 4194305 exceed maximum message size of 4194304"
    assert [(e.stream_id, status_of(e)) for e in events[:2]] == [  # type: ignore[union-attr,arg-type]
        (2, (8, text)),
        (1, (8, text)),
    ]
    # The last-seen id was not advanced by the oversize frame on id 1.
    assert isinstance(events[2], RequestReceived) and events[2].stream_id == 1


def test_server_oversize_reply_replaced() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(1))
    drain(conn)
    data = conn.send_response(1, Response(payload=bytes(MAX)))
    assert len(data) < 200
    response = Response.FromString(data[HEADER_SIZE:])
    assert response.status == status_pb2.Status(
        code=8, message="message length 4194309 exceed maximum message size of 4194304"
    )


def test_server_eof() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(1)[:5])
    conn.receive_eof()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn = ServerConnection()
    conn.receive_eof()
    assert conn.next_event() == ConnectionClosed()


# --- client state machine --------------------------------------------------------------------


def test_client_worked_example_request() -> None:
    conn = ClientConnection()
    stream_id, data = conn.send_request(
        "containerd.task.v2.Task",
        "Kill",
        KILL_PAYLOAD,
        timeout_nano=10_000_000_000,
        metadata=[("containerd-namespace-ttrpc", "default")],
    )
    assert stream_id == 1
    assert data == KILL_REQUEST_FRAME


def test_client_ids_and_matching() -> None:
    conn = ClientConnection()
    ids = [conn.send_request("s", "m", b"")[0] for _ in range(4)]
    assert ids == [1, 3, 5, 7]
    conn.forget(7)
    conn.receive_data(
        NOT_FOUND_RESPONSE_FRAME
        + NOT_FOUND_RESPONSE_FRAME  # duplicate: dropped
        + encode_frame(99, 2, 0, b"")  # unknown id: dropped
        + encode_frame(7, 2, 0, b"")  # forgotten id: dropped
        + encode_frame(3, 3, 0, b"")  # Data on a unary call
        + RUST_EMPTY_RESPONSE_FRAME.replace(b"\x00\x01\x02", b"\x00\x05\x02")
    )
    events = drain(conn)
    assert len(events) == 3
    first, second, third = events
    assert isinstance(first, ResponseReceived) and first.stream_id == 1
    err = TTRPCError.from_status(first.response.status.code, first.response.status.message)
    assert isinstance(err, NotFound) and err.message == "process already finished: not found"
    assert isinstance(second, CallFailed) and second.stream_id == 3
    assert isinstance(second.error, RemoteProtocolError)
    assert str(second.error) == 'unexpected "data" message received: protocol error'
    assert isinstance(third, ResponseReceived) and third.stream_id == 5
    assert third.response.status.code == 0
    assert conn.pending == frozenset()


def test_client_oversize_request_is_local() -> None:
    conn = ClientConnection()
    with pytest.raises(ResourceExhausted) as info:
        conn.send_request("s", "m", bytes(MAX))
    assert info.value.code == 8
    assert info.value.message.startswith("message length 4194")
    assert info.value.message.endswith(" exceed maximum message size of 4194304")
    assert conn.send_request("s", "m", b"")[0] == 1


def test_client_oversize_and_bad_frames() -> None:
    conn = ClientConnection(max_message_size=8)
    conn.send_request("s", "m", b"")
    conn.send_request("s", "m", b"")
    conn.receive_data(
        encode_frame(1, 2, 0, bytes(9), max_message_size=9) + encode_frame(3, 2, 0, b"\xff")
    )
    first, second = drain(conn)
    assert isinstance(first, CallFailed) and isinstance(first.error, ResourceExhausted)
    assert first.error.message == "message length 9 exceed maximum message size of 8"
    assert isinstance(second, CallFailed) and isinstance(second.error, RemoteProtocolError)


def test_metadata_order_on_wire() -> None:
    conn = ClientConnection()
    _, data = conn.send_request("s", "m", b"", metadata=[("k", "1"), ("K", "2"), ("k", "3")])
    req = Request.FromString(data[HEADER_SIZE:])
    assert list(req.metadata) == [
        KeyValue(key="k", value="1"),
        KeyValue(key="K", value="2"),
        KeyValue(key="k", value="3"),
    ]


# --- hand-encoded messages are byte-identical to protobuf's ----------------------------------


def test_request_encoding_matches_protobuf() -> None:
    rnd = random.Random(7)

    def text() -> str:
        return "".join(rnd.choice("ab\u00e9\U0001f600 ") for _ in range(rnd.choice([0, 1, 200])))

    conn = ClientConnection()
    for _ in range(500):
        service, method = rnd.choice(["svc", text()]), rnd.choice(["M", text()])
        payload = bytes(rnd.choice([0, 1, 127, 128, 20000]))
        timeout = rnd.choice([0, 1, -1, 10**12, (1 << 63) - 1, -(1 << 63)])
        pairs = [(text(), text()) for _ in range(rnd.choice([0, 1, 3]))]
        metadata: Any = rnd.choice([pairs, tuple(pairs), [list(p) for p in pairs], iter(pairs)])
        expected = Request(
            service=service,
            method=method,
            payload=payload,
            timeout_nano=timeout,
            metadata=[KeyValue(key=k, value=v) for k, v in pairs],
        ).SerializeToString()
        stream_id, data = conn.send_request(
            service, method, payload, timeout_nano=timeout, metadata=metadata
        )
        assert data == encode_frame(stream_id, FrameType.REQUEST, 0, expected)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, MAX - 4, MAX - 3, MAX])
def test_send_payload_matches_send_response(size: int) -> None:
    conn = ServerConnection()
    for stream_id in (1, 3):
        conn.receive_data(encode_frame(stream_id, FrameType.REQUEST, 0, b""))
        assert isinstance(conn.next_event(), RequestReceived)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    fast = conn.send_payload(1, payload)
    slow = conn.send_response(3, Response(payload=payload))
    assert fast[:4] == slow[:4] and fast[8:] == slow[8:]
    assert conn.active_streams == frozenset()
