"""The copier tasks of one process's stdio in runc's shim.

:class:`Copiers` runs a process's copy jobs in one supervising task in the service's nursery
(a failing job is logged, never fatal to the shim) and tracks which outputs are *drained*:
complete and read by the client (see :mod:`trioshim.task.fifo`), which is what exit reporting
waits for. :func:`output_job` and :func:`stdin_job` are the pipe modes' jobs,
:func:`console_job` the terminal's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from trioshim.runc.stdio_fds import Descriptors
from trioshim.task.console import Console
from trioshim.task.copy import PumpEnd, pump
from trioshim.task.fifo import OUTPUT_FLUSH_TIMEOUT, wait_fifo_read

__all__ = ["Copiers", "Job", "console_job", "output_job", "stdin_job"]

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class Copiers:
    """The copy jobs of one process; :meth:`aclose` stops them and marks everything drained."""

    def __init__(self, nursery: trio.Nursery, process_id: str) -> None:
        self._nursery = nursery
        self._process_id = process_id
        self._drained: list[trio.Event] = []
        self._cancel = trio.CancelScope()
        self._done: trio.Event | None = None

    def run(self, jobs: list[tuple[str, Job]], drained: list[trio.Event]) -> None:
        """Start ``jobs`` (name, job); ``drained`` are set by the output jobs when done."""
        self._drained += drained
        if not jobs:
            return
        self._done = done = trio.Event()
        self._nursery.start_soon(self._supervise, jobs, done, name=f"stdio {self._process_id}")

    async def _supervise(self, jobs: list[tuple[str, Job]], done: trio.Event) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    for name, job in jobs:
                        nursery.start_soon(
                            self._guard, name, job, name=f"{name} {self._process_id}"
                        )
        finally:
            done.set()

    async def _guard(self, name: str, job: Job) -> None:
        try:
            await job()
        except Exception:
            log.exception("%s: copying %s failed", self._process_id, name)

    async def wait_drained(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the outputs; True if all are drained."""
        with trio.move_on_after(timeout):
            for done in self._drained:
                await done.wait()
        await trio.lowlevel.checkpoint()
        return self.drained

    @property
    def drained(self) -> bool:
        return all(done.is_set() for done in self._drained)

    async def aclose(self) -> None:
        """Cancel the jobs and wait for them (call shielded)."""
        self._cancel.cancel()
        if self._done is not None:
            await self._done.wait()
        for done in self._drained:
            done.set()


def output_job(
    fds: Descriptors,
    process_id: str,
    name: str,
    src: int,
    dst: int,
    keeper: int | None,
    done: trio.Event,
) -> Job:
    """Copy one output pipe to its destination; drained once the client read it all."""

    async def job() -> None:
        try:
            result = await pump(src, dst)
            if result.end is PumpEnd.EOF:
                fds.close(src)  # every writer is gone; nothing more will come
                if keeper is not None:
                    await wait_fifo_read(keeper, OUTPUT_FLUSH_TIMEOUT)
            else:
                log.warning("%s: error copying %s: %s", process_id, name, result.end.value)
        finally:
            fds.close(dst)
            if keeper is not None:
                fds.close(keeper)
            done.set()

    return job


def stdin_job(fds: Descriptors, src: int, dst: int) -> Job:
    """Copy the stdin FIFO into the container's stdin pipe; end of file closes the pipe."""

    async def job() -> None:
        try:
            await pump(src, dst)
        finally:
            fds.close(dst)  # the container sees end of file
            fds.close(src)

    return job


def console_job(
    fds: Descriptors,
    process_id: str,
    console: Console,
    stdin: int | None,
    output: int,
    keeper: int | None,
    extra: list[int],
) -> tuple[Job, trio.Event]:
    """Copy between the console and ``stdin``/``output``; the event is set once the output
    is drained (``output``, its FIFO ``keeper`` and ``extra`` closed then)."""
    done = trio.Event()

    def close_output() -> None:
        if done.is_set():
            return  # closed already (a descriptor number may have been reused since)
        for fd in (output, keeper, *extra):
            if fd is not None:
                fds.close(fd)
        done.set()

    async def output_done(end: PumpEnd) -> None:
        # The console was shut down (exit, stdin's end) and drained, or the output broke:
        # the output is complete once the client has read it (the exit waits for this).
        try:
            if end is PumpEnd.BROKEN:
                log.warning("%s: error copying console output: broken", process_id)
            elif keeper is not None:
                await wait_fifo_read(keeper, OUTPUT_FLUSH_TIMEOUT)
        finally:
            close_output()

    async def job() -> None:
        try:
            await console.copy(stdin=stdin, output=output, output_done=output_done)
        finally:
            close_output()  # if copy() failed before its output side ended
            if stdin is not None:
                fds.close(stdin)

    return job, done
