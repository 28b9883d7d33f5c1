"""The task kit's domain errors: what went wrong, in containerd's terms, without ttrpc.

Backends and the kit raise these; :func:`to_ttrpc` turns one into the ttrpc status containerd
expects, once, at the service boundary (:mod:`trioshim.task.boundary`). Nothing below the
boundary imports ttrpc's status classes.
"""

from __future__ import annotations

from typing import ClassVar

from trioshim.ttrpc.errors import Code, TTRPCError

__all__ = [
    "AlreadyExistsError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "TaskError",
    "UnimplementedError",
    "to_ttrpc",
]


class TaskError(Exception):
    """A request refused for a reason containerd has a code for."""

    code: ClassVar[Code] = Code.UNKNOWN


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


class UnimplementedError(TaskError):
    """The backend has no such operation; the message names the RPC."""

    code = Code.UNIMPLEMENTED


def to_ttrpc(exc: TaskError) -> TTRPCError:
    """The ttrpc status reply for ``exc`` (the boundary's only conversion)."""
    return TTRPCError(exc.code, str(exc))
