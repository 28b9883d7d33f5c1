"""Forking a long-lived shim process from a start helper (no exec: the imports are paid).

Both the per-container daemon (:mod:`trioshim.shim.main`) and shared mode's process
(:mod:`trioshim.shim.sharedclient`) are made this way: ``gc.freeze()`` first, so what the
imports built stays shared copy-on-write and untouched by the child's collector; the child
gets its own process group, stdio on ``/dev/null`` (containerd waits for EOF on the helper's
output), the argv ps should show (rewritten in place: :mod:`trioshim.shim.cmdline`) and a
working directory, then runs ``body`` and ``os._exit``\\s with its status.
:func:`become_process` does the child's part in the calling process, without a fork: a fork
server's worker, a fresh process already, gives ``run`` a :class:`DeferredDaemon` and becomes
the daemon itself once it has reported.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from trioshim.shim.cmdline import set_cmdline

__all__ = [
    "DeferredDaemon",
    "Fork",
    "become_process",
    "close_in_next_child",
    "detach_stdio",
    "fork_process",
]

Fork = Callable[[Sequence[str], str, Callable[[], int]], int]
"""How a long-lived process is made: ``(argv, cwd, body) -> pid`` (:func:`fork_process`)."""


def fork_process(
    argv: Sequence[str],
    cwd: str,
    body: Callable[[], int],
    *,
    close_fds: Sequence[int] = (),
) -> int:
    """Fork; returns the child's pid. The child closes ``close_fds`` (the parent's, e.g. a
    lock), never returns into the caller and exits with ``body()``'s status."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    gc.disable()
    gc.freeze()
    try:
        pid = os.fork()
    except BaseException:
        gc.enable()
        raise
    if pid != 0:
        gc.enable()
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        return pid
    become_process(argv, cwd, body, close_fds=close_fds)


def become_process(
    argv: Sequence[str],
    cwd: str,
    body: Callable[[], int],
    *,
    close_fds: Sequence[int] = (),
) -> NoReturn:
    """Turn this process into the long-lived one (what :func:`fork_process`'s child does):
    never returns, exits with ``body()``'s status."""
    gc.freeze()  # what was built so far stays out of the collector's walks, as after a fork
    status = 1
    try:
        for fd in close_fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        sys.argv = list(argv)
        set_cmdline(sys.argv, exact=True)
        detach_stdio()
        # containerd may already have removed the bundle (it abandoned us): serve anyway,
        # the abandonment watch then shuts down cleanly, removing the socket.
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        gc.enable()
        status = body()
    finally:
        os._exit(status)


def detach_stdio() -> None:
    """Replace stdin, stdout and stderr with ``/dev/null`` (containerd reads the helper's
    output to its end: nothing that outlives the helper may keep it open)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def close_in_next_child(fd: int) -> list[int]:
    """Close ``fd`` in the child of the next fork only. At-fork hooks are inherited by every
    later fork, and in the grandchildren the number is in use again (the reaper's exec pipes,
    say): closing it there would break them. Returns the pending list: clear it to cancel."""
    pending = [fd]

    def close_once() -> None:
        if pending:
            with contextlib.suppress(OSError):
                os.close(pending.pop())

    os.register_at_fork(after_in_child=close_once)
    return pending


class DeferredDaemon:
    """A :data:`Fork` that forks nothing: it records the daemon and answers with this
    process's own pid; :meth:`become` later turns this process into it (a fork server's
    worker, once the helper has its status)."""

    def __init__(self) -> None:
        self.pending: tuple[Sequence[str], str, Callable[[], int]] | None = None

    def __call__(self, argv: Sequence[str], cwd: str, body: Callable[[], int]) -> int:
        self.pending = (argv, cwd, body)
        return os.getpid()

    def become(self) -> NoReturn:
        assert self.pending is not None
        become_process(*self.pending)
