"""The containerd a shared process belongs to, and how the process learns it has gone.

containerd execs every start helper, so the containerd of a helper is its parent. The shared
process is forked by the first start's helper and watches that helper's parent; when it has
gone (the process's containerd stopped or crashed) and no daemon is left, the process ends at
once rather than idling (:mod:`trioshim.shim.shared`). Where the kernel has pidfds the watch is
one readable descriptor (no pid-reuse race); elsewhere the pid is polled: gone once it is a
zombie, gone, or names a process started at another time.

A containerd restarted at the same address reconnects to the daemons through their sockets and
sends its starts to the same control socket (its key is the address): the first start of the
new containerd makes the process its own (:meth:`Containerd.parent_of` that helper), so the
process then ends with the new one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import trio

from trioshim.shim.procstat import parent_pid, running_since

__all__ = ["POLL_INTERVAL", "Containerd"]

# Without a pidfd the process looks at its containerd this often (it must be gone within a
# second of containerd, its files too).
POLL_INTERVAL = 0.25


@dataclass
class Containerd:
    """One containerd process (``pid`` 0: none, gone already), watched through ``pidfd`` or,
    without one, by its ``start_time`` (clock ticks after boot, ``/proc/PID/stat`` field 22)."""

    pid: int
    pidfd: int | None = None
    start_time: int | None = None

    @classmethod
    def parent_of(cls, pid: int) -> Containerd:
        """The parent of the live process ``pid`` (a helper containerd ran, connected to us or
        ourselves); gone already when the helper was reparented (its containerd died)."""
        parent = parent_pid(pid)
        if parent is None or parent <= 1:
            return cls(0)
        containerd = cls.of(parent)
        if parent_pid(pid) != parent:
            # Reparented meanwhile: the pid we opened may name another process by now.
            containerd.close()
            return cls(0)
        return containerd

    @classmethod
    def of(cls, pid: int) -> Containerd:
        """The process ``pid``, watched from now on (gone already if it is)."""
        start = running_since(pid)
        pidfd = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfds here, or gone already
            pidfd = os.pidfd_open(pid)
        return cls(pid, pidfd, start)

    def gone(self) -> bool:
        """Whether it has exited, as far as polling tells (a pidfd says so sooner)."""
        if self.pid <= 0 or self.start_time is None:
            return True
        return running_since(self.pid) != self.start_time

    async def wait_gone(self) -> None:
        """Return once this containerd has exited."""
        if self.pidfd is not None:
            await trio.lowlevel.wait_readable(self.pidfd)
            return
        # Without a pidfd nothing wakes us when it exits: look again and again.
        while True:
            if self.gone():
                return
            await trio.sleep(POLL_INTERVAL)

    def close(self) -> None:
        """Let go of the pidfd (nobody may be waiting on it)."""
        _close(self.pidfd)
        self.pidfd = None


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
