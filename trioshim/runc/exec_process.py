"""An exec: an additional process run in a container with ``runc exec --detach``."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from trioshim.runc import runc_errors
from trioshim.runc.init_process import InitProcess
from trioshim.runc.process import (
    DELETE_DRAIN_TIMEOUT,
    IOOpener,
    Process,
    read_pid_file,
    runc_stdio,
)
from trioshim.runc.runc_errors import RuncError
from trioshim.runc.states import unknown
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.task.errors import (
    FailedPreconditionError,
    NotFoundError,
)


class ExecProcess(Process):
    """An additional process run in a container with ``runc exec --detach``."""

    def __init__(
        self,
        exec_id: str,
        init: InitProcess,
        spec: dict[str, Any],
        stdio: StdioConfig,
    ) -> None:
        super().__init__(exec_id, init.id, stdio)
        self.init = init
        self.spec = dict(spec)
        self.spec["terminal"] = stdio.terminal
        self.start_failed = False

    @property
    def pid_file(self) -> str:
        return os.path.join(self.init.bundle, f"{self.id}.pid")

    async def start(self, open_io: IOOpener) -> None:
        async with self.lock:
            if self.start_failed:
                raise unknown("cannot start an exec process whose start failed")
            self.io = await self._open_io(open_io, "failed to create runc console socket")
            try:
                try:
                    await self.init.runc.exec(
                        self.init.id,
                        self.spec,
                        pid_file=self.pid_file,
                        stdio=runc_stdio(self.io),
                        console_socket=self.io.console_socket,
                    )
                except RuncError as exc:
                    # It never runs (the kit answers its Wait at once); no retry.
                    self.start_failed = True
                    raise self.init.runtime_error("OCI runtime exec failed", exc) from exc
                await self._start_io(self.io, bounded=True)
                self.pid = read_pid_file(self.pid_file, "failed to retrieve OCI runtime exec pid")
            except BaseException:
                await self._close_io()
                raise

    async def kill(self, sig: int) -> None:
        async with self.lock:
            if self.pid == 0:
                raise FailedPreconditionError.wrapping("process not created")
            if self.has_exited or self.reaped:
                raise NotFoundError.wrapping("process already finished")
            try:
                os.kill(self.pid, sig)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise NotFoundError.wrapping(
                        "exec kill error: process already finished"
                    ) from exc
                text = runc_errors.go_errno_text(exc.errno or errno.EINVAL)
                raise unknown(f"exec kill error: unknown error after kill: {text}") from exc

    def resize(self, width: int, height: int) -> None:
        if self.has_exited:
            raise unknown("cannot resize a stopped container")
        super().resize(width, height)

    async def delete(self) -> None:
        async with self.lock:
            if self.io is not None:
                await self.io.wait_drained(DELETE_DRAIN_TIMEOUT)
            await self._close_io()
            with contextlib.suppress(OSError):
                os.remove(self.pid_file)
