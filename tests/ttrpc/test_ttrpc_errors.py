import errno
import pickle

import pytest
import trio
from google.protobuf import any_pb2
from google.rpc import status_pb2

from trioshim import ttrpc
from trioshim.ttrpc.errors import Code, TTRPCError, status_from_exception

CLASSES = {
    Code.CANCELED: (ttrpc.Canceled, "context canceled"),
    Code.UNKNOWN: (ttrpc.Unknown, "unknown"),
    Code.INVALID_ARGUMENT: (ttrpc.InvalidArgument, "invalid argument"),
    Code.DEADLINE_EXCEEDED: (ttrpc.DeadlineExceeded, "context deadline exceeded"),
    Code.NOT_FOUND: (ttrpc.NotFound, "not found"),
    Code.ALREADY_EXISTS: (ttrpc.AlreadyExists, "already exists"),
    Code.PERMISSION_DENIED: (ttrpc.PermissionDenied, "permission denied"),
    Code.RESOURCE_EXHAUSTED: (ttrpc.ResourceExhausted, "resource exhausted"),
    Code.FAILED_PRECONDITION: (ttrpc.FailedPrecondition, "failed precondition"),
    Code.ABORTED: (ttrpc.Aborted, "aborted"),
    Code.OUT_OF_RANGE: (ttrpc.OutOfRange, "out of range"),
    Code.UNIMPLEMENTED: (ttrpc.Unimplemented, "not implemented"),
    Code.INTERNAL: (ttrpc.Internal, "internal"),
    Code.UNAVAILABLE: (ttrpc.Unavailable, "unavailable"),
    Code.DATA_LOSS: (ttrpc.DataLoss, "data loss"),
    Code.UNAUTHENTICATED: (ttrpc.Unauthenticated, "unauthorized"),
}


def test_errdefs_style_message() -> None:
    err = ttrpc.NotFound("process already finished")
    assert err.code == 5
    assert err.message == "process already finished: not found"
    assert str(err) == err.message
    status = err.to_status()
    assert (
        status.SerializeToString()
        == bytes.fromhex("080512") + bytes([35]) + b"process already finished: not found"
    )


@pytest.mark.parametrize("code", sorted(CLASSES))
def test_every_class(code: Code) -> None:
    cls, text = CLASSES[code]
    assert cls().message == text
    assert cls("ctx").message == f"ctx: {text}"
    # Not appended twice.
    assert cls(f"ctx: {text}").message == f"ctx: {text}"
    assert cls(text).message == text
    assert cls().code == code
    assert isinstance(cls(), TTRPCError)


@pytest.mark.parametrize("code", sorted(CLASSES))
def test_from_status_keeps_message_verbatim(code: Code) -> None:
    detail = any_pb2.Any(type_url="x/y", value=b"\x01\x02")
    err = TTRPCError.from_status(code, "verbatim", [detail])
    assert type(err) is CLASSES[code][0]
    assert err.message == "verbatim"
    assert err.details == (detail,)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err)
    assert again.message == "verbatim"


def test_base_class_and_unknown_codes() -> None:
    err = TTRPCError(5, "exact")
    assert err.message == "exact"
    assert err.code == Code.NOT_FOUND
    odd = TTRPCError.from_status(99, "future code")
    assert type(odd) is TTRPCError
    assert odd.code == 99
    assert odd.to_status() == status_pb2.Status(code=99, message="future code")


def test_closed_error_texts() -> None:
    assert str(ttrpc.ClosedError()) == "ttrpc: closed"
    assert str(ttrpc.ServerClosedError()) == "ttrpc: server closed"
    assert issubclass(ttrpc.RemoteProtocolError, ttrpc.ProtocolError)
    assert issubclass(ttrpc.LocalProtocolError, ttrpc.ProtocolError)
    assert not issubclass(ttrpc.RemoteProtocolError, ttrpc.LocalProtocolError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ttrpc.NotFound("x"), (5, "x: not found")),
        (TTRPCError(11, "raw"), (11, "raw")),
        (FileExistsError(errno.EEXIST, "exists"), (6, "[Errno 17] exists")),
        (FileNotFoundError(errno.ENOENT, "gone"), (5, "[Errno 2] gone")),
        (PermissionError(errno.EACCES, "no"), (7, "[Errno 13] no")),
        (OSError(errno.ENOTEMPTY, "not empty"), (6, "[Errno 39] not empty")),
        (OSError(errno.EIO, "io"), (2, "[Errno 5] io")),
        (trio.TooSlowError(), (4, "context deadline exceeded")),
        (ValueError("boom"), (2, "boom")),
        (RuntimeError(), (2, "RuntimeError")),
        (ExceptionGroup("g", [ttrpc.AlreadyExists("id e1")]), (6, "id e1: already exists")),
        (ExceptionGroup("g", [ValueError("a"), ValueError("b")]), (2, "g (2 sub-exceptions)")),
    ],
)
def test_status_from_exception(exc: BaseException, expected: tuple[int, str]) -> None:
    code, message, details = status_from_exception(exc)
    assert (code, message) == expected
    assert details == ()
