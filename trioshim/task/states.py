"""A process's states, the operations they may refuse, and how a refusal reads.

Which operations a state allows is the kit's rule (:mod:`trioshim.task.process`); how the
refusal is worded, and with which code, may differ per backend: containerd's runc shim answers
a second Start with the bare text ``cannot start a running process`` (code Unknown), where the
kit's default is FailedPrecondition naming the process. A backend with an attribute
``refusals`` (:class:`HasRefusals`) words them itself; the others get :data:`KIT_REFUSALS`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from trioshim.task.errors import FailedPreconditionError, NotFoundError, TaskError

if TYPE_CHECKING:
    from trioshim.task.process import Process

__all__ = ["KIT_REFUSALS", "Action", "HasRefusals", "KitRefusals", "Refusals", "State"]


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


class Action(enum.Enum):
    """An operation on one process that its state may refuse."""

    START = "start"
    DELETE = "delete"
    KILL = "kill"
    PAUSE = "pause"
    RESUME = "resume"
    UPDATE = "update"
    CHECKPOINT = "checkpoint"
    EXEC = "exec in"
    """Exec (on the container's init)."""
    START_EXEC = "start an exec in"
    """Start of an exec (on the container's init)."""


class Refusals(Protocol):
    def refuse(self, action: Action, process: Process) -> TaskError:
        """The error for ``action`` on ``process``, whose current state forbids it."""

    def no_container(self, container_id: str) -> TaskError:
        """The error for a request naming a container that is not there."""

    def no_exec(self, container_id: str, exec_id: str) -> TaskError:
        """The error for a request naming an exec the container does not have."""


@runtime_checkable
class HasRefusals(Protocol):
    """A backend that words its refusals itself."""

    @property
    def refusals(self) -> Refusals: ...


class KitRefusals:
    """The kit's words: NotFound for a deleted process, or a stopped one asked to Kill (what
    every containerd shim answers), otherwise FailedPrecondition naming process and state."""

    def refuse(self, action: Action, process: Process) -> TaskError:
        if process.state is State.DELETED:
            return NotFoundError(f"process {process.name} does not exist")
        if action is Action.KILL and process.state is State.STOPPED:
            return NotFoundError.wrapping("process already finished")
        return FailedPreconditionError(
            f"cannot {action.value} a {process.state.value} process {process.name}"
        )

    def no_container(self, container_id: str) -> TaskError:
        return NotFoundError(f"container {container_id} not created")

    def no_exec(self, container_id: str, exec_id: str) -> TaskError:
        return NotFoundError(f"exec {exec_id} does not exist in container {container_id}")


KIT_REFUSALS: Final[Refusals] = KitRefusals()
