"""Helpers shared by the ttrpc tests (imported by module name from the test files)."""

from __future__ import annotations

import json
import math
from typing import Any

import trio
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, wrappers_pb2
from google.protobuf.descriptor import ServiceDescriptor

from trioshim.api.ttrpc.request_pb2 import KeyValue, Request, Response
from trioshim.ttrpc import RequestContext
from trioshim.ttrpc.codec import (
    NEED_DATA,
    ConnectionClosed,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)


def _dump(text: str) -> bytes:
    """Bytes from a hex dump, one line per 16 bytes: the offset, then the bytes in hex."""
    out = bytearray()
    for line in text.strip().splitlines():
        out += bytes.fromhex(" ".join(line.split()[1:]))
    return bytes(out)


# A Kill call (container c1, signal 9, a 10 s timeout, the namespace in metadata) as containerd
# writes it, and replies as Go's ttrpc server writes them.
KILL_REQUEST_FRAME = _dump(
    """
0000  00 00 00 54 00 00 00 01 01 00 0a 17 63 6f 6e 74
0010  61 69 6e 65 72 64 2e 74 61 73 6b 2e 76 32 2e 54
0020  61 73 6b 12 04 4b 69 6c 6c 1a 06 0a 02 63 31 18
0030  09 20 80 c8 af a0 25 2a 25 0a 1a 63 6f 6e 74 61
0040  69 6e 65 72 64 2d 6e 61 6d 65 73 70 61 63 65 2d
0050  74 74 72 70 63 12 07 64 65 66 61 75 6c 74
"""
)
KILL_PAYLOAD = bytes.fromhex("0a0263311809")  # KillRequest{id: "c1", signal: 9}

NOT_FOUND_RESPONSE_FRAME = _dump(
    """
0000  00 00 00 29 00 00 00 01 02 00 0a 27 08 05 12 23
0010  70 72 6f 63 65 73 73 20 61 6c 72 65 61 64 79 20
0020  66 69 6e 69 73 68 65 64 3a 20 6e 6f 74 20 66 6f
0030  75 6e 64
"""
)
EMPTY_RESPONSE_FRAME = bytes.fromhex("00 00 00 00 00 00 00 01 02 00")
RUST_EMPTY_RESPONSE_FRAME = bytes.fromhex("00 00 00 02 00 00 00 01 02 00 0a 00")

UNKNOWN_SERVICE_FRAME = _dump(
    """
0000  00 00 00 25 00 00 00 03 02 00 0a 23 08 0c 12 1f
0010  73 65 72 76 69 63 65 20 63 6f 6e 74 61 69 6e 65
0020  72 64 2e 74 61 73 6b 2e 76 33 2e 54 61 73 6b
"""
)


# --- a small test service, built from a descriptor at import time ----------------------------


SERVICE = "trioshim.test.v1.Test"

_METHODS = [
    # name, input, output, server_streaming
    ("Echo", "StringValue", "StringValue", False),
    ("Sleep", "DoubleValue", "Empty", False),
    ("Big", "UInt64Value", "BytesValue", False),
    ("Blob", "BytesValue", "UInt64Value", False),
    ("Raise", "StringValue", "Empty", False),
    ("Status", "Int32Value", "Empty", False),
    ("Meta", "Empty", "StringValue", False),
    ("Nil", "Empty", "Empty", False),
    ("Wrong", "Empty", "Empty", False),
    ("Missing", "Empty", "Empty", False),
    ("Watch", "Empty", "Empty", True),
]


def _build_service() -> ServiceDescriptor:
    file = descriptor_pb2.FileDescriptorProto(
        name="trioshim/test/v1/ttrpc_test.proto",
        package="trioshim.test.v1",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "google/protobuf/empty.proto"],
    )
    service = file.service.add(name="Test")
    for name, input_type, output_type, streaming in _METHODS:
        service.method.add(
            name=name,
            input_type=f".google.protobuf.{input_type}",
            output_type=f".google.protobuf.{output_type}",
            server_streaming=streaming,
        )
    pool = descriptor_pool.Default()
    try:
        found = pool.FindFileByName(file.name)
    except KeyError:
        # Make sure the dependencies are in the pool, then add ours.
        assert wrappers_pb2.DESCRIPTOR and empty_pb2.DESCRIPTOR
        found = pool.Add(file) or pool.FindFileByName(file.name)
    return found.services_by_name["Test"]  # type: ignore[no-any-return]


