"""The client's side of a ttrpc connection, sans-IO: calls out, their replies matched in."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]

from trioshim.api.ttrpc.request_pb2 import KeyValue, Request, Response

from ..errors import Code, LocalProtocolError, RemoteProtocolError, TTRPCError
from .framing import (
    MAX_MESSAGE_SIZE,
    MAX_STREAM_ID,
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

__all__ = ["CallFailed", "ClientConnection", "ClientEvent", "ResponseReceived"]

log = logging.getLogger("trioshim.ttrpc")


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


ClientEvent = ResponseReceived | CallFailed | ConnectionClosed | NeedData

_parse_response: Final = Response.FromString
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
#: Entries kept by each encoding cache of a ClientConnection (then it stops adding).
_ENCODED_CACHE_SIZE: Final = 256

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
            parts += (b"\x1a", varint(len(payload)), payload)
        if timeout_nano:
            parts += (b"\x20", varint(timeout_nano & 0xFFFFFFFFFFFFFFFF))
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
            if type_ != TYPE_RESPONSE:
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
