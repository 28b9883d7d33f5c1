"""Errors of the ttrpc layer, and the mapping between exceptions and ``google.rpc.Status``.

Three families live here:

* :class:`TTRPCError` and one subclass per gRPC code: a *status* that travels on the wire.
  Raising ``NotFound("process already finished")`` in a handler puts
  ``{5, "process already finished: not found"}`` on the wire, in the style of containerd's
  ``errdefs`` (the class text is appended unless the message already ends with it). A client
  receiving a status gets the subclass for its code with the message verbatim
  (:meth:`TTRPCError.from_status`).
* :class:`ClosedError`: the connection is gone (``ttrpc: closed``); every pending and later call
  on a dead client raises it. :class:`ServerClosedError` for a server that was shut down.
* :class:`ProtocolError`, split by fault: :class:`RemoteProtocolError` (the peer sent something
  malformed) and :class:`LocalProtocolError` (we asked the codec for something invalid).
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Sequence
from typing import Any, ClassVar

import trio
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Canceled",
    "ClosedError",
    "Code",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LocalProtocolError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "RemoteProtocolError",
    "ResourceExhausted",
    "ServerClosedError",
    "TTRPCError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "status_from_exception",
]


class Code(enum.IntEnum):
    """gRPC status codes (``google.rpc.Code``)."""

    OK = 0
    CANCELED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# Go's texts for the two context errors.
CONTEXT_CANCELED = "context canceled"
CONTEXT_DEADLINE_EXCEEDED = "context deadline exceeded"


class TTRPCError(Exception):
    """A gRPC status carried by a ttrpc Response.

    ``TTRPCError(code, message, details=())`` builds a status with the message verbatim. The
    subclasses (``NotFound(message)`` ...) fix the code and append their class text.

    Attributes: ``code`` (an int, a :class:`Code` when known), ``message`` (str), ``details``
    (a tuple of ``google.protobuf.Any``).
    """

    #: Code of the subclass; the base class takes the code as an argument.
    status_code: ClassVar[Code] = Code.UNKNOWN
    #: containerd errdefs text of the subclass ("" for the base class: nothing is appended).
    class_text: ClassVar[str] = ""

    code: int
    message: str
    details: tuple[Any, ...]

    def __init__(self, code: int, message: str = "", details: Sequence[Any] = ()) -> None:
        self._set(_as_code(code), message, details)

    def _set(self, code: int, message: str, details: Sequence[Any]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={int(self.code)}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (int(self.code), self.message, self.details))

    @classmethod
    def from_status(cls, code: int, message: str, details: Sequence[Any] = ()) -> TTRPCError:
        """The exception for a received status: the subclass for ``code``, message verbatim."""
        sub = _BY_CODE.get(code)
        if sub is None:
            return TTRPCError(code, message, details)
        err = sub.__new__(sub)
        err._set(sub.status_code, message, details)
        return err

    def to_status(self) -> Any:
        """This error as a ``google.rpc.Status`` message."""
        return status_pb2.Status(code=int(self.code), message=self.message, details=self.details)


def _rebuild(code: int, message: str, details: tuple[Any, ...]) -> TTRPCError:
    return TTRPCError.from_status(code, message, details)


def _as_code(code: int) -> int:
    try:
        return Code(code)
    except ValueError:
        return int(code)


class _StatusError(TTRPCError):
    """Base of the per-code classes: ``Cls(message="", details=())``."""

    def __init__(self, message: str = "", details: Sequence[Any] = ()) -> None:
        text = self.class_text
        if not message:
            message = text
        elif message != text and not message.endswith(": " + text):
            message = f"{message}: {text}"
        self._set(self.status_code, message, details)


class Canceled(_StatusError):
    status_code = Code.CANCELED
    class_text = CONTEXT_CANCELED


class Unknown(_StatusError):
    status_code = Code.UNKNOWN
    class_text = "unknown"


class InvalidArgument(_StatusError):
    status_code = Code.INVALID_ARGUMENT
    class_text = "invalid argument"


class DeadlineExceeded(_StatusError):
    status_code = Code.DEADLINE_EXCEEDED
    class_text = CONTEXT_DEADLINE_EXCEEDED


class NotFound(_StatusError):
    status_code = Code.NOT_FOUND
    class_text = "not found"


class AlreadyExists(_StatusError):
    status_code = Code.ALREADY_EXISTS
    class_text = "already exists"


class PermissionDenied(_StatusError):
    status_code = Code.PERMISSION_DENIED
    class_text = "permission denied"


class ResourceExhausted(_StatusError):
    status_code = Code.RESOURCE_EXHAUSTED
    class_text = "resource exhausted"


class FailedPrecondition(_StatusError):
    status_code = Code.FAILED_PRECONDITION
    class_text = "failed precondition"


class Aborted(_StatusError):
    status_code = Code.ABORTED
    class_text = "aborted"


class OutOfRange(_StatusError):
    status_code = Code.OUT_OF_RANGE
    class_text = "out of range"


class Unimplemented(_StatusError):
    status_code = Code.UNIMPLEMENTED
    class_text = "not implemented"


class Internal(_StatusError):
    status_code = Code.INTERNAL
    class_text = "internal"


class Unavailable(_StatusError):
    status_code = Code.UNAVAILABLE
    class_text = "unavailable"


class DataLoss(_StatusError):
    status_code = Code.DATA_LOSS
    class_text = "data loss"


class Unauthenticated(_StatusError):
    status_code = Code.UNAUTHENTICATED
    class_text = "unauthorized"


_BY_CODE: dict[int, type[_StatusError]] = {
    cls.status_code: cls
    for cls in (
        Canceled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


class ClosedError(Exception):
    """The connection is closed: raised by every pending and later call of a dead client."""

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(message)


class ServerClosedError(Exception):
    """The server was shut down or closed; it serves nothing more."""

    def __init__(self, message: str = "ttrpc: server closed") -> None:
        super().__init__(message)


class ProtocolError(Exception):
    """A ttrpc framing or envelope error. Never raised directly: see the two subclasses."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol (its fault, never a bug of ours)."""


