"""ttrpc framing and connection state machines, sans-IO (no sockets, no event loop, no clock).

Layers, bottom up:

* :func:`encode_frame` / :class:`FrameDecoder`: the 10-byte header (``>IIBB``: length,
  stream id, type, flags) plus payload. The decoder takes bytes in any split or coalescing and
  hands back :class:`Frame` events; a frame whose length exceeds the limit is read through and
  thrown away without allocating it, and reported as :class:`OversizedFrame`.
* :class:`ServerConnection`: the server's receive rules (spec 3.2, in Go's order) turning
  frames into :class:`RequestReceived` events or ready-to-send :class:`ErrorReply` frames, and
  :meth:`ServerConnection.send_response` encoding replies (an oversize reply becomes code 8).
* :class:`ClientConnection`: odd increasing stream ids, request encoding with the local size
  check, and response matching (:class:`ResponseReceived`, :class:`CallFailed`).

Errors say whose fault they are: :class:`~trioshim.ttrpc.errors.RemoteProtocolError` when the
peer broke the framing (e.g. EOF in the middle of a frame: the connection must be closed),
:class:`~trioshim.ttrpc.errors.LocalProtocolError` when the caller asked for something invalid.
Peer mistakes that the protocol answers (bad ids, undecodable envelopes, oversize frames) are
*events*, never exceptions.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from trioshim.api.ttrpc.request_pb2 import KeyValue, Request, Response

from .errors import Code, LocalProtocolError, RemoteProtocolError, TTRPCError

__all__ = [
    "FLAG_NO_DATA",
    "FLAG_REMOTE_CLOSED",
    "FLAG_REMOTE_OPEN",
    "HEADER",
    "HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "NEED_DATA",
    "CallFailed",
    "ClientConnection",
    "ConnectionClosed",
    "ErrorReply",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "NeedData",
    "OversizedFrame",
    "RequestReceived",
    "ResponseReceived",
    "ServerConnection",
    "encode_frame",
    "oversize_message",
]

log = logging.getLogger("trioshim.ttrpc")

HEADER: Final = struct.Struct(">IIBB")
HEADER_SIZE: Final = HEADER.size
_unpack_header: Final = HEADER.unpack_from
_pack_header: Final = HEADER.pack
#: Largest accepted ``length`` (payload bytes, header excluded): 4 MiB.
MAX_MESSAGE_SIZE: Final = 4 << 20
MAX_STREAM_ID: Final = 0xFFFFFFFF

FLAG_REMOTE_CLOSED: Final = 0x01
FLAG_REMOTE_OPEN: Final = 0x02
FLAG_NO_DATA: Final = 0x04

# Peer-visible texts, exactly as Go writes them.
ODD_ID_TEXT: Final = "StreamID must be odd for client initiated streams"
REUSED_ID_TEXT: Final = "StreamID cannot be re-used and must increment"
INACTIVE_STREAM_TEXT: Final = "StreamID is no longer active"
UNMARSHAL_REQUEST_PREFIX: Final = "unmarshal request error: "


def oversize_message(length: int, limit: int = MAX_MESSAGE_SIZE) -> str:
    """Go's text for a message over the limit."""
    return f"message length {length} exceed maximum message size of {limit}"


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


# Plain ints for the per-frame paths: reading an IntEnum member costs as much as the rest of a
# comparison several times over.
_REQUEST: Final = int(FrameType.REQUEST)
_RESPONSE: Final = int(FrameType.RESPONSE)
_DATA: Final = int(FrameType.DATA)


# ---------------------------------------------------------------------------------------------
# Events


class NeedData:
    """Sentinel type: more bytes are needed before the next event."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the stream cleanly, at a frame boundary."""


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose ``length`` exceeded the limit; its payload was read and thrown away."""

    stream_id: int
    type: int
    flags: int
    length: int


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


@dataclass(slots=True)  # not frozen, like RequestReceived
class ResponseReceived:
    """The Response for a pending call (client side)."""

    stream_id: int
    response: Response


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A pending call failed because of what the peer sent on its id (client side)."""

    stream_id: int
    error: Exception


_parse_request: Final = Request.FromString
_parse_response: Final = Response.FromString


DecoderEvent = Frame | OversizedFrame | ConnectionClosed | NeedData
#: :meth:`FrameDecoder.next_raw`: a complete frame as ``(stream_id, type, flags, payload)``.
RawDecoderEvent = tuple[int, int, int, bytes] | OversizedFrame | ConnectionClosed | NeedData
ServerEvent = RequestReceived | ErrorReply | ConnectionClosed | NeedData
ClientEvent = ResponseReceived | CallFailed | ConnectionClosed | NeedData


