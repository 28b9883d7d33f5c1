"""What the reaper hands out: the :class:`Child` handle of a spawned process, the :class:`Exit`
of a reaped one, and :meth:`Reaper.run`'s :class:`Completed` result."""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from dataclasses import dataclass, field

import trio

__all__ = ["Child", "Completed", "Exit", "ProcessFailed", "decode_status"]


@dataclass(frozen=True, slots=True)
class Exit:
    """One reaped process: ``status`` is the exit code, or 128 + signal if it was killed."""

    pid: int
    status: int
    exited_at_ns: int  # wall clock (time.time_ns()) when the status was collected


@dataclass(frozen=True, slots=True)
class Completed:
    """The result of :meth:`Reaper.run`. Output not captured (not ``PIPE``) is ``b""``."""

    argv: tuple[str, ...]
    pid: int
    status: int
    stdout: bytes
    stderr: bytes
    exited_at_ns: int

    def check(self) -> Completed:
        """Return self if the status is 0, else raise :class:`ProcessFailed`."""
        if self.status != 0:
            raise ProcessFailed(self)
        return self


class ProcessFailed(Exception):
    """A :meth:`Reaper.run` child exited non-zero (raised by :meth:`Completed.check`)."""

    def __init__(self, completed: Completed) -> None:
        self.completed = completed
        detail = (completed.stderr or completed.stdout).decode(errors="replace").strip()
        text = f"{completed.argv[0] if completed.argv else '?'}: exit status {completed.status}"
        super().__init__(f"{text}: {detail}" if detail else text)


def decode_status(code: int, status: int) -> int:
    if code == os.CLD_EXITED:
        return status
    return 128 + status  # CLD_KILLED / CLD_DUMPED: si_status is the signal number


# ---------------------------------------------------------------------------------------------
# child handle


@dataclass(eq=False)
class Child:
    """A process spawned by :meth:`Reaper.spawn`."""

    pid: int
    argv: tuple[str, ...]
    stdin: trio.lowlevel.FdStream | None = None
    stdout: trio.lowlevel.FdStream | None = None
    stderr: trio.lowlevel.FdStream | None = None
    _exit: Exit | None = field(default=None, repr=False)
    _done: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def returncode(self) -> int | None:
        """The status once reaped (code or 128 + signal), else ``None``."""
        return None if self._exit is None else self._exit.status

    @property
    def exit(self) -> Exit | None:
        """The :class:`Exit` once reaped (with its time), else ``None``."""
        return self._exit

    async def wait(self) -> int:
        """Wait for the exit and return its status; any number of callers may wait.

        Cancelling a waiter does not touch the process (see :meth:`Reaper.run` for
        kill-on-cancel).
        """
        await self._done.wait()
        assert self._exit is not None
        return self._exit.status

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has been reaped (so a reused pid is never hit)."""
        if self._exit is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _set_exit(self, exit_: Exit) -> None:
        self._exit = exit_
        self._done.set()
