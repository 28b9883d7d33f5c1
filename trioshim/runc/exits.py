"""Matching reaped exits to processes, and the order of the events they cause.

The bookkeeping of containerd's later shims (1.7 and 2.x: exits reaped before the start event
are held, execs counted per container), made explicit:

- ``running``: pid -> the (container, process) pairs started with that pid. An exit is looked
  up there and removed; unknown pids (runc itself, loggers, orphans) are ignored.
- *Exit buffers*: before a Create or Start, :meth:`Exits.starting` registers a buffer that
  receives every exit reaped meanwhile. Once the start event is published (or the start
  failed), :meth:`Starting.started` hands over: an exit of the new pid already in the buffer is
  handled at once, otherwise the pid joins ``running``. So an exit can never be lost (the pid
  was unknown when it was reaped) nor published before its start event. An init Start takes the
  init out of ``running`` for its duration, so an exit during ``runc start`` waits too.
- Running execs are counted per container. When the init exits the container's leftovers are
  killed (``runc kill --all``, unless the container has a private PID namespace) and the init's
  exit is held until that count is 0: **the init's TaskExit is always the container's last**.
  From then on a new exec Start is refused (FailedPrecondition).

Per process the events therefore go create -> start -> exit -> delete, and exec-added ->
exec-started -> exit. An exit of a process that was already deleted (a never-started init that
``runc delete`` killed) publishes nothing: TaskDelete was its last word.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import trio
import trio.lowlevel
from google.protobuf.message import Message

from trioshim.runc.init_process import InitProcess
from trioshim.runc.process import Process
from trioshim.runc.states import InitPaused
from trioshim.task.errors import FailedPreconditionError
from trioshim.task.events import TaskEvents
from trioshim.task.fifo import OUTPUT_FLUSH_TIMEOUT
from trioshim.task.instance import Exit

log = logging.getLogger(__name__)


class ExitLike(Protocol):
    """One reaped process (``trioshim.shim.reaper.Exit``)."""

    @property
    def pid(self) -> int: ...

    @property
    def status(self) -> int: ...

    @property
    def exited_at_ns(self) -> int: ...


class ContainerLike(Protocol):
    """What exit handling needs of a container (``container.Container``)."""

    @property
    def id(self) -> str: ...

    @property
    def init(self) -> InitProcess: ...

    def should_kill_all(self) -> bool: ...


Publish = Callable[[str, Message], None]


@dataclass(eq=False)
class Starting:
    """An exit buffer: every exit reaped while a process is being created or started."""

    exits: Exits
    buffered: dict[int, list[ExitLike]] = field(default_factory=dict)
    open: bool = True

    def add(self, exit_: ExitLike) -> None:
        self.buffered.setdefault(exit_.pid, []).append(exit_)

    def started(self, container: ContainerLike, process: Process | None) -> None:
        """The start event is out (or the start failed): deliver or track the process's exit."""
        self.exits._started(self, container, process)


