"""Noticing that containerd abandoned the daemon it just started.

``start`` returns the address before containerd has finished with the bundle: containerd then
writes ``shim-binary-path`` into it and only then sends its first request. When that write
fails (a full state filesystem: measured on 1.6, 1.7 and 2.1), containerd removes the bundle
and never calls Shutdown: nobody will ever talk to the daemon again. The same holds when
containerd dies in between and does not come back in time.

Until the first request arrives (any RPC: containerd owns the daemon from then on, and the
Shutdown RPC ends it as usual) the daemon is *unclaimed*, and it shuts itself down when

- its bundle directory is removed or replaced (checked every ``interval`` seconds), or
- no request came within ``within`` seconds of serving.

Once claimed it never exits because of this: a daemon containerd has talked to (and so every
daemon with tasks) survives containerd being restarted, and a grouped daemon outlives the
bundle of the container it was started for.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

import trio

from trioshim.shim.shutdown import ShutdownService
from trioshim.ttrpc.errors import Unavailable
from trioshim.ttrpc.server import Handler, RequestContext

__all__ = ["ABANDON_TIMEOUT", "BUNDLE_CHECK_INTERVAL", "Claim", "watch_abandonment"]

ABANDON_TIMEOUT: Final = 60.0
BUNDLE_CHECK_INTERVAL: Final = 1.0


class Claim:
    """Who got there first: the first request any registered service receives (the daemon is
    *claimed*), or the watcher's decision that containerd abandoned it (*abandoned*). Both are
    taken without a checkpoint in between, so exactly one of them wins: a request read while
    the daemon is being given up is refused instead of being served by a daemon on its way
    out."""

    def __init__(self) -> None:
        self.claimed = trio.Event()
        self.abandoned = False

    async def intercept(self, ctx: RequestContext, request: Any, handler: Handler) -> Any:
        """The server's :data:`~trioshim.ttrpc.server.Interceptor`: every request claims the
        daemon before its handler runs (or, once the daemon is abandoned, answers
        Unavailable). One per server, whatever it serves: nothing is wrapped per rpc."""
        self.claim()
        return await handler(ctx, request)

    def claim(self) -> None:
        if self.abandoned:
            raise Unavailable("shim is shutting down: abandoned before its first request")
        self.claimed.set()

    def abandon(self) -> bool:
        """Give the daemon up unless a request claimed it first; whether it was given up."""
        if self.claimed.is_set():
            return False
        self.abandoned = True
        return True


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _open_directory(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _still_there(path: str, fd: int) -> bool:
    """Whether ``path`` is still the directory ``fd`` was opened on. Holding ``fd`` keeps its
    inode alive, so a new directory at the same path cannot reuse the inode number."""
    try:
        return _identity(os.stat(path)) == _identity(os.fstat(fd))
    except OSError:
        return False


async def watch_abandonment(
    bundle: str,
    claim: Claim,
    shutdown: ShutdownService,
    log: logging.Logger,
    *,
    within: float = ABANDON_TIMEOUT,
    interval: float = BUNDLE_CHECK_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Request shutdown if the daemon stays unclaimed (see the module); returns once claimed
    or once shutdown is requested. A bundle already gone when this starts counts as removed."""
    fd = _open_directory(bundle)
    try:
        task_status.started()
        reason = ""
        with trio.move_on_after(within):
            while not reason:
                with trio.move_on_after(interval):
                    await claim.claimed.wait()
                    return
                if fd is None or not _still_there(bundle, fd):
                    reason = "abandoned: bundle removed before any request"
    finally:
        if fd is not None:
            os.close(fd)
    if not claim.abandon():
        return
    reason = reason or f"abandoned: no request within {within:g}s of start"
    log.warning("containerd abandoned this daemon", extra={"fields": {"reason": reason}})
    shutdown.shutdown(reason)
