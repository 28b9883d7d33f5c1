"""Calling a handler: a request in, the reply out (the serialized result, or a status).

Everything a handler can do wrong becomes a status here, once: an exception
(:func:`~trioshim.ttrpc.errors.status_from_exception`), a result of the wrong type or none, a
payload that does not decode; so does a deadline that expires while it runs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio
from google.protobuf.message import DecodeError, EncodeError, Message

from trioshim.api.ttrpc.request_pb2 import Request, Response

from .context import LazyMetadata, RequestContext
from .errors import CONTEXT_DEADLINE_EXCEEDED, Code, status_from_exception
from .handshake import PeerCredentials
from .registry import Method

__all__ = ["dispatch", "status_response"]

log = logging.getLogger("trioshim.ttrpc.server")


def status_response(code: int, message: str, details: tuple[Any, ...] = ()) -> Response:
    response = Response()
    response.status.code = code
    try:
        response.status.message = message
    except UnicodeEncodeError:
        # Not valid UTF-8 (a surrogate-escaped file name in an error text): a protobuf string
        # cannot hold it, and raising here would end the connection and the server with it.
        response.status.message = message.encode("utf-8", "replace").decode()
    response.status.details.extend(details)
    return response


async def dispatch(
    found: Method | tuple[int, str],
    request: Request,
    stream_id: int,
    deadline: float,
    peer: PeerCredentials | None,
) -> bytes | Response:
    """The reply to ``request``: the serialized result, or a status Response."""
    if type(found) is not Method:
        return status_response(*found)  # type: ignore[misc]
    handler = found.handler
    assert handler is not None
    try:
        message = found.input_type.FromString(request.payload)
    except DecodeError as exc:
        return status_response(Code.INTERNAL, f"ttrpc: error unmarshalling payload: {exc}")
    metadata = LazyMetadata(request)
    ctx = RequestContext(found.service, found.name, metadata, deadline, stream_id, peer)
    try:
        if deadline == math.inf:
            result = await handler(ctx, message)
        else:
            if deadline <= trio.current_time():
                return status_response(Code.DEADLINE_EXCEEDED, CONTEXT_DEADLINE_EXCEEDED)
            with trio.CancelScope(deadline=deadline) as scope:
                result = await handler(ctx, message)
            if scope.cancelled_caught:
                return status_response(Code.DEADLINE_EXCEEDED, CONTEXT_DEADLINE_EXCEEDED)
    except Exception as exc:
        code, text, details = status_from_exception(exc)
        if code == Code.UNKNOWN:
            log.warning("ttrpc: %s failed", found.full_name, exc_info=True)
        else:
            log.debug("ttrpc: %s: %s", found.full_name, text)
        return status_response(code, text, details)
    if type(result) is found.output_type:
        try:
            return result.SerializeToString()
        except EncodeError as exc:
            return status_response(Code.INTERNAL, f"ttrpc: error marshaling payload: {exc}")
    return _encode_result(found, result)


def _encode_result(method: Method, result: object) -> bytes | Response:
    if result is None:
        return status_response(Code.UNKNOWN, "ttrpc: marshal called with nil")
    if not isinstance(result, Message) or (
        result.DESCRIPTOR.full_name != method.output_type.DESCRIPTOR.full_name
    ):
        return status_response(
            Code.INTERNAL,
            "ttrpc: error marshaling payload: "
            f"{method.full_name} returned {type(result).__name__}, "
            f"want {method.output_type.DESCRIPTOR.full_name}",
        )
    try:
        return result.SerializeToString()
    except EncodeError as exc:
        return status_response(Code.INTERNAL, f"ttrpc: error marshaling payload: {exc}")