class LocalProtocolError(ProtocolError):
    """We asked for something the protocol does not allow (our fault, e.g. a frame > 4 MiB)."""


# errno values that Go's os.IsExist / os.IsNotExist / os.IsPermission recognise.
_ERRNO_CODES: dict[int, Code] = {
    errno.EEXIST: Code.ALREADY_EXISTS,
    errno.ENOTEMPTY: Code.ALREADY_EXISTS,
    errno.ENOENT: Code.NOT_FOUND,
    errno.EACCES: Code.PERMISSION_DENIED,
    errno.EPERM: Code.PERMISSION_DENIED,
}


def status_from_exception(exc: BaseException) -> tuple[int, str, tuple[Any, ...]]:
    """``(code, message, details)`` for an exception that escaped a handler.

    * a :class:`TTRPCError`: its status verbatim;
    * an exception group holding exactly one exception: that exception's status;
    * ``FileExistsError`` 6, ``FileNotFoundError`` 5, ``PermissionError`` 7 (by errno, as Go's
      ``os.IsExist`` and friends do), message ``str(exc)``;
    * ``trio.TooSlowError`` / ``TimeoutError``: 4 ``context deadline exceeded``;
    * ``EOFError``: 11 (Go maps ``io.EOF`` to OutOfRange);
    * anything else: 2 with ``str(exc)`` (the class name when that is empty).
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, TTRPCError):
        return int(exc.code), exc.message, exc.details
    if isinstance(exc, (trio.TooSlowError, TimeoutError)):
        return Code.DEADLINE_EXCEEDED, CONTEXT_DEADLINE_EXCEEDED, ()
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CODES:
        return _ERRNO_CODES[exc.errno], text, ()
    if isinstance(exc, FileExistsError):
        return Code.ALREADY_EXISTS, text, ()
    if isinstance(exc, FileNotFoundError):
        return Code.NOT_FOUND, text, ()
    if isinstance(exc, PermissionError):
        return Code.PERMISSION_DENIED, text, ()
    if isinstance(exc, EOFError):
        return Code.OUT_OF_RANGE, text, ()
    return Code.UNKNOWN, text, ()
