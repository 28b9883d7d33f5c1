"""One process as the kit tracks it: its state machine, its exit, and its Wait.

States::

    CREATED --start--> RUNNING --exit--> STOPPED --delete--> DELETED
       |                 ^  |
       |            resume  pause
       |                 |  v
       |                PAUSED --exit--> STOPPED
       +--exit (killed before start)--> STOPPED
       +--delete------------------------------------------> DELETED

Each transition checks its starting state and raises the refusal for it otherwise
(:mod:`trioshim.task.states`: FailedPrecondition, or the backend's own words), so the order
of the backend's calls is the kit's guarantee, not the backend's burden. The exit is
recorded once (:meth:`Process.exited`); :meth:`Process.wait` releases every waiter, before or
after Start, exactly when the exit is recorded (after its TaskExit is queued).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import trio

from trioshim.task.errors import FailedPreconditionError, NotFoundError
from trioshim.task.instance import Exit, Instance
from trioshim.task.states import KIT_REFUSALS, Action, Refusals, State
from trioshim.task.stdio import StdioSpec

__all__ = ["NEVER_RAN", "Action", "Process", "State"]

NEVER_RAN: Final = Exit(0, exited_at_ns=None)
"""What Wait answers for an exec whose Start failed."""


@dataclass(eq=False)
class Process:
    container_id: str
    exec_id: str
    """``""`` for the container's init."""
    instance: Instance
    stdio: StdioSpec
    state: State = State.CREATED
    pid: int = 0
    exit: Exit | None = None
    watched: bool = False
    pausing: bool = False
    """A Pause of it is in progress (State says PAUSING meanwhile, as containerd's runc shim)."""
    """The kit waits for its exit (started, or killed before Start)."""
    refusals: Refusals = KIT_REFUSALS
    _exited: trio.Event = field(default_factory=trio.Event, repr=False)
    _never_ran: bool = field(default=False, repr=False)

    @property
    def is_init(self) -> bool:
        return not self.exec_id

    @property
    def name(self) -> str:
        return f"{self.container_id}/{self.exec_id}" if self.exec_id else self.container_id

    def _require(self, action: Action, *allowed: State) -> None:
        if self.state not in allowed:
            raise self.refusals.refuse(action, self)

    def check_start(self) -> None:
        self._require(Action.START, State.CREATED)
        if self.watched:
            raise FailedPreconditionError(f"process {self.name} was killed before it started")

    def check_exec(self) -> None:
        """An exec may be added to a created or running init (it starts only once the init
        runs), not to a paused one, as with containerd's runc shim."""
        self._require(Action.EXEC, State.CREATED, State.RUNNING)

    def start_failed(self) -> None:
        """An exec whose Start failed never runs: its Wait returns at once, with status 0 and
        no exit time (containerd's runc shim's answer); it stays created until Delete."""
        self._never_ran = True
        self._exited.set()

    def started(self, pid: int) -> None:
        self.check_start()
        self.state, self.pid, self.watched = State.RUNNING, pid, True

    def check_kill(self) -> None:
        self._require(Action.KILL, State.CREATED, State.RUNNING, State.PAUSED)

    def check_pause(self) -> None:
        self._require(Action.PAUSE, State.RUNNING)

    def paused(self) -> None:
        self._require(Action.PAUSE, State.RUNNING)
        self.state = State.PAUSED

    def check_resume(self) -> None:
        self._require(Action.RESUME, State.PAUSED)

    def resumed(self) -> None:
        self._require(Action.RESUME, State.PAUSED)
        self.state = State.RUNNING

    def check_running(self, action: Action) -> None:
        self._require(action, State.RUNNING, State.PAUSED)

    def check_update(self) -> None:
        """Resources may change before Start too (containerd's runc shim allows it)."""
        self._require(Action.UPDATE, State.CREATED, State.RUNNING, State.PAUSED)

    def check_checkpoint(self) -> None:
        self._require(Action.CHECKPOINT, State.RUNNING, State.PAUSED)

    def exited(self, exit: Exit) -> None:
        """Record the exit (once) and release every waiter."""
        if self.exit is not None:
            raise FailedPreconditionError(f"process {self.name} exited twice")
        self.exit = exit
        if self.state is not State.DELETED:
            self.state = State.STOPPED
        self._exited.set()

    def check_delete(self) -> None:
        self._require(Action.DELETE, State.CREATED, State.STOPPED)
        if self.state is State.CREATED and self.watched:
            raise FailedPreconditionError(f"process {self.name} is exiting")

    def deleted(self) -> None:
        self.state = State.DELETED
        self._exited.set()  # waiters of a process deleted unstarted are answered NotFound

    async def wait(self) -> Exit:
        """Until the exit is recorded; NotFound if the process was deleted without one."""
        if self.state is State.DELETED and self.exit is None:
            raise NotFoundError(f"process {self.name} does not exist")
        await self._exited.wait()
        if self.exit is None and self._never_ran:
            return NEVER_RAN
        if self.exit is None:
            raise NotFoundError(f"process {self.name} was deleted before it exited")
        return self.exit
