"""``binary://`` stdio: a logger program receives the workload's output.

containerd's contract: the logger gets the stdout pipe's read end as fd 3, stderr's as fd 4,
and fd 5 to signal readiness (one byte, or closing it); its environment is ``CONTAINER_ID``
and ``CONTAINER_NAMESPACE`` only; the URI's query becomes its arguments (each key, then its
value). The workload gets the write ends; stdin is not connected (as with the runc shim).
The logger runs through the shim's reaper and is stopped when the stdio is closed: SIGTERM,
then SIGKILL after :data:`LOGGER_TERM_TIMEOUT`.

Adapted from :mod:`trioshim.runc.stdio` (``logger_argv``, the spawn and stop sequence); the
two should later share this class.
"""

from __future__ import annotations

import logging
import os
import signal
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

import trio

from trioshim.shim.reaper import DEVNULL, Child, Reaper
from trioshim.task.stdio import Stdio, StdioError, absolute_path, close_all

__all__ = ["LOGGER_TERM_TIMEOUT", "BinaryStdio", "logger_argv"]

log = logging.getLogger(__name__)

LOGGER_TERM_TIMEOUT: Final = 12.0


def logger_argv(uri: str) -> list[str]:
    """``binary://`` URI -> argv: the path, then each query key followed by its first value."""
    argv = [absolute_path(uri)]
    seen: set[str] = set()
    for key, value in urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query, True):
        if key not in seen:
            seen.add(key)
            argv += [key, value]
    return argv


@dataclass(eq=False)
class BinaryStdio(Stdio):
    """The workload's output goes to a logger process; :meth:`aclose` stops it."""

    logger: Child | None = field(default=None, repr=False)

    @classmethod
    async def open(
        cls, stdout_uri: str, *, reaper: Reaper, container_id: str, namespace: str
    ) -> BinaryStdio:
        argv = logger_argv(stdout_uri)
        io = cls(-1, -1, -1)
        try:
            io.stdin = io.own(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            out_r, io.stdout = (io.own(fd) for fd in os.pipe2(os.O_CLOEXEC))
            err_r, io.stderr = (io.own(fd) for fd in os.pipe2(os.O_CLOEXEC))
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            try:
                io.logger = reaper.spawn(
                    argv,
                    env={"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace},
                    stdin=DEVNULL,
                    stdout=DEVNULL,
                    stderr=DEVNULL,
                    extra_fds={3: out_r, 4: err_r, 5: ready_w},
                )
            except OSError as exc:
                os.close(ready_r)
                raise StdioError(f"start logging binary {argv[0]}: {exc.strerror}") from None
            finally:
                os.close(ready_w)
            for fd in (out_r, err_r):  # only the logger reads them
                io.close_one(fd)
            async with trio.lowlevel.FdStream(ready_r) as ready:
                await ready.receive_some(1)  # a byte, or end of file: ready either way
        except BaseException:
            close_all(io)
            if io.logger is not None:
                with trio.CancelScope(shield=True):
                    await _stop(io.logger)
            raise
        return io

    async def aclose(self) -> None:
        await super().aclose()
        if self.logger is not None:
            with trio.CancelScope(shield=True):
                await _stop(self.logger)


async def _stop(child: Child) -> None:
    if child.returncode is not None:
        return
    child.send_signal(signal.SIGTERM)
    with trio.move_on_after(LOGGER_TERM_TIMEOUT):
        await child.wait()
    if child.returncode is None:
        log.warning("logger %d did not exit after SIGTERM, killing it", child.pid)
        child.kill()
        await child.wait()