class Exits:
    """Exit bookkeeping of one task service. Run :meth:`run` in the service's nursery."""

    def __init__(
        self,
        publish: Publish,
        nursery: trio.Nursery,
        check_oom: Callable[[str], None] = lambda container_id: None,
    ) -> None:
        """``check_oom(container_id)``: publish an OOM kill of the container not reported
        yet (the OOM watcher's hand-off, called before a SIGKILLed init's exit)."""
        self._events = TaskEvents(publish)
        self._check_oom = check_oom
        self._nursery = nursery
        self._running: dict[int, list[tuple[ContainerLike, Process]]] = {}
        self._buffers: set[Starting] = set()
        self._running_execs: dict[ContainerLike, int] = {}
        self._exec_count_changed: dict[ContainerLike, trio.Event] = {}
        self._init_exited: set[ContainerLike] = set()

    # -- feeding ---------------------------------------------------------------------------

    async def run(self, exits: trio.abc.ReceiveChannel[ExitLike]) -> None:
        """Handle every exit from the reaper's subscription, in order, until it closes."""
        async for exit_ in exits:
            self.on_exit(exit_)

    def on_exit(self, exit_: ExitLike) -> None:
        for buffer in self._buffers:
            buffer.add(exit_)
        entries = self._running.pop(exit_.pid, [])
        for container, process in entries:
            if isinstance(process, InitProcess):
                self._init_exited.add(container)
                self._nursery.start_soon(self._handle_init_exit, exit_, container, process)
            else:
                self._report_exit(exit_, container, process)

    # -- starting --------------------------------------------------------------------------

    @contextlib.contextmanager
    def starting(self, container: ContainerLike | None = None) -> Iterator[Starting]:
        """Buffer exits for a Create (``container=None``), an exec Start (``None``) or an init
        Start (the container: its init leaves ``running`` meanwhile). Call
        ``started(container, process)`` on the buffer before leaving the block, success or not.
        """
        buffer = Starting(self)
        self._buffers.add(buffer)
        if container is not None:
            pid = container.init.pid
            entries = [e for e in self._running.get(pid, []) if e[0] is not container]
            if entries:
                self._running[pid] = entries
            else:
                self._running.pop(pid, None)
        try:
            yield buffer
        finally:
            self._buffers.discard(buffer)
            buffer.open = False

    def _started(self, buffer: Starting, container: ContainerLike, process: Process | None) -> None:
        self._buffers.discard(buffer)
        buffer.open = False
        pid = process.pid if process is not None else 0
        if process is None or pid == 0:
            return
        early = buffer.buffered.get(pid)
        if early:
            for exit_ in early:
                if isinstance(process, InitProcess):
                    self._init_exited.add(container)
                    self._nursery.start_soon(self._handle_init_exit, exit_, container, process)
                else:
                    self._report_exit(exit_, container, process)
            return
        if process.has_exited:
            return  # its exit was handled already (a failed re-Start of a stopped init)
        entries = self._running.setdefault(pid, [])
        if not any(c is container and p is process for c, p in entries):
            entries.append((container, process))  # (a failed second Start re-announces it)

    def exec_starting(self, container: ContainerLike) -> None:
        """Count an exec about to start; refused once the container's init has exited."""
        if container in self._init_exited:
            raise FailedPreconditionError.wrapping(
                f"container {container.id} init process is not running"
            )
        self._running_execs[container] = self._running_execs.get(container, 0) + 1

    def exec_start_failed(self, container: ContainerLike) -> None:
        self._exec_done(container)

    def forget(self, container: ContainerLike) -> None:
        """The container's init was deleted: drop what is kept about it."""
        self._init_exited.discard(container)
        pid = container.init.pid
        entries = [e for e in self._running.get(pid, []) if e[0] is not container]
        if entries:
            self._running[pid] = entries
        else:
            self._running.pop(pid, None)

    def init_exited(self, container: ContainerLike) -> bool:
        return container in self._init_exited

    def running_execs(self, container: ContainerLike) -> int:
        return self._running_execs.get(container, 0)

    # -- handling --------------------------------------------------------------------------

    def _exec_done(self, container: ContainerLike) -> None:
        count = self._running_execs.get(container, 0) - 1
        if count <= 0:
            self._running_execs.pop(container, None)
        else:
            self._running_execs[container] = count
        changed = self._exec_count_changed.pop(container, None)
        if changed is not None:
            changed.set()

    async def _handle_init_exit(
        self, exit_: ExitLike, container: ContainerLike, init: InitProcess
    ) -> None:
        if container.should_kill_all():
            try:
                await init.kill_all()
            except Exception as exc:
                log.warning("failed to kill init's children of %s: %s", container.id, exc)
        while self._running_execs.get(container, 0) > 0:
            event = self._exec_count_changed.setdefault(container, trio.Event())
            await event.wait()
        await _output_delivered(init)
        if exit_.status == 128 + 9:
            # An OOM kill is recorded before the process dies: TaskOOM goes out first.
            self._check_oom(container.id)
        self._handle_process_exit(exit_, container, init)

    def _report_exit(self, exit_: ExitLike, container: ContainerLike, process: Process) -> None:
        """An exec's exit: reported at once, or once its output was delivered."""
        process.reaped = True
        io = process.io
        if io is None or io.drained:
            self._handle_process_exit(exit_, container, process)
        else:
            self._nursery.start_soon(self._report_after_output, exit_, container, process)

    async def _report_after_output(
        self, exit_: ExitLike, container: ContainerLike, process: Process
    ) -> None:
        await _output_delivered(process)
        self._handle_process_exit(exit_, container, process)

    def _handle_process_exit(
        self, exit_: ExitLike, container: ContainerLike, process: Process
    ) -> None:
        was_paused = isinstance(process.state, InitPaused)
        recorded = process.set_exited(exit_.status, exit_.exited_at_ns)
        if recorded:
            self._nursery.start_soon(process.on_exit_io)
            if was_paused and isinstance(process, InitProcess):
                self._nursery.start_soon(self._thaw, process)
            assert process.exited_at_ns is not None  # set_exited recorded it
            self._events.exit(
                container.id, process.id, exit_.pid, Exit(exit_.status, process.exited_at_ns)
            )
        if recorded and not isinstance(process, InitProcess):
            # Only the exit that stopped it ends an exec's count: the same exit may come a
            # second time (from `running` and from the buffer of a refused re-Start).
            self._exec_done(container)

    @staticmethod
    async def _thaw(init: InitProcess) -> None:
        try:
            await init.thaw_after_exit()
        except Exception as exc:
            log.warning("failed to resume %s after its exit: %s", init.id, exc)


async def _output_delivered(process: Process) -> None:
    """Wait (bounded) until the process's output copiers finished, so that a client learning of
    the exit has already been handed every byte: containerd 1.6 closes its FIFO readers as soon
    as the task stopped (see :data:`~trioshim.task.fifo.OUTPUT_FLUSH_TIMEOUT`). A pipe still
    held by a background child of the process ends the wait at the bound.

    A terminal's output does not end when it hangs up (the process may reopen it), and a
    background child may keep it open: the exit shuts the console down first (as the reference
    shim does at exit), so its copier drains what the process wrote and finishes without waiting
    for the bound (pipe modes have nothing to do at the exit; telling the stdio again once the exit
    is recorded changes nothing)."""
    io = process.io
    if io is not None and not io.drained:
        await io.process_exited()
        await io.wait_drained(OUTPUT_FLUSH_TIMEOUT)
