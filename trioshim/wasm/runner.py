"""Run a WASI module in a process of its own, started through the shim's reaper.

One container = one child: ``python -I trioshim/wasm/child.py`` (standard library and wasmtime
only). The child is an ordinary process as far as the shim is concerned: its pid is real, Kill
sends a real signal (SIGKILL -> 137, SIGTERM -> 143: the module cannot handle signals, so each
takes its default action), and it lives in the container's cgroup, so memory limits, OOM kills
and Stats work as for a runc container.

Start-up order, so that a limit is in force before any module code runs:

1. the cgroup is made (limits written) before anything is spawned;
2. the child is spawned; it starts the interpreter and blocks reading its launch request (fd 3);
3. the shim moves the pid into the cgroup, then writes the request and closes the pipe;
4. the child imports wasmtime, compiles, instantiates, reports ``running`` on its diagnostics
   pipe (fd 4) and calls ``_start``.

A trap or load failure arrives on the diagnostics pipe; it is logged to the shim's log (never to
the container's stderr) and kept on :attr:`WasmProcess.failure`. The child bounds what it writes
there to less than a pipe holds, so reading it live (:meth:`WasmProcess.watch`) is optional:
:meth:`WasmProcess.wait` reads the rest after the exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from trioshim.shim.cgroups.oom import OOMCount
from trioshim.shim.reaper import DEVNULL, Child, Reaper
from trioshim.wasm import child as child_program
from trioshim.wasm.cgroup import ContainerCgroup
from trioshim.wasm.launch import LaunchRequest

__all__ = [
    "CHILD_PROGRAM",
    "LOAD_FAILED_STATUS",
    "TRAP_STATUS",
    "SignalSource",
    "WasmProcess",
    "forward_signals",
    "open_wasm_process",
]

log = logging.getLogger(__name__)

CHILD_PROGRAM: Final = os.path.abspath(child_program.__file__)
TRAP_STATUS: Final = child_program.TRAP_STATUS
LOAD_FAILED_STATUS: Final = child_program.LOAD_FAILED_STATUS
_DIAGNOSTICS_MAX: Final = 64 * 1024  # the most the child writes (see child.MESSAGE_MAX)


@dataclass(eq=False)
class WasmProcess:
    """A WASI module running in its child process (made by :func:`open_wasm_process`)."""

    child: Child
    module: str
    _diagnostics: trio.lowlevel.FdStream = field(repr=False)
    cgroup: ContainerCgroup | None = None
    running: trio.Event = field(default_factory=trio.Event)
    """Set once the module is instantiated and its ``_start`` called (live while
    :meth:`watch` runs, else when :meth:`wait` reads the diagnostics)."""
    failure: str | None = None
    """The trap or load error the child reported, if any."""
    oom_killed: bool = False
    """Whether the kernel OOM-killed in the cgroup during the run (v1 ``oom_kill`` count, v2
    ``memory.events``); known once :meth:`wait` has returned."""
    oom_events: int = 0
    """The cgroup's OOM notifications during the run (what runc's shim turns into TaskOOM
    events: v1 the ``memory.oom_control`` eventfd, v2 ``memory.events`` ``oom``), killing the
    module or not; all of them once :meth:`wait` has returned."""
    oom_reports: int = 0
    """How often :meth:`watch_ooms` reported while the module ran: once per wake-up that found
    notifications (several the kernel counted before we looked are one report, as runc's shim
    reads its eventfd)."""
    _reading: bool = False
    _diagnostics_done: trio.Event = field(default_factory=trio.Event)
    _oom_kills_before: int = 0
    _oom_count: OOMCount | None = field(default=None, repr=False)
    _oom_left: int = 0  # notifications no live report covered, taken at the exit

    @property
    def pid(self) -> int:
        return self.child.pid

    def signal(self, sig: int) -> None:
        """Deliver ``sig`` to the child (nothing once it has been reaped)."""
        self.child.send_signal(sig)

    async def watch(self) -> None:
        """Read the child's diagnostics as they come, until it exits; run it in a task to see
        :attr:`running` live. Without it, :meth:`wait` reads them after the exit (the child
        never writes more than a pipe holds, so it cannot block on us)."""
        if self._reading:
            await self._diagnostics_done.wait()
            return
        self._reading = True
        buffer = b""
        seen = 0
        try:
            while chunk := await self._diagnostics.receive_some(4096):
                seen += len(chunk)
                if seen > _DIAGNOSTICS_MAX:
                    continue  # more than the child ever sends: drain, do not keep
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._record(line)
            if buffer:
                self._record(buffer)
        except trio.ClosedResourceError:
            pass  # the owner closed it: the run is over
        finally:
            self._diagnostics_done.set()

    async def watch_ooms(self, report: Callable[[], object]) -> None:
        """Call ``report()`` for the cgroup's OOM notifications as they come, until cancelled
        (run it in a task of yours while the module runs). What it has not taken when
        :meth:`wait` returns is left for the exit: :attr:`oom_at_exit`."""
        count = self._oom_count
        if count is None:
            return
        while True:
            await count.wait()
            # synchronous from here to report(): wait() cannot take these too
            if taken := count.take():
                self.oom_events += taken
                self.oom_reports += 1
                report()

    async def wait(self) -> int:
        """The exit status (``proc_exit`` code, 128 + signal, or a trap/load status), once the
        child is reaped and its diagnostics are read to the end."""
        status = await self.child.wait()
        await self.watch()
        if self.cgroup is not None:  # read now: the cgroup goes once the run is over
            self.oom_killed = self.cgroup.oom_kills() > self._oom_kills_before
        if self._oom_count is not None:
            self._oom_left = self._oom_count.take()
            self.oom_events += self._oom_left
        return status

    @property
    def oom(self) -> bool:
        """Whether the run met the OOM killer: a notification, or a kill the count missed (no
        notification source on this host)."""
        return self.oom_events > 0 or self.oom_killed

    @property
    def oom_at_exit(self) -> bool:
        """Whether the exit has an OOM to carry that no live report covered (notifications
        :meth:`watch_ooms` had not taken when the child was reaped, or a kill with no
        notification source to report it): the TaskOOM published just before TaskExit."""
        uncounted_kill = self._oom_count is None and self.oom_killed
        return self._oom_left > 0 or uncounted_kill

    def _record(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            event = record["event"]
        except (ValueError, KeyError, TypeError):
            log.warning("wasm child %d: unreadable diagnostics %r", self.pid, line[:200])
            return
        if event == "running":
            self.running.set()
            return
        self.failure = str(record.get("message", event))
        if event == "trap":
            log.warning("wasm module %s (pid %d) trapped: %s", self.module, self.pid, self.failure)
        else:
            log.error("wasm module %s (pid %d) failed: %s", self.module, self.pid, self.failure)


@asynccontextmanager
async def open_wasm_process(
    reaper: Reaper,
    request: LaunchRequest,
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    cgroup: ContainerCgroup | None = None,
    python: str = sys.executable,
) -> AsyncIterator[WasmProcess]:
    """Start the module; the block owns the child.

    ``stdin``/``stdout``/``stderr`` are the container's descriptors (None: ``/dev/null``); the
    child gets copies, the caller keeps its own. ``cgroup`` (already made, see
    :class:`~trioshim.wasm.cgroup.ContainerCgroup`) is joined before the module runs. Leaving the
    block with the child still running (an error, a cancellation) kills and reaps it; the
    cgroup stays for its owner to remove. No task is started here (so nothing the block raises
    comes back wrapped in an exception group): run :meth:`WasmProcess.watch` in a task of
    yours to see :attr:`WasmProcess.running` while the module runs.
    """
    config_read, config_write = os.pipe2(os.O_CLOEXEC)
    diag_read, diag_write = os.pipe2(os.O_CLOEXEC)
    try:
        child = reaper.spawn(
            [python, "-I", CHILD_PROGRAM],
            env={},
            stdin=DEVNULL if stdin is None else stdin,
            stdout=DEVNULL if stdout is None else stdout,
            stderr=DEVNULL if stderr is None else stderr,
            extra_fds={
                child_program.CONFIG_FD: config_read,
                child_program.DIAGNOSTICS_FD: diag_write,
            },
        )
    except BaseException:
        for fd in (config_write, diag_read):
            os.close(fd)
        raise
    finally:
        for fd in (config_read, diag_write):
            os.close(fd)
    config = trio.lowlevel.FdStream(config_write)
    process = WasmProcess(child, request.module, trio.lowlevel.FdStream(diag_read), cgroup)
    try:
        if cgroup is not None:  # counting starts before the module can use memory
            process._oom_kills_before = cgroup.oom_kills()
            process._oom_count = cgroup.count_ooms()
            cgroup.add(child.pid)
        with suppress(trio.BrokenResourceError):  # died early: its status says why
            await config.send_all(json.dumps(request.to_json()).encode())
        config.close()  # EOF: the child may go
        yield process
    finally:
        config.close()
        if child.returncode is None:
            child.kill()
            with trio.CancelScope(shield=True):
                await child.wait()
        process._diagnostics.close()
        if process._oom_count is not None:
            process._oom_count.close()


class SignalSource(Protocol):
    """Where Kill requests come from: a ``trio`` receive channel of signal numbers, or the task
    kit's per-process ``Signals``."""

    async def receive(self) -> int: ...


async def forward_signals(child: Child, signals: SignalSource) -> None:
    """Deliver every signal number received to ``child``, until the source ends."""
    while True:
        try:
            sig = await signals.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return
        if sig not in signal.valid_signals():
            log.warning("child %d: ignoring invalid signal %d", child.pid, sig)
            continue
        child.send_signal(sig)
