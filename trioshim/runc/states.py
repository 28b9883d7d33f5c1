"""The state machines of init and exec processes: which operation each state allows, and the
exact error (containerd-shim-runc-v2's text and code) it refuses the others with.

A process is in exactly one state object at a time; :mod:`trioshim.runc.process` and its
subclasses check the state before an operation and move to the next one after it.

Init::

    created ------start------> running <--resume-- paused
    created(ckpt) --restore--> running ---pause---> paused
    created, created(ckpt), running, paused --exit--> stopped      (paused: also thawed)
    created, created(ckpt), stopped --delete--> deleted

Exec::

    created --start--> running --exit--> stopped --delete--> deleted
    created --start fails--> start-failed (reports "created"; Wait released with status 0)
    created, start-failed --delete--> deleted

Status strings are containerd's: ``created running paused stopped``. The kit's states
(:mod:`trioshim.task.states`) are what State reports; :class:`RuncRefusals` words the kit's
refusals with these tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar, Final

from trioshim.task.errors import (
    FailedPreconditionError,
    NotFoundError,
    TaskError,
    UnknownError,
)
from trioshim.task.states import KIT_REFUSALS, Action
from trioshim.task.states import State as KitState

if TYPE_CHECKING:
    from trioshim.task.process import Process as KitProcess


def unknown(message: str) -> UnknownError:
    """A bare-text error (code Unknown, message verbatim), like Go's ``errors.New``."""
    return UnknownError(message)


# --- state machines ---------------------------------------------------------------------------

START = "start"
DELETE = "delete"
KILL = "kill"
PAUSE = "pause"
RESUME = "resume"
UPDATE = "update"
CHECKPOINT = "checkpoint"
EXEC = "exec"
RESIZE = "resize"

Refusal = Callable[[], TaskError]


def _bare(message: str) -> Refusal:
    return lambda: unknown(message)


def _not_found(message: str) -> Refusal:
    return lambda: NotFoundError.wrapping(message)


class State:
    """One state of a process: its name, what State reports, and the refused operations."""

    name: ClassVar[str]
    status: ClassVar[str]
    #: operation -> the error it gets in this state; operations not listed are allowed
    refused: ClassVar[Mapping[str, Refusal]]
    #: an exit seen in this state moves the process to stopped (False: the exit is ignored)
    exits: ClassVar[bool] = True

    def check(self, operation: str) -> None:
        refusal = self.refused.get(operation)
        if refusal is not None:
            raise refusal()

    def allows(self, operation: str) -> bool:
        return operation not in self.refused

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class InitCreated(State):
    name = status = "created"
    refused: ClassVar[Mapping[str, Refusal]] = {
        PAUSE: _bare("cannot pause task in created state"),
        RESUME: _bare("cannot resume task in created state"),
        CHECKPOINT: _bare("cannot checkpoint a task in created state"),
    }


class InitCreatedCheckpoint(State):
    """Created from a checkpoint: ``runc restore`` runs at Start."""

    name = "created-checkpoint"
    status = "created"
    refused: ClassVar[Mapping[str, Refusal]] = {
        PAUSE: _bare("cannot pause task in created state"),
        RESUME: _bare("cannot resume task in created state"),
        CHECKPOINT: _bare("cannot checkpoint a task in created state"),
        EXEC: _bare("cannot exec in a created state"),
    }


class InitRunning(State):
    name = status = "running"
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a running process"),
        DELETE: _bare("cannot delete a running process"),
        RESUME: _bare("cannot resume a running process"),
    }


class InitPaused(State):
    name = status = "paused"
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a paused process"),
        DELETE: _bare("cannot delete a paused process"),
        PAUSE: _bare("cannot pause a paused container"),
        EXEC: _bare("cannot exec in a paused state"),
    }


