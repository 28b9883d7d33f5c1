"""containerd's runc shim's words for the refusals of the task kit's states.

Which operation each state allows is the kit's rule (:mod:`trioshim.task.process`); runc's
shim answers the refusals as containerd-shim-runc-v2 does: bare texts (code Unknown, like Go's
``errors.New``), NotFound for a deleted process, the lookups' ``container not created: not
found`` and ``process does not exist <id>: not found``. What an instance refuses itself (an
exec into a container being restored, a second Start of an exec whose ``runc exec`` failed, a
Kill of an exec that never ran, resizing one that exited) is in the process modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from trioshim.task.errors import FailedPreconditionError, NotFoundError, TaskError, UnknownError
from trioshim.task.states import KIT_REFUSALS, Action
from trioshim.task.states import State as KitState

if TYPE_CHECKING:
    from trioshim.task.process import Process as KitProcess

__all__ = ["RuncRefusals", "unknown"]


def unknown(message: str) -> UnknownError:
    """A bare-text error (code Unknown, message verbatim), like Go's ``errors.New``."""
    return UnknownError(message)


Refusal = Callable[[], TaskError]


def _bare(message: str) -> Refusal:
    return lambda: unknown(message)


def _not_found(message: str) -> Refusal:
    return lambda: NotFoundError.wrapping(message)


_DELETED: Final[Mapping[Action, Refusal]] = {
    Action.START: _bare("cannot start a deleted process"),
    Action.DELETE: _not_found("cannot delete a deleted process"),
    Action.KILL: _not_found("cannot kill a deleted process"),
}

INIT: Final[Mapping[KitState, Mapping[Action, Refusal]]] = {
    KitState.CREATED: {
        Action.PAUSE: _bare("cannot pause task in created state"),
        Action.RESUME: _bare("cannot resume task in created state"),
        Action.CHECKPOINT: _bare("cannot checkpoint a task in created state"),
    },
    KitState.RUNNING: {
        Action.START: _bare("cannot start a running process"),
        Action.DELETE: _bare("cannot delete a running process"),
        Action.RESUME: _bare("cannot resume a running process"),
    },
    KitState.PAUSED: {
        Action.START: _bare("cannot start a paused process"),
        Action.DELETE: _bare("cannot delete a paused process"),
        Action.PAUSE: _bare("cannot pause a paused container"),
        Action.EXEC: _bare("cannot exec in a paused state"),
    },
    KitState.STOPPED: {
        Action.START: _bare("cannot start a stopped process"),
        Action.PAUSE: _bare("cannot pause a stopped container"),
        Action.RESUME: _bare("cannot resume a stopped container"),
        Action.UPDATE: _bare("cannot update a stopped container"),
        Action.CHECKPOINT: _bare("cannot checkpoint a stopped container"),
        Action.EXEC: _bare("cannot exec in a stopped state"),
    },
    KitState.DELETED: {
        **_DELETED,
        Action.PAUSE: _bare("cannot pause a deleted process"),
        Action.RESUME: _bare("cannot resume a deleted process"),
        Action.UPDATE: _bare("cannot update a deleted process"),
        Action.CHECKPOINT: _bare("cannot checkpoint a deleted process"),
        Action.EXEC: _bare("cannot exec in a deleted state"),
    },
}
"""The init's refusals per kit state (containerd-shim-runc-v2 v1.6's texts)."""

_EXEC_RUNNING: Final[Mapping[Action, Refusal]] = {
    Action.START: _bare("cannot start a running process"),
    Action.DELETE: _bare("cannot delete a running process"),
}

EXEC: Final[Mapping[KitState, Mapping[Action, Refusal]]] = {
    KitState.CREATED: {},
    KitState.RUNNING: _EXEC_RUNNING,
    KitState.PAUSED: _EXEC_RUNNING,
    KitState.STOPPED: {
        Action.START: _bare("cannot start a stopped process"),
        Action.KILL: _not_found("process already finished"),
    },
    KitState.DELETED: _DELETED,
}
"""An exec's refusals per kit state."""


class RuncRefusals:
    """The kit's refusals (:mod:`trioshim.task.states`) in the words of :data:`INIT` and
    :data:`EXEC`; what they do not name keeps the kit's words."""

    def refuse(self, action: Action, process: KitProcess) -> TaskError:
        if action is Action.START_EXEC:
            return FailedPreconditionError.wrapping(
                f"container {process.container_id} init process is not running"
            )
        table = INIT if process.is_init else EXEC
        refusal = table[process.state].get(action)
        return refusal() if refusal is not None else KIT_REFUSALS.refuse(action, process)

    def no_container(self, container_id: str) -> TaskError:
        return NotFoundError.wrapping("container not created")

    def no_exec(self, container_id: str, exec_id: str) -> TaskError:
        return NotFoundError.wrapping(f"process does not exist {exec_id}")
