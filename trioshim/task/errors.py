"""The task kit's domain errors: what went wrong, in containerd's terms, without ttrpc.

Backends and the kit raise these; :func:`to_ttrpc` turns one into the ttrpc status containerd
expects, once, at the service boundary (:mod:`trioshim.task.boundary`). Nothing below the
boundary imports ttrpc's status classes.
"""

from __future__ import annotations

from typing import ClassVar, Self

from trioshim.ttrpc.errors import Code, TTRPCError

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "TaskError",
    "UnimplementedError",
    "UnknownError",
    "to_ttrpc",
]


class TaskError(Exception):
    """A request refused for a reason containerd has a code for."""

    code: ClassVar[Code] = Code.UNKNOWN

    @classmethod
    def wrapping(cls, message: str) -> Self:
        """``<message>: <containerd's text for the code>`` (``process already finished: not
        found``): what Go's ``fmt.Errorf("...: %w", errdefs.ErrNotFound)`` prints, the form
        containerd's own shims send."""
        text = type(TTRPCError.from_status(cls.code, "")).class_text
        if not text or message == text or message.endswith(": " + text):
            return cls(message)
        return cls(f"{message}: {text}" if message else text)


class UnknownError(TaskError):
    """A failure with no better code (a runtime's own error, verbatim)."""


class NotFoundError(TaskError):
    """No such container, exec, or process (already finished, already deleted)."""

    code = Code.NOT_FOUND


class AlreadyExistsError(TaskError):
    """A container or exec id that is in use."""

    code = Code.ALREADY_EXISTS


class FailedPreconditionError(TaskError):
    """The process is not in a state that allows the request (start twice, delete running)."""

    code = Code.FAILED_PRECONDITION


class InvalidArgumentError(TaskError):
    """A request containerd would never send, or one this backend cannot take as given."""

    code = Code.INVALID_ARGUMENT


class DeadlineExceededError(TaskError):
    """Something the request waits for did not happen in time (a FIFO reader, a pty)."""

    code = Code.DEADLINE_EXCEEDED


class UnimplementedError(TaskError):
    """The backend has no such operation; the message names the RPC."""

    code = Code.UNIMPLEMENTED


def to_ttrpc(exc: TaskError) -> TTRPCError:
    """The ttrpc status reply for ``exc`` (the boundary's only conversion)."""
    return TTRPCError.from_status(exc.code, str(exc))
