"""runc as a backend of the task kit: a container's init and execs as kit instances.

The Task service, its states, events, Wait and error boundary are the kit's
(:mod:`trioshim.task.service`); what is runc's is here and in the process modules: ``runc
create/start/exec/kill/pause/...`` (:mod:`~trioshim.runc.init_process`,
:mod:`~trioshim.runc.exec_process`), the bundle files and rootfs
(:mod:`~trioshim.runc.container`), the stdio through pipes owned by the io uid/gid, the
refusals in containerd's runc shim's words (:class:`~trioshim.runc.states.RuncRefusals`), and
how an exit is collected:

- a process's exit is the reaper's (:meth:`~trioshim.shim.reaper.Reaper.wait_for`): one
  reaped before anybody waits for it (while ``runc start`` or ``runc exec`` still runs) is
  kept until its wait comes, so no exit is lost or published before its start;
- an exec that was reaped is never signalled again, even before its exit is recorded (its
  pid may be another process's by then);
- the init's exit is followed by ``runc kill --all`` unless the container has a private PID
  namespace, its output is delivered first, an OOM kill of it is published just before it
  (the OOM watcher is polled), and a container that exited paused is thawed; the kit then
  ends the execs and publishes their exits before the init's;
- OOM kills that spare the init are published as they happen (``Host.report_oom``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from google.protobuf import any_pb2

from trioshim.runc.container import PROCESS_DETAILS_TYPE, Container
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.init_process import InitProcess
from trioshim.runc.options import checkpoint_flags, decode_checkpoint_options, decode_options
from trioshim.runc.process import Process, io_opener, output_delivered
from trioshim.runc.states import RuncRefusals, unknown
from trioshim.runc.stdio_modes import StdioConfig
from trioshim.shim.cgroups.oom import OOMWatcher
from trioshim.task.errors import InvalidArgumentError, NotFoundError
from trioshim.task.instance import CreateRequest, ExecRequest, Exit, Host, Instance, ProcessInfo

__all__ = ["RuncBackend"]

log = logging.getLogger(__name__)

_SIGKILLED = 128 + 9


class RuncBackend:
    """Makes containers with runc; one per shim daemon (every container grouped into it)."""

    reads_own_spec = True  # runc create reports a bad config.json, as with containerd's shim

    def __init__(self) -> None:
        self.refusals = RuncRefusals()
        self._oom: OOMWatcher | None = None

    def _oom_watcher(self, host: Host) -> OOMWatcher:
        if self._oom is None:
            self._oom = OOMWatcher(host.nursery, host.report_oom)
        return self._oom

    async def create(self, request: CreateRequest) -> Instance:
        namespace = request.host.namespace
        if not namespace:
            raise InvalidArgumentError.wrapping("create namespace: namespace is required")
        options = decode_options(request.options)
        container = await Container.create(
            request,
            options=options,
            namespace=namespace,
            reaper=request.host.reaper,
            open_io=io_opener(request.host.nursery, request.host.reaper, namespace, options),
        )
        oom = self._oom_watcher(request.host)
        container.watch_oom(oom)
        return RuncInit(container, request.host, oom)


class _RuncInstance:
    """What an init and an exec share: the runc process, its exit, its terminal and stdin."""

    process: Process

    def __init__(self, host: Host) -> None:
        self.host = host

    async def _reaped(self) -> Exit:
        """The process's exit as the reaper collected it (kept by the reaper if it came before
        this wait did). From now on the pid may be another process's: never signalled again."""
        reaped = await self.host.reaper.wait_for(self.process.pid)
        self.process.reaped = True
        return Exit(reaped.status, reaped.exited_at_ns)

    def _record(self, exit: Exit) -> Exit:
        assert exit.exited_at_ns is not None  # it ran
        self.process.set_exited(exit.status, exit.exited_at_ns)
        self.host.nursery.start_soon(self.process.on_exit_io)
        return exit

    async def resize(self, width: int, height: int) -> None:
        async with self.process.lock:
            self.process.resize(width, height)

    async def close_stdin(self) -> None:
        try:
            await self.process.close_stdin()
        except OSError as exc:
            raise unknown(f"close stdin: {exc}") from exc