# ---------------------------------------------------------------------------------------------
# Framing


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SIZE_BYTES: Final = [bytes([n]) for n in range(0x80)]
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
#: Entries kept by each encoding cache of a ClientConnection (then it stops adding).
_ENCODED_CACHE_SIZE: Final = 256


def encode_frame(
    stream_id: int,
    type: int,
    flags: int,
    payload: bytes = b"",
    *,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> bytes:
    """Header and payload as one ``bytes``; :class:`LocalProtocolError` when out of range."""
    if len(payload) > max_message_size:
        raise LocalProtocolError(oversize_message(len(payload), max_message_size))
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {stream_id} out of range")
    if not 0 <= type <= 0xFF or not 0 <= flags <= 0xFF:
        raise LocalProtocolError(f"frame type {type} / flags {flags} out of range")
    return HEADER.pack(len(payload), stream_id, type, flags) + payload


class FrameDecoder:
    """Bytes in, :class:`Frame` / :class:`OversizedFrame` events out.

    Feed with :meth:`receive_data` (``b""`` is not EOF here: call :meth:`receive_eof`), then
    call :meth:`next_event` until it returns :data:`NEED_DATA`. After EOF at a frame boundary it
    returns :class:`ConnectionClosed`; EOF inside a frame raises :class:`RemoteProtocolError`.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        # Received bytes; those before _pos are consumed (dropped at the next receive_data,
        # or all at once when everything is consumed).
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        # Header of an oversize frame whose payload is being skipped, and what is left of it.
        self._skipping: tuple[int, int, int, int] | None = None
        self._skip_left = 0

    @property
    def trailing_data(self) -> int:
        """Bytes received but not yet part of a returned event (including a skipped rest)."""
        return len(self._buf) - self._pos + self._skip_left

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise LocalProtocolError("receive_data after receive_eof")
        if not data:
            return
        if self._skip_left:
            take = min(self._skip_left, len(data))
            self._skip_left -= take
            data = data[take:]
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def receive_eof(self) -> None:
        self._eof = True

    def next_event(self) -> DecoderEvent:
        event = self.next_raw()
        if type(event) is tuple:
            return Frame(*event)
        return event  # type: ignore[return-value]

    def next_raw(
        self,
    ) -> tuple[int, int, int, bytes] | OversizedFrame | ConnectionClosed | NeedData:
        """:meth:`next_event` with a complete frame as a ``(stream_id, type, flags, payload)``
        tuple instead of a :class:`Frame` (cheaper, for the connection state machines)."""
        if self._skipping is not None:
            if self._skip_left:
                return self._need_data()
            length, stream_id, type_, flags = self._skipping
            self._skipping = None
            return OversizedFrame(stream_id, type_, flags, length)
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if size - pos < HEADER_SIZE:
            return self._need_data()
        length, stream_id, type_, flags = _unpack_header(buf, pos)
        start = pos + HEADER_SIZE
        if length > self.max_message_size:
            take = min(length, size - start)
            self._consumed(start + take)
            self._skipping = (length, stream_id, type_, flags)
            self._skip_left = length - take
            return self.next_raw()
        end = start + length
        if size < end:
            return self._need_data()
        payload = bytes(buf[start:end])
        self._consumed(end)
        return stream_id, type_, flags, payload

    def _consumed(self, pos: int) -> None:
        if pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        else:
            self._pos = pos

    def _need_data(self) -> NeedData | ConnectionClosed:
        if not self._eof:
            return NEED_DATA
        if self.trailing_data:
            raise RemoteProtocolError("connection closed in the middle of a frame")
        return ConnectionClosed()


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


# ---------------------------------------------------------------------------------------------
# Server side


class ServerConnection:
    """The server's view of one connection (spec 3.2), sans-IO.

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
            if type_ == _REQUEST:
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
            if type_ == _DATA:
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
            body = b"\x12" + _varint(size) + payload
        if len(body) > self.max_message_size:
            return self.send_response(stream_id, Response(payload=payload))
        self._active.discard(stream_id)
        return _pack_header(len(body), stream_id, _RESPONSE, 0) + body

    def send_status(
        self, stream_id: int, code: int, message: str, details: Iterable[Any] = ()
    ) -> bytes:
        """:meth:`send_response` with an error status and no payload."""
        return self.send_response(stream_id, _status_response(code, message, details))

    def abandon(self, stream_id: int) -> None:
        """Forget an active request without replying (its handler was cancelled)."""
        self._active.discard(stream_id)


# ---------------------------------------------------------------------------------------------
# Client side

_TYPE_NAMES: dict[int, str] = {FrameType.DATA: "data", FrameType.REQUEST: "request"}


class ClientConnection:
    """The client's view of one connection, sans-IO.

    :meth:`send_request` allocates the next odd id (1, 3, 5, ...) and returns the encoded
    frame; the caller must write frames in the order their ids were allocated. Incoming frames
    are matched to pending ids: :class:`ResponseReceived` on success, :class:`CallFailed` when
    the peer sent an oversize or non-Response frame or an undecodable Response on a pending id.
    Frames for unknown or finished ids are dropped.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._decoder = FrameDecoder(max_message_size)
        self._next_id = 1
        self._pending: set[int] = set()
        # (service, method), metadata pairs -> their serialized Request fields.
        self._encoded_names: dict[tuple[str, str], bytes] = {}
        self._encoded_metadata: dict[tuple[Any, ...], bytes] = {}

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self._pending)

    def send_request(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout_nano: int = 0,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> tuple[int, bytes]:
        """Allocate a stream id for a unary call and encode its Request frame.

        Raises :class:`~trioshim.ttrpc.errors.ResourceExhausted` (code 8, Go's text) when the
        encoded Request exceeds the limit: no id is used and nothing is to be written.
        """
        body = self._encode_request(service, method, payload, timeout_nano, metadata)
        if len(body) > self.max_message_size:
            raise TTRPCError.from_status(
                Code.RESOURCE_EXHAUSTED, oversize_message(len(body), self.max_message_size)
            )
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted on this connection")
        self._next_id += 2
        self._pending.add(stream_id)
        return stream_id, encode_frame(
            stream_id, FrameType.REQUEST, 0, body, max_message_size=self.max_message_size
        )

    def _encode_request(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_nano: int,
        metadata: Iterable[tuple[str, str]],
    ) -> bytes:
        """``Request(...).SerializeToString()``, from cached pieces.

        A serialized proto3 message is its fields in field-number order, each present field
        encoded on its own, so the service/method prefix and the metadata fields (the same on
        most calls of a connection) are serialized once, by the Request message itself, and
        reused; payload and timeout are appended by hand.
        """
        if (
            type(payload) is not bytes
            or type(timeout_nano) is not int
            or not (_INT64_MIN <= timeout_nano <= _INT64_MAX)
        ):
            return Request(
                service=service,
                method=method,
                payload=payload,
                timeout_nano=timeout_nano,
                metadata=[KeyValue(key=k, value=v) for k, v in metadata],
            ).SerializeToString()
        names = self._encoded_names
        prefix = names.get((service, method))
        if prefix is None:
            prefix = Request(service=service, method=method).SerializeToString()
            if len(names) < _ENCODED_CACHE_SIZE:
                names[(service, method)] = prefix
        cache = self._encoded_metadata
        pairs = tuple(metadata)
        try:
            meta = cache.get(pairs)
            hashable = True
        except TypeError:  # e.g. lists as pairs
            meta = None
            hashable = False
        if meta is None:
            meta = Request(
                metadata=[KeyValue(key=k, value=v) for k, v in pairs]
            ).SerializeToString()
            if hashable and len(cache) < _ENCODED_CACHE_SIZE:
                cache[pairs] = meta
        parts = [prefix]
        if payload:
            parts += (b"\x1a", _varint(len(payload)), payload)
        if timeout_nano:
            parts += (b"\x20", _varint(timeout_nano & 0xFFFFFFFFFFFFFFFF))
        parts.append(meta)
        return b"".join(parts)

    def forget(self, stream_id: int) -> None:
        """Stop waiting for ``stream_id`` (caller gave up); a late Response is dropped."""
        self._pending.discard(stream_id)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.receive_data(data)

    def receive_eof(self) -> None:
        self._decoder.receive_eof()

    def next_event(self) -> ClientEvent:
        next_raw = self._decoder.next_raw
        pending = self._pending
        while True:
            event = next_raw()
            if type(event) is tuple:
                stream_id, type_, _flags, payload = event
            elif isinstance(event, OversizedFrame):
                stream_id = event.stream_id
            else:
                return event  # type: ignore[return-value]  # NeedData | ConnectionClosed
            if stream_id not in pending:
                log.debug("ttrpc: received message on inactive stream %d", stream_id)
                continue
            pending.discard(stream_id)
            if isinstance(event, OversizedFrame):
                return CallFailed(
                    stream_id,
                    TTRPCError.from_status(
                        Code.RESOURCE_EXHAUSTED,
                        oversize_message(event.length, self.max_message_size),
                    ),
                )
            if type_ != _RESPONSE:
                name = _TYPE_NAMES.get(type_, "unknown")
                return CallFailed(
                    stream_id,
                    RemoteProtocolError(f'unexpected "{name}" message received: protocol error'),
                )
            try:
                response = _parse_response(payload)
            except DecodeError as exc:
                return CallFailed(stream_id, RemoteProtocolError(f"ttrpc: invalid Response: {exc}"))
            return ResponseReceived(stream_id, response)
