"""ttrpc frames, sans-IO: the 10-byte header and its payload, encoded and decoded.

A frame is ``length`` (4 bytes), ``stream id`` (4), ``type`` (1), ``flags`` (1), all
big-endian, then ``length`` payload bytes. :class:`FrameDecoder` takes bytes split or coalesced
any way and hands back whole frames; a frame longer than the limit is read through and thrown
away without being held in memory, and reported as :class:`OversizedFrame`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "FLAG_NO_DATA",
    "FLAG_REMOTE_CLOSED",
    "FLAG_REMOTE_OPEN",
    "HEADER",
    "HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_STREAM_ID",
    "NEED_DATA",
    "TYPE_DATA",
    "TYPE_REQUEST",
    "TYPE_RESPONSE",
    "ConnectionClosed",
    "DecoderEvent",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "NeedData",
    "OversizedFrame",
    "RawDecoderEvent",
    "encode_frame",
    "oversize_message",
    "varint",
]

HEADER: Final = struct.Struct(">IIBB")
HEADER_SIZE: Final = HEADER.size
_unpack_header: Final = HEADER.unpack_from
#: Largest accepted ``length`` (payload bytes, header excluded): 4 MiB.
MAX_MESSAGE_SIZE: Final = 4 << 20
MAX_STREAM_ID: Final = 0xFFFFFFFF

FLAG_REMOTE_CLOSED: Final = 0x01
FLAG_REMOTE_OPEN: Final = 0x02
FLAG_NO_DATA: Final = 0x04


def oversize_message(length: int, limit: int = MAX_MESSAGE_SIZE) -> str:
    """Go's text for a message over the limit."""
    return f"message length {length} exceed maximum message size of {limit}"


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


# Plain ints for the per-frame paths: reading an IntEnum member costs as much as the rest of a
# comparison several times over.
TYPE_REQUEST: Final = int(FrameType.REQUEST)
TYPE_RESPONSE: Final = int(FrameType.RESPONSE)
TYPE_DATA: Final = int(FrameType.DATA)


# ---------------------------------------------------------------------------------------------
# Events of the decoder


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


DecoderEvent = Frame | OversizedFrame | ConnectionClosed | NeedData
#: :meth:`FrameDecoder.next_raw`: a complete frame as ``(stream_id, type, flags, payload)``.
RawDecoderEvent = tuple[int, int, int, bytes] | OversizedFrame | ConnectionClosed | NeedData


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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