TEST_SERVICE = _build_service()


class TestService:
    """Implementation of trioshim.test.v1.Test (no Missing, no Watch)."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.sleep_started = trio.Event()

    async def Echo(self, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.StringValue(value=req.value)

    async def Sleep(self, ctx: RequestContext, req: Any) -> Any:
        name = f"sleep {req.value}"
        self.started.append(name)
        self.sleep_started.set()
        try:
            await trio.sleep(req.value)
        except trio.Cancelled:
            self.cancelled.append(name)
            raise
        self.finished.append(name)
        return empty_pb2.Empty()

    async def Big(self, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.BytesValue(value=bytes(req.value))

    async def Blob(self, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.UInt64Value(value=len(req.value))

    async def Raise(self, ctx: RequestContext, req: Any) -> Any:
        kind, _, text = req.value.partition(":")
        exc: BaseException = {
            "value": ValueError(text),
            "exists": FileExistsError(17, text),
            "noent": FileNotFoundError(2, text),
            "perm": PermissionError(1, text),
            "timeout": trio.TooSlowError(),
        }[kind]
        raise exc

    async def Status(self, ctx: RequestContext, req: Any) -> Any:
        from trioshim.ttrpc import TTRPCError

        detail = ctx.metadata.get("detail", [])
        from google.protobuf import any_pb2

        details = [any_pb2.Any(type_url="t/u", value=d.encode()) for d in detail]
        raise TTRPCError.from_status(req.value, f"status {req.value} \u00e9", details)

    async def Meta(self, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.StringValue(
            value=json.dumps(
                {
                    "service": ctx.service,
                    "method": ctx.method,
                    "metadata": dict(ctx.metadata),
                    "namespace": ctx.namespace,
                    "remaining": None
                    if ctx.deadline == math.inf
                    else ctx.deadline - trio.current_time(),
                    "stream_id": ctx.stream_id,
                }
            )
        )

    async def Nil(self, ctx: RequestContext, req: Any) -> Any:
        return None

    async def Wrong(self, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.StringValue(value="not an Empty")


# --- a raw peer ------------------------------------------------------------------------------


class RawPeer:
    """One end of a ttrpc connection driven by hand: write frames, read frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_message_size=2**32)
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(
        self,
        stream_id: int,
        method: str,
        payload: bytes = b"",
        *,
        service: str = SERVICE,
        timeout_nano: int = 0,
        metadata: list[tuple[str, str]] | None = None,
    ) -> None:
        body = Request(
            service=service,
            method=method,
            payload=payload,
            timeout_nano=timeout_nano,
            metadata=[KeyValue(key=k, value=v) for k, v in metadata or []],
        ).SerializeToString()
        await self.send(encode_frame(stream_id, FrameType.REQUEST, 0, body, max_message_size=2**32))

    async def next_frame(self) -> Frame | None:
        """The next frame, or None at EOF (a reset counts as EOF)."""
        while True:
            event = self.decoder.next_event()
            if isinstance(event, Frame):
                return event
            if isinstance(event, ConnectionClosed):
                return None
            assert event is NEED_DATA, event
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if data:
                self.decoder.receive_data(data)
            else:
                self.eof = True
                self.decoder.receive_eof()

    async def response(self) -> tuple[int, Response]:
        frame = await self.next_frame()
        assert frame is not None, "connection closed"
        assert frame.type == FrameType.RESPONSE and frame.flags == 0
        return frame.stream_id, Response.FromString(frame.payload)

    async def status(self) -> tuple[int, int, str]:
        stream_id, response = await self.response()
        assert response.payload == b""
        return stream_id, response.status.code, response.status.message

    async def send_response(
        self, stream_id: int, payload: bytes = b"", code: int = 0, message: str = ""
    ) -> None:
        response = Response(payload=payload)
        if code:
            response.status.code = code
            response.status.message = message
        await self.send(
            encode_frame(stream_id, FrameType.RESPONSE, 0, response.SerializeToString())
        )

    async def read_request(self) -> tuple[int, Request]:
        frame = await self.next_frame()
        assert frame is not None, "connection closed"
        assert frame.type == FrameType.REQUEST and frame.flags == 0
        return frame.stream_id, Request.FromString(frame.payload)

    async def aclose(self) -> None:
        await self.stream.aclose()
