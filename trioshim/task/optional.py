"""The lookups every RPC starts with, and the RPCs an instance serves only when it has the
optional method for them (:data:`~trioshim.task.instance.OPTIONAL`): the base of
:class:`~trioshim.task.service.TaskService`."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from google.protobuf import empty_pb2

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.shim.failpoint import Failpoints
from trioshim.task.errors import TaskError, UnimplementedError, UnknownError
from trioshim.task.events import TaskEvents
from trioshim.task.instance import (
    SupportsCheckpoint,
    SupportsCloseStdin,
    SupportsPause,
    SupportsPids,
    SupportsResize,
    SupportsResume,
    SupportsStats,
    SupportsUpdate,
)
from trioshim.task.process import Process
from trioshim.task.states import Refusals
from trioshim.ttrpc.server import RequestContext

__all__ = ["Container", "OptionalRPCs", "unimplemented"]


@dataclass(eq=False)
class Container:
    id: str
    bundle: str
    init: Process
    execs: dict[str, Process] = field(default_factory=dict)
    failpoints: Failpoints | None = None
    init_exited: bool = False
    """The init's instance reported its exit: no exec starts any more."""
    _exec_starts: int = 0
    _exec_starts_changed: trio.Event = field(default_factory=trio.Event)

    def exec_start_begins(self) -> None:
        self._exec_starts += 1

    def exec_start_ends(self) -> None:
        """The Start is over (the exec runs and is watched, or it failed)."""
        self._exec_starts -= 1
        self._exec_starts_changed.set()
        self._exec_starts_changed = trio.Event()

    async def exec_starts_ended(self) -> None:
        """Until no exec Start is in progress."""
        while self._exec_starts:
            await self._exec_starts_changed.wait()


class OptionalRPCs:
    containers: dict[str, Container]
    refusals: Refusals
    events: TaskEvents

    # -- lookups ---------------------------------------------------------------------------

    def container(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise self.refusals.no_container(container_id)
        return container

    def process(self, container_id: str, exec_id: str) -> Process:
        container = self.container(container_id)
        if not exec_id:
            return container.init
        process = container.execs.get(exec_id)
        if process is None:
            raise self.refusals.no_exec(container_id, exec_id)
        return process

    # -- looking -------------------------------------------------------------------------

    async def Pids(self, ctx: RequestContext, req: pb.PidsRequest) -> pb.PidsResponse:
        init = self.container(req.id).init.instance
        if not isinstance(init, SupportsPids):
            raise unimplemented("Pids")
        infos = await init.pids()
        return pb.PidsResponse(
            processes=[
                task_types.ProcessInfo(pid=i.pid, info=i.info)
                if i.info
                else task_types.ProcessInfo(pid=i.pid)
                for i in infos
            ]
        )

    async def Stats(self, ctx: RequestContext, req: pb.StatsRequest) -> pb.StatsResponse:
        instance = self.container(req.id).init.instance
        if not isinstance(instance, SupportsStats):
            raise unimplemented("Stats")
        stats = await instance.stats()
        return pb.StatsResponse(stats=stats) if stats is not None else pb.StatsResponse()

    # -- changing ------------------------------------------------------------------------

    async def Pause(self, ctx: RequestContext, req: pb.PauseRequest) -> empty_pb2.Empty:
        init = self.container(req.id).init
        instance = init.instance
        if not isinstance(instance, SupportsPause):
            raise unimplemented("Pause")
        init.check_pause()
        init.pausing = True
        try:
            await instance.pause()
        finally:
            init.pausing = False
        init.paused()
        self.events.paused(req.id)
        return empty_pb2.Empty()

    async def Resume(self, ctx: RequestContext, req: pb.ResumeRequest) -> empty_pb2.Empty:
        init = self.container(req.id).init
        instance = init.instance
        if not isinstance(instance, SupportsResume):
            raise unimplemented("Resume")
        init.check_resume()
        await instance.resume()
        init.resumed()
        self.events.resumed(req.id)
        return empty_pb2.Empty()

    async def Update(self, ctx: RequestContext, req: pb.UpdateTaskRequest) -> empty_pb2.Empty:
        init = self.container(req.id).init
        instance = init.instance
        if not isinstance(instance, SupportsUpdate):
            raise unimplemented("Update")
        init.check_update()
        await instance.update(req.resources, dict(req.annotations))
        return empty_pb2.Empty()

    async def ResizePty(self, ctx: RequestContext, req: pb.ResizePtyRequest) -> empty_pb2.Empty:
        process = self.process(req.id, req.exec_id)
        instance = process.instance
        if not isinstance(instance, SupportsResize):
            raise unimplemented("ResizePty")
        await instance.resize(req.width, req.height)
        return empty_pb2.Empty()

    async def CloseIO(self, ctx: RequestContext, req: pb.CloseIORequest) -> empty_pb2.Empty:
        self.container(req.id)
        try:
            process = self.process(req.id, req.exec_id)
        except TaskError as exc:
            # An unknown exec is Unknown here: containerd's runc shim sends this one error
            # without its code (the drop-in contract keeps that).
            raise UnknownError(str(exc)) from exc
        if req.stdin:
            instance = process.instance
            if not isinstance(instance, SupportsCloseStdin):
                raise unimplemented("CloseIO")
            await instance.close_stdin()
        return empty_pb2.Empty()

    async def Checkpoint(
        self, ctx: RequestContext, req: pb.CheckpointTaskRequest
    ) -> empty_pb2.Empty:
        init = self.container(req.id).init
        instance = init.instance
        if not isinstance(instance, SupportsCheckpoint):
            raise unimplemented("Checkpoint")
        init.check_checkpoint()
        await instance.checkpoint(req.path, req.options if req.HasField("options") else None)
        return empty_pb2.Empty()


def unimplemented(rpc: str) -> UnimplementedError:
    """An optional operation (:data:`~trioshim.task.instance.OPTIONAL`) the backend lacks."""
    return UnimplementedError(f"{rpc} is not implemented by this shim")
