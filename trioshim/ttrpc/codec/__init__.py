"""ttrpc framing and connection state machines, sans-IO (no sockets, no event loop, no clock).

Layers, bottom up, one module each:

* :mod:`.framing`: :func:`encode_frame` / :class:`FrameDecoder`, the 10-byte header
  (``>IIBB``: length, stream id, type, flags) plus payload. The decoder takes bytes in any
  split or coalescing and hands back :class:`Frame` events; a frame whose length exceeds the
  limit is read through and thrown away without allocating it, and reported as
  :class:`OversizedFrame`.
* :mod:`.server_side`: :class:`ServerConnection`, the server's receive rules (Go's checks, in
  Go's order) turning frames into :class:`RequestReceived` events or ready-to-send
  :class:`ErrorReply` frames, and :meth:`ServerConnection.send_response` encoding replies (an
  oversize reply becomes code 8).
* :mod:`.client_side`: :class:`ClientConnection`, odd increasing stream ids, request encoding
  with the local size check, and response matching (:class:`ResponseReceived`,
  :class:`CallFailed`).

Errors say whose fault they are: :class:`~trioshim.ttrpc.errors.RemoteProtocolError` when the
peer broke the framing (e.g. EOF in the middle of a frame: the connection must be closed),
:class:`~trioshim.ttrpc.errors.LocalProtocolError` when the caller asked for something invalid.
Peer mistakes that the protocol answers (bad ids, undecodable envelopes, oversize frames) are
*events*, never exceptions.
"""

from .client_side import CallFailed, ClientConnection, ClientEvent, ResponseReceived
from .framing import (
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    FLAG_REMOTE_OPEN,
    HEADER,
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_STREAM_ID,
    NEED_DATA,
    ConnectionClosed,
    DecoderEvent,
    Frame,
    FrameDecoder,
    FrameType,
    NeedData,
    OversizedFrame,
    RawDecoderEvent,
    encode_frame,
    oversize_message,
)
from .server_side import (
    INACTIVE_STREAM_TEXT,
    ODD_ID_TEXT,
    REUSED_ID_TEXT,
    UNMARSHAL_REQUEST_PREFIX,
    ErrorReply,
    RequestReceived,
    ServerConnection,
    ServerEvent,
)

__all__ = [
    "FLAG_NO_DATA",
    "FLAG_REMOTE_CLOSED",
    "FLAG_REMOTE_OPEN",
    "HEADER",
    "HEADER_SIZE",
    "INACTIVE_STREAM_TEXT",
    "MAX_MESSAGE_SIZE",
    "MAX_STREAM_ID",
    "NEED_DATA",
    "ODD_ID_TEXT",
    "REUSED_ID_TEXT",
    "UNMARSHAL_REQUEST_PREFIX",
    "CallFailed",
    "ClientConnection",
    "ClientEvent",
    "ConnectionClosed",
    "DecoderEvent",
    "ErrorReply",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "NeedData",
    "OversizedFrame",
    "RawDecoderEvent",
    "RequestReceived",
    "ResponseReceived",
    "ServerConnection",
    "ServerEvent",
    "encode_frame",
    "oversize_message",
]
