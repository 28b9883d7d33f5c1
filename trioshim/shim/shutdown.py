"""The shutdown service (plugin ``io.containerd.internal.v1.shutdown``).

A plugin registers clean-up callbacks; anything (the Shutdown RPC with no task left, SIGTERM,
a fatal error) calls :meth:`ShutdownService.shutdown`. ``shutdown()`` only *requests*: the
daemon's root task sees :attr:`requested`, runs the fixed shutdown sequence, and calls
:meth:`run_callbacks` at its step. Callbacks run one after the other in registration order,
each bounded by the caller's cancel scope; an exception in one is recorded (``errors``) and
logged, and the next still runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

__all__ = ["ShutdownService"]

Callback = Callable[[], Awaitable[object]]


class ShutdownService:
    def __init__(self, log: logging.Logger | None = None) -> None:
        self._callbacks: list[Callback] = []
        self._requested = trio.Event()
        self._done = trio.Event()
        self.reason: str = ""
        self.errors: list[BaseException] = []
        self._log = log or logging.getLogger("trioshim.shim")

    def register_callback(self, fn: Callback) -> None:
        """Add ``async fn()`` to run at shutdown (after the publisher has drained)."""
        self._callbacks.append(fn)

    def shutdown(self, reason: str = "requested") -> None:
        """Request shutdown (idempotent, never blocks; safe from any task)."""
        if not self._requested.is_set():
            self.reason = reason
            self._requested.set()

    @property
    def is_shutdown(self) -> bool:
        return self._requested.is_set()

    @property
    def requested(self) -> trio.Event:
        return self._requested

    async def wait(self) -> None:
        """Until shutdown is requested."""
        await self._requested.wait()

    async def wait_done(self) -> None:
        """Until the callbacks have run."""
        await self._done.wait()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def run_callbacks(self) -> None:
        """Run every callback once (the daemon calls this; later calls do nothing)."""
        if self._done.is_set():
            return
        callbacks, self._callbacks = self._callbacks, []
        try:
            for fn in callbacks:
                try:
                    await fn()
                except Exception as exc:
                    self.errors.append(exc)
                    self._log.error("shutdown callback failed: %s", exc, exc_info=exc)
        finally:
            self._done.set()
