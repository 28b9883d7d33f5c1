"""``binary://`` stdio: a logger program receives the workload's output.

containerd's contract: the logger gets the stdout pipe's read end as fd 3, stderr's as fd 4,
and fd 5 to signal readiness (one byte, or closing it); its environment is ``CONTAINER_ID``
and ``CONTAINER_NAMESPACE`` only; the URI's query becomes its arguments (each key, then its
value). The workload gets the write ends; stdin is not connected (as with the runc shim).
The logger runs through the shim's reaper and is stopped when the stdio is closed: SIGTERM,
then SIGKILL after :data:`LOGGER_TERM_TIMEOUT`.

:func:`logger_argv`, :func:`start_logger` and :func:`stop_logger` are the whole contract;
runc's shim (:mod:`trioshim.runc.stdio`) uses them too, with runc's own pipes.
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
from trioshim.task.copy import errno_text
from trioshim.task.stdio import Stdio, StdioError, absolute_path, close_all

__all__ = ["LOGGER_TERM_TIMEOUT", "BinaryStdio", "logger_argv", "start_logger", "stop_logger"]

log = logging.getLogger(__name__)

LOGGER_TERM_TIMEOUT: Final = 12.0
"""How long a logger gets between SIGTERM and SIGKILL."""


def logger_argv(uri: str) -> list[str]:
    """``binary://`` URI -> argv: the path, then each query key followed by its first value
    (keys in URI order; Go uses map order)."""
    parts = urllib.parse.urlsplit(uri)
    argv = [urllib.parse.unquote(parts.path)]
    seen: set[str] = set()
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key not in seen:
            seen.add(key)
            argv += [key, value]
    return argv


async def start_logger(
    reaper: Reaper, argv: list[str], *, container_id: str, namespace: str, stdout: int, stderr: int
) -> Child:
    """Spawn the logger with ``stdout``/``stderr`` (pipe read ends, still the caller's) as its
    fds 3 and 4, and wait until it is ready. :class:`StdioError` with containerd's texts."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            child = reaper.spawn(
                argv,
                env={"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace},
                stdin=DEVNULL,
                stdout=DEVNULL,
                stderr=DEVNULL,
                extra_fds={3: stdout, 4: stderr, 5: ready_w},
            )
        except OSError as exc:
            raise StdioError(
                f"failed to start binary process: fork/exec {argv[0]}: {errno_text(exc)}"
            ) from None
        finally:
            os.close(ready_w)
        try:
            os.set_blocking(ready_r, False)
            while True:
                try:
                    os.read(ready_r, 1)  # a byte, or end of file: ready either way
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(ready_r)
                    continue
                except OSError as exc:
                    raise StdioError(
                        f"failed to read from logging binary: {errno_text(exc)}"
                    ) from None
                return child
        except BaseException:
            with trio.CancelScope(shield=True):
                await stop_logger(child)
            raise
    finally:
        os.close(ready_r)


async def stop_logger(child: Child) -> None:
    """SIGTERM, up to :data:`LOGGER_TERM_TIMEOUT`, then SIGKILL (the reaper reaps it)."""
    if child.returncode is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        with trio.move_on_after(LOGGER_TERM_TIMEOUT):
            await child.wait()
    finally:
        if child.returncode is None:
            log.warning("logger %d did not exit after SIGTERM, killing it", child.pid)
            child.kill()


@dataclass(eq=False)
class BinaryStdio(Stdio):
    """The workload's output goes to a logger process; :meth:`aclose` stops it."""

    logger: Child | None = field(default=None, repr=False)

    @classmethod
    async def open(
        cls, stdout_uri: str, *, reaper: Reaper, container_id: str, namespace: str
    ) -> BinaryStdio:
        absolute_path(stdout_uri)  # InvalidArgument before anything is started
        argv = logger_argv(stdout_uri)
        io = cls(-1, -1, -1)
        try:
            io.stdin = io.own(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            out_r, io.stdout = (io.own(fd) for fd in os.pipe2(os.O_CLOEXEC))
            err_r, io.stderr = (io.own(fd) for fd in os.pipe2(os.O_CLOEXEC))
            io.logger = await start_logger(
                reaper,
                argv,
                container_id=container_id,
                namespace=namespace,
                stdout=out_r,
                stderr=err_r,
            )
            for fd in (out_r, err_r):  # only the logger reads them
                io.close_one(fd)
        except BaseException:
            close_all(io)
            raise
        return io

    async def aclose(self) -> None:
        await super().aclose()
        if self.logger is not None:
            with trio.CancelScope(shield=True):
                await stop_logger(self.logger)
