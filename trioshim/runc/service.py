"""The task service: the 17 RPCs of ``containerd.task.v2.Task`` (and ``.v3``) over runc.

One :class:`TaskService` per shim daemon serves every container grouped into it. It is one
plugin of the shim framework (:data:`trioshim.runc.main.REGISTRATION`): it gets the reaper,
the event publisher and the shutdown service from the framework, and hands the ttrpc server one
implementation per API version (the v2 and v3 messages are field-identical, only their package
differs).

Error codes follow containerd-shim-runc-v2 v1.6.20: an unknown
container is NotFound ``container not created``, an unknown exec NotFound ``process does not
exist <id>``, state refusals are bare Unknown texts, runc failures carry runc's own message.
Inside, every refusal is a domain error of the task kit (:mod:`trioshim.task.errors`, with Go's
text: ``NotFoundError.wrapping("container not created")``); :mod:`trioshim.runc.boundary`
turns it into the ttrpc status, once.
Where the reference has bugs (its exec state machine, its exit ordering, its Create and Delete
edge cases) this service does better:
- the init's TaskExit is always its container's last (execs first), an exec Start after the
  init exited is FailedPrecondition, and a retried exec Start after a failed ``runc exec`` is
  refused instead of crashing;
- a second Create for a live id is AlreadyExists instead of unmounting the live rootfs;
- an exit of a process deleted before it exited publishes nothing after its TaskDelete;
- Wait is cancellable; a Create that fails after ``runc create`` force-deletes the container;
- ids that are not containerd identifiers (``../x``) and a Create bundle that is not
  ``<containerd's bundle directory>/<id>`` are InvalidArgument before anything is written or
  run (the reference writes ``options.json`` and friends wherever the bundle points).

Failpoints (:mod:`trioshim.runc.failpoints`) let tests make the RPCs fail, stall or raise.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any, Final, Protocol

import trio
from google.protobuf import empty_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as task_v2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as task_v3
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.runc.boundary import Handlers
from trioshim.runc.container import Container
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.exits import Exits
from trioshim.runc.failpoints import hit, read_failpoints
from trioshim.runc.init_process import InitProcess
from trioshim.runc.oom import OOMWatcher, open_oom_watcher
from trioshim.runc.options import checkpoint_flags, decode_checkpoint_options, decode_options
from trioshim.runc.process import IOOpener, io_opener
from trioshim.runc.states import unknown
from trioshim.runc.stdio import StdioConfig
from trioshim.shim.cgroups import Cgroup
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    TaskError,
)
from trioshim.task.events import TaskEvents, timestamp
from trioshim.task.instance import Exit
from trioshim.task.stdio import StdioSpec
from trioshim.ttrpc.server import RequestContext, nonblocking

log = logging.getLogger(__name__)

EMPTY: Final = empty_pb2.Empty()

_STATUS: Final = {
    "created": task_types.CREATED,
    "running": task_types.RUNNING,
    "stopped": task_types.STOPPED,
    "paused": task_types.PAUSED,
    "pausing": task_types.PAUSING,
}


class Publisher(Protocol):
    def publish(self, topic: str, message: Message) -> None: ...


class Shutdown(Protocol):
    def shutdown(self, reason: str = ...) -> None: ...


class TaskService:
    """The runc task service of one shim daemon (every container grouped into it).

    ``await nursery.start(service.run)`` before serving it: the exit subscription and the OOM
    watcher must be in place before the first RPC (:func:`trioshim.runc.main.init_plugin`
    does that).
    """

    def __init__(
        self,
        *,
        namespace: str,
        reaper: Reaper,
        publisher: Publisher,
        shutdown: Shutdown,
        nursery: trio.Nursery,
        bundle_dir: str | None = None,
    ) -> None:
        self.namespace = namespace
        # containerd's directory of bundles (<state>/<namespace>): every Create's bundle must
        # be <bundle_dir>/<id>. None: only the form of the bundle path is checked.
        self.bundle_dir = bundle_dir
        self.reaper = reaper
        self.publisher = publisher
        self.shutdown = shutdown
        self.nursery = nursery
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        self.events = TaskEvents(self._publish)
        self.exits = Exits(self._publish, nursery, self._check_oom)
        self.oom: OOMWatcher | None = None

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Match exits and watch for OOM kills until cancelled; ``started`` once both run."""
        with self.reaper.subscribe() as exits:
            async with open_oom_watcher(self._on_oom) as watcher:
                self.oom = watcher
                task_status.started()
                try:
                    await self.exits.run(exits)
                finally:
                    self.oom = None

    def ttrpc_services(self) -> Iterable[tuple[ServiceDescriptor, object]]:
        return [
            (task_v2.DESCRIPTOR.services_by_name["Task"], Handlers(self, task_v2)),
            (task_v3.DESCRIPTOR.services_by_name["Task"], Handlers(self, task_v3)),
        ]

    # -- helpers ---------------------------------------------------------------------------

    def _publish(self, topic: str, message: Message) -> None:
        try:
            self.publisher.publish(topic, message)
        except Exception:
            log.exception("failed to queue event %s", topic)

    def _check_oom(self, container_id: str) -> None:
        if self.oom is not None:
            self.oom.poll(container_id)

    def _on_oom(self, container_id: str) -> None:
        self.events.oom(container_id)

    def container(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise NotFoundError.wrapping("container not created")
        return container

    def _io_opener(self, options: oci_pb2.Options) -> IOOpener:
        return io_opener(self.nursery, self.reaper, self.namespace, options)

    # -- the RPCs (api: the shim_pb2 module of the caller's API version) -------------------

    async def Create(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container_id = request.id
        if container_id in self.containers or container_id in self._creating:
            raise AlreadyExistsError.wrapping(f"container {container_id}")
        namespace = self.namespace or ctx.namespace
        if not namespace:
            raise InvalidArgumentError.wrapping("create namespace: namespace is required")
        log.debug(
            "create",
            extra={"fields": {"id": container_id, "service": f"{api.DESCRIPTOR.package}.Task"}},
        )
        self._creating.add(container_id)
        try:
            failpoints = read_failpoints(request.bundle)
            if failpoints is not None:
                await hit(failpoints, "Create")
            with self.exits.starting() as starting:
                options = decode_options(request.options if request.HasField("options") else None)
                container = await Container.create(
                    request,
                    options=options,
                    namespace=namespace,
                    reaper=self.reaper,
                    open_io=self._io_opener(options),
                )
                if failpoints is not None:
                    container.failpoints = failpoints
                    try:
                        await hit(failpoints, "Create.after")
                    except BaseException:
                        # The init's exit (runc kills it) stays in `starting`: never published.
                        await container.abandon()
                        raise
                self.containers[container_id] = container
                self.events.create(
                    container_id,
                    request.bundle,
                    StdioSpec(request.stdin, request.stdout, request.stderr, request.terminal),
                    container.init.pid,
                    rootfs=request.rootfs,
                    checkpoint=request.checkpoint,
                )
                container.watch_oom(self.oom)
                starting.started(container, container.init)
        finally:
            self._creating.discard(container_id)
        return api.CreateTaskResponse(pid=container.init.pid)

    async def Start(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        if container.failpoints is not None:
            await hit(container.failpoints, "Start")
        process = container.process(request.exec_id)
        if isinstance(process, InitProcess):
            with self.exits.starting(container) as starting:
                try:
                    await process.start()
                except BaseException:
                    starting.started(container, process)
                    raise
                if container.cgroup is None and process.pid > 0:
                    container.load_cgroup(process.pid)
                container.watch_oom(self.oom)
                self.events.start(container.id, process.pid)
                starting.started(container, process)
        else:
            assert isinstance(process, ExecProcess)
            self.exits.exec_starting(container)
            with self.exits.starting() as starting:
                try:
                    await process.start(self._io_opener(container.options))
                except BaseException:
                    self.exits.exec_start_failed(container)
                    starting.started(container, process)
                    raise
                self.events.exec_started(container.id, process.id, process.pid)
                starting.started(container, process)
        if container.failpoints is not None:
            await hit(container.failpoints, "Start.after")
        return api.StartResponse(pid=process.pid)

    async def Delete(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        if container.failpoints is not None:
            await hit(container.failpoints, "Delete")
        process = container.process(request.exec_id)
        if isinstance(process, ExecProcess):
            await process.delete()
            container.remove_exec(process.id)
        else:
            assert isinstance(process, InitProcess)
            # `runc delete` kills a never-started init: that exit is the delete's doing, not
            # the process's, so it is held back (and dropped once the delete succeeded).
            with self.exits.starting(container) as held:
                try:
                    await process.delete(container.unmount_rootfs if container.rootfs else None)
                except BaseException:
                    held.started(container, process)
                    raise
            if self.containers.get(container.id) is container:
                del self.containers[container.id]
            self.exits.forget(container)
            if self.oom is not None:
                self.oom.discard(container.id)
            for exec_process in list(container.execs.values()):
                await exec_process.release_io()
            exited_at = process.exited_at_ns
            exit = None if exited_at is None else Exit(process.exit_status, exited_at)
            self.events.delete(container.id, process.pid, exit)
        return api.DeleteResponse(
            pid=process.pid,
            exit_status=process.exit_status,
            exited_at=timestamp(process.exited_at_ns),
        )

    async def Exec(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        if container.failpoints is not None:
            await hit(container.failpoints, "Exec")
        exec_id = request.exec_id
        if not container.reserve(exec_id):
            raise AlreadyExistsError.wrapping(f"id {exec_id}")
        try:
            container.init.check_exec()
            try:
                spec = json.loads(request.spec.value or b"")
            except ValueError as exc:
                text = str(exc) if request.spec.value else "unexpected end of JSON input"
                raise unknown(text) from exc
            if not isinstance(spec, dict):
                raise unknown("json: cannot unmarshal into Go value of type specs.Process")
            process = ExecProcess(
                exec_id,
                container.init,
                spec,
                StdioConfig(request.stdin, request.stdout, request.stderr, request.terminal),
            )
            if container.failpoints is not None:
                await hit(container.failpoints, "Exec.after")
                if self.containers.get(container.id) is not container:  # deleted meanwhile
                    raise NotFoundError.wrapping("container not created")
        except BaseException:
            container.release(exec_id)
            raise
        container.add_exec(process)
        self.events.exec_added(container.id, exec_id)
        return EMPTY

    async def ResizePty(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        process = container.process(request.exec_id)
        async with process.lock:
            process.resize(request.width, request.height)
        return EMPTY

    @nonblocking
    async def State(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        process = container.process(request.exec_id)
        return api.StateResponse(
            id=process.id,
            bundle=container.bundle,
            pid=process.pid,
            status=_STATUS.get(process.status(), task_types.UNKNOWN),
            stdin=process.stdio.stdin,
            stdout=process.stdio.stdout,
            stderr=process.stdio.stderr,
            terminal=process.stdio.terminal,
            exit_status=process.exit_status,
            exited_at=timestamp(process.exited_at_ns),
        )

    async def Pause(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        await container.init.pause()
        self.events.paused(container.id)
        return EMPTY

    async def Resume(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        await container.init.resume()
        self.events.resumed(container.id)
        return EMPTY

    async def Kill(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        if container.failpoints is not None:
            await hit(container.failpoints, "Kill")
        process = container.process(request.exec_id)
        if isinstance(process, InitProcess):
            await process.kill(request.signal, all=request.all)
        else:
            assert isinstance(process, ExecProcess)
            await process.kill(request.signal)
        return EMPTY

    async def Pids(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        return api.PidsResponse(processes=await container.processes())

    async def CloseIO(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        try:
            process = container.process(request.exec_id)
        except TaskError as exc:
            raise unknown(str(exc)) from exc  # the reference skips ToGRPC here
        try:
            await process.close_stdin()
        except OSError as exc:
            raise unknown(f"close stdin: {exc}") from exc
        return EMPTY

    async def Checkpoint(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        opts = decode_checkpoint_options(request.options if request.HasField("options") else None)
        await container.init.checkpoint(request.path, checkpoint_flags(opts), exit=opts.exit)
        return EMPTY

    async def Update(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        if not request.HasField("resources"):
            raise InvalidArgumentError.wrapping("resources are required")
        await container.init.update(request.resources.value)
        return EMPTY

    async def Wait(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        process = container.process(request.exec_id)
        await process.wait()
        return api.WaitResponse(
            exit_status=process.exit_status, exited_at=timestamp(process.exited_at_ns)
        )

    async def Stats(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.container(request.id)
        cgroup: Cgroup | None = container.cgroup
        if cgroup is None:
            raise NotFoundError.wrapping("cgroup does not exist")
        return api.StatsResponse(stats=cgroup.metrics())

    @nonblocking
    async def Connect(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        container = self.containers.get(request.id)
        return api.ConnectResponse(
            shim_pid=os.getpid(), task_pid=container.init.pid if container is not None else 0
        )

    async def Shutdown(self, api: ModuleType, ctx: RequestContext, request: Any) -> Any:
        if self.containers or self._creating:
            return EMPTY
        self.shutdown.shutdown("no containers left")
        return EMPTY
