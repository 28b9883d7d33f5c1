"""The server's side of a ttrpc connection, sans-IO: requests in, replies out.

A frame that breaks a rule is answered on its own stream id as Go's server answers it: same
code, same text, checked in the same order, so that a client cannot tell the two apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from trioshim.api.ttrpc.request_pb2 import Request, Response

from ..errors import Code, LocalProtocolError
from .framing import (
    HEADER,
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    ConnectionClosed,
    FrameDecoder,
    FrameType,
    NeedData,
    OversizedFrame,
    encode_frame,
    oversize_message,
    varint,
)

__all__ = [
    "INACTIVE_STREAM_TEXT",
    "ODD_ID_TEXT",
    "REUSED_ID_TEXT",
    "UNMARSHAL_REQUEST_PREFIX",
    "ErrorReply",
    "RequestReceived",
    "ServerConnection",
    "ServerEvent",
]

log = logging.getLogger("trioshim.ttrpc")

# Peer-visible texts, exactly as Go writes them.
ODD_ID_TEXT: Final = "StreamID must be odd for client initiated streams"
REUSED_ID_TEXT: Final = "StreamID cannot be re-used and must increment"
INACTIVE_STREAM_TEXT: Final = "StreamID is no longer active"
UNMARSHAL_REQUEST_PREFIX: Final = "unmarshal request error: "


# Built once per frame, so not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, which costs more than the rest of making the event.
@dataclass(slots=True)
class RequestReceived:
    """A valid Request on a fresh odd stream id (server side)."""

    stream_id: int
    request: Request
    flags: int = 0


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A protocol-level rejection, already encoded as a Response frame in ``data`` (server)."""

    stream_id: int
    code: int
    message: str
    data: bytes


ServerEvent = RequestReceived | ErrorReply | ConnectionClosed | NeedData

_parse_request: Final = Request.FromString
_pack_header: Final = HEADER.pack
_SIZE_BYTES: Final = [bytes([n]) for n in range(0x80)]


def _response_bytes(stream_id: int, response: Response, max_message_size: int) -> bytes:
    return encode_frame(
        stream_id,
        FrameType.RESPONSE,
        0,
        response.SerializeToString(),
        max_message_size=max_message_size,
    )


def _status_response(code: int, message: str, details: Iterable[Any] = ()) -> Response:
    return Response(status=status_pb2.Status(code=code, message=message, details=list(details)))


class ServerConnection:
    """The server's view of one connection, sans-IO.

    :meth:`next_event` applies Go's checks in order: oversize (code 8), even stream id (3),
    reused id (3), undecodable Request (3), Data for an id that is not open (3); other frame
    types are ignored. Valid Requests come out as :class:`RequestReceived` and their ids become
    *active* until :meth:`send_response` encodes their reply. Service/method lookup is the
    caller's business (it owns the registry): answer with :meth:`send_status`.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._decoder = FrameDecoder(max_message_size)
        self._last_request_id = 0
        self._active: set[int] = set()

    @property
    def active_streams(self) -> frozenset[int]:
        """Ids of requests received whose reply has not been encoded yet."""
        return frozenset(self._active)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.receive_data(data)

    def receive_eof(self) -> None:
        self._decoder.receive_eof()

    def next_event(self) -> ServerEvent:
        next_raw = self._decoder.next_raw
        while True:
            event = next_raw()
            if type(event) is not tuple:
                if isinstance(event, OversizedFrame):
                    return self._error(
                        event.stream_id,
                        Code.RESOURCE_EXHAUSTED,
                        oversize_message(event.length, self.max_message_size),
                    )
                return event  # type: ignore[return-value]  # NeedData | ConnectionClosed
            stream_id, type_, flags, payload = event
            if stream_id % 2 == 0:
                return self._error(stream_id, Code.INVALID_ARGUMENT, ODD_ID_TEXT)
            if type_ == TYPE_REQUEST:
                if stream_id <= self._last_request_id:
                    return self._error(stream_id, Code.INVALID_ARGUMENT, REUSED_ID_TEXT)
                self._last_request_id = stream_id
                try:
                    request = _parse_request(payload)
                except DecodeError as exc:
                    return self._error(
                        stream_id, Code.INVALID_ARGUMENT, UNMARSHAL_REQUEST_PREFIX + str(exc)
                    )
                self._active.add(stream_id)
                return RequestReceived(stream_id, request, flags)
            if type_ == TYPE_DATA:
                if stream_id in self._active:
                    # Data on a running unary call: nothing can consume it (Go would crash).
                    log.debug("ignoring Data frame on unary stream %d", stream_id)
                    continue
                return self._error(stream_id, Code.INVALID_ARGUMENT, INACTIVE_STREAM_TEXT)
            log.debug("ignoring frame of type %d on stream %d", type_, stream_id)

    def _error(self, stream_id: int, code: int, message: str) -> ErrorReply:
        data = _response_bytes(stream_id, _status_response(code, message), self.max_message_size)
        return ErrorReply(stream_id, code, message, data)

    def send_response(self, stream_id: int, response: Response) -> bytes:
        """Encode the final Response of an active request; its id stops being active.

        A Response that would exceed the limit is replaced by a code-8 status reply, so no
        frame over the limit is ever produced.
        """
        if stream_id not in self._active:
            raise LocalProtocolError(f"stream {stream_id} is not an active request")
        self._active.discard(stream_id)
        payload = response.SerializeToString()
        if len(payload) > self.max_message_size:
            response = _status_response(
                Code.RESOURCE_EXHAUSTED, oversize_message(len(payload), self.max_message_size)
            )
            payload = response.SerializeToString()
        return encode_frame(
            stream_id, FrameType.RESPONSE, 0, payload, max_message_size=self.max_message_size
        )

    def send_payload(self, stream_id: int, payload: bytes) -> bytes:
        """:meth:`send_response` for a successful reply carrying ``payload`` (the serialized
        result): the same bytes as ``send_response(stream_id, Response(payload=payload))``,
        without building the Response message."""
        if stream_id not in self._active:
            raise LocalProtocolError(f"stream {stream_id} is not an active request")
        size = len(payload)
        if not size:
            body = b""
        elif size < 0x80:
            body = b"\x12" + _SIZE_BYTES[size] + payload
        else:
            body = b"\x12" + varint(size) + payload
        if len(body) > self.max_message_size:
            return self.send_response(stream_id, Response(payload=payload))
        self._active.discard(stream_id)
        return _pack_header(len(body), stream_id, TYPE_RESPONSE, 0) + body

    def send_status(
        self, stream_id: int, code: int, message: str, details: Iterable[Any] = ()
    ) -> bytes:
        """:meth:`send_response` with an error status and no payload."""
        return self.send_response(stream_id, _status_response(code, message, details))

    def abandon(self, stream_id: int) -> None:
        """Forget an active request without replying (its handler was cancelled)."""
        self._active.discard(stream_id)