class RuncInit(_RuncInstance):
    """A container's init (``runc create``, then ``start``, or ``restore``)."""

    def __init__(self, container: Container, host: Host, oom: OOMWatcher) -> None:
        super().__init__(host)
        self.container = container
        self.process: InitProcess = container.init
        self.oom = oom

    @property
    def created_pid(self) -> int:
        return self.process.pid

    async def start(self) -> int:
        await self.process.start()
        if self.container.cgroup is None and self.process.pid > 0:  # restored
            self.container.load_cgroup(self.process.pid)
        self.container.watch_oom(self.oom)
        return self.process.pid

    async def kill(self, signal: int, all: bool) -> None:
        await self.process.kill(signal, all=all)

    async def wait(self) -> Exit:
        exit = await self._reaped()
        if self.container.should_kill_all():
            try:
                await self.process.kill_all()
            except Exception as exc:
                log.warning("failed to kill init's children of %s: %s", self.container.id, exc)
        await output_delivered(self.process)
        if exit.status == _SIGKILLED:
            # An OOM kill is recorded before the process dies: TaskOOM goes out first.
            self.oom.poll(self.container.id)
        if self.process.paused:
            self.host.nursery.start_soon(self._thaw)
        return self._record(exit)

    async def _thaw(self) -> None:
        try:
            await self.process.thaw_after_exit()
        except Exception as exc:
            log.warning("failed to resume %s after its exit: %s", self.container.id, exc)

    async def delete(self) -> None:
        container = self.container
        await self.process.delete(container.unmount_rootfs if container.rootfs else None)
        self.oom.discard(container.id)

    async def exec(self, request: ExecRequest) -> Instance:
        self.process.check_exec()
        process = ExecProcess(
            request.exec_id,
            self.process,
            dict(request.process),
            StdioConfig(
                request.stdio.stdin,
                request.stdio.stdout,
                request.stdio.stderr,
                request.stdio.terminal,
            ),
        )
        self.container.add_exec(process)
        return RuncExec(self.container, process, request.host)

    async def pause(self) -> None:
        await self.process.pause()

    async def resume(self) -> None:
        await self.process.resume()

    async def pids(self) -> Sequence[ProcessInfo]:
        infos = await self.container.processes()
        return [
            ProcessInfo(i.pid, i.info if i.info.type_url == PROCESS_DETAILS_TYPE else None)
            for i in infos
        ]

    async def stats(self) -> any_pb2.Any | None:
        cgroup = self.container.cgroup
        if cgroup is None:
            raise NotFoundError.wrapping("cgroup does not exist")
        return cgroup.metrics()

    async def update(self, resources: any_pb2.Any, annotations: Mapping[str, str]) -> None:
        if not resources.type_url and not resources.value:
            raise InvalidArgumentError.wrapping("resources are required")
        await self.process.update(resources.value)

    async def checkpoint(self, path: str, options: any_pb2.Any | None) -> None:
        opts = decode_checkpoint_options(options)
        await self.process.checkpoint(path, checkpoint_flags(opts), exit=opts.exit)


class RuncExec(_RuncInstance):
    """An exec (``runc exec --detach``)."""

    def __init__(self, container: Container, process: ExecProcess, host: Host) -> None:
        super().__init__(host)
        self.container = container
        self.process: ExecProcess = process

    async def start(self) -> int:
        container = self.container
        open_io = io_opener(
            self.host.nursery, self.host.reaper, container.namespace, container.options
        )
        await self.process.start(open_io)
        return self.process.pid

    async def kill(self, signal: int, all: bool) -> None:
        await self.process.kill(signal)

    async def wait(self) -> Exit:
        exit = await self._reaped()
        await output_delivered(self.process)
        return self._record(exit)

    async def delete(self) -> None:
        await self.process.delete()
        self.container.remove_exec(self.process.id)