class InitStopped(State):
    name = status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a stopped process"),
        PAUSE: _bare("cannot pause a stopped container"),
        RESUME: _bare("cannot resume a stopped container"),
        UPDATE: _bare("cannot update a stopped container"),
        CHECKPOINT: _bare("cannot checkpoint a stopped container"),
        EXEC: _bare("cannot exec in a stopped state"),
    }


class InitDeleted(State):
    name = "deleted"
    status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a deleted process"),
        DELETE: _not_found("cannot delete a deleted process"),
        KILL: _not_found("cannot kill a deleted process"),
        PAUSE: _bare("cannot pause a deleted process"),
        RESUME: _bare("cannot resume a deleted process"),
        UPDATE: _bare("cannot update a deleted process"),
        CHECKPOINT: _bare("cannot checkpoint a deleted process"),
        EXEC: _bare("cannot exec in a deleted state"),
    }


class ExecCreated(State):
    name = status = "created"
    refused: ClassVar[Mapping[str, Refusal]] = {
        KILL: lambda: FailedPreconditionError.wrapping("process not created"),
    }


class ExecStartFailed(State):
    """``runc exec`` failed: the exec stays "created", its Wait is released, no retry."""

    name = "start-failed"
    status = "created"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start an exec process whose start failed"),
        KILL: lambda: FailedPreconditionError.wrapping("process not created"),
    }


class ExecRunning(State):
    name = status = "running"
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a running process"),
        DELETE: _bare("cannot delete a running process"),
    }


class ExecStopped(State):
    name = status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a stopped process"),
        KILL: _not_found("process already finished"),
        RESIZE: _bare("cannot resize a stopped container"),
    }


class ExecDeleted(State):
    name = "deleted"
    status = "stopped"
    exits = False
    refused: ClassVar[Mapping[str, Refusal]] = {
        START: _bare("cannot start a deleted process"),
        DELETE: _not_found("cannot delete a deleted process"),
        KILL: _not_found("cannot kill a deleted process"),
        RESIZE: _bare("cannot resize a deleted process"),
    }


# --- the kit's refusals in these words --------------------------------------------------------

_OPERATION: Final = {
    Action.START: START,
    Action.DELETE: DELETE,
    Action.KILL: KILL,
    Action.PAUSE: PAUSE,
    Action.RESUME: RESUME,
    Action.UPDATE: UPDATE,
    Action.CHECKPOINT: CHECKPOINT,
    Action.EXEC: EXEC,
}
_INIT_STATES: Final[Mapping[KitState, State]] = {
    KitState.CREATED: InitCreatedCheckpoint(),  # the kit refuses an Exec before Start
    KitState.RUNNING: InitRunning(),
    KitState.PAUSED: InitPaused(),
    KitState.STOPPED: InitStopped(),
    KitState.DELETED: InitDeleted(),
}
_EXEC_STATES: Final[Mapping[KitState, State]] = {
    KitState.CREATED: ExecCreated(),
    KitState.RUNNING: ExecRunning(),
    KitState.PAUSED: ExecRunning(),
    KitState.STOPPED: ExecStopped(),
    KitState.DELETED: ExecDeleted(),
}


class RuncRefusals:
    """The kit's refusals (:mod:`trioshim.task.states`) as containerd's runc shim words them:
    the tables above, keyed by the kit's state; what they do not name keeps the kit's words."""

    def refuse(self, action: Action, process: KitProcess) -> TaskError:
        if action is Action.START_EXEC:
            return FailedPreconditionError.wrapping(
                f"container {process.container_id} init process is not running"
            )
        states = _INIT_STATES if process.is_init else _EXEC_STATES
        refusal = states[process.state].refused.get(_OPERATION[action])
        return refusal() if refusal is not None else KIT_REFUSALS.refuse(action, process)

    def no_container(self, container_id: str) -> TaskError:
        return NotFoundError.wrapping("container not created")

    def no_exec(self, container_id: str, exec_id: str) -> TaskError:
        return NotFoundError.wrapping(f"process does not exist {exec_id}")
