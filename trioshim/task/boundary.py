"""The service boundary: typed ttrpc handlers for ``containerd.task.v2.Task`` and ``v3``.

:class:`TaskAPI` is the typed shape of the 17 RPCs (v2 messages), so ``mypy --strict`` checks
every handler's request and reply types. :func:`task_services` binds one implementation to
both API versions: each request's ids (and a Create's bundle) are checked first, v3 messages
are converted to their field-identical v2 twins and back, and a domain error
(:class:`~trioshim.task.errors.TaskError`, or an invalid id) becomes a ttrpc status here and
nowhere else.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Final, Protocol

from google.protobuf import empty_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as v2
from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as v3
from trioshim.shim.identifiers import InvalidRequest, validate_bundle, validate_identifier
from trioshim.task.errors import TaskError, to_ttrpc
from trioshim.ttrpc.errors import InvalidArgument
from trioshim.ttrpc.registry import Handler, Intercepted
from trioshim.ttrpc.server import RequestContext

__all__ = ["RPCS", "TaskAPI", "check_request", "task_services"]

RPCS: Final = (
    "State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill",
    "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown",
)  # fmt: skip


class TaskAPI(Protocol):
    """The Task service, typed (``containerd.task.v2`` messages; Empty replies)."""

    async def State(self, ctx: RequestContext, req: v2.StateRequest) -> v2.StateResponse: ...
    async def Create(
        self, ctx: RequestContext, req: v2.CreateTaskRequest
    ) -> v2.CreateTaskResponse: ...
    async def Start(self, ctx: RequestContext, req: v2.StartRequest) -> v2.StartResponse: ...
    async def Delete(self, ctx: RequestContext, req: v2.DeleteRequest) -> v2.DeleteResponse: ...
    async def Pids(self, ctx: RequestContext, req: v2.PidsRequest) -> v2.PidsResponse: ...
    async def Pause(self, ctx: RequestContext, req: v2.PauseRequest) -> empty_pb2.Empty: ...
    async def Resume(self, ctx: RequestContext, req: v2.ResumeRequest) -> empty_pb2.Empty: ...
    async def Checkpoint(
        self, ctx: RequestContext, req: v2.CheckpointTaskRequest
    ) -> empty_pb2.Empty: ...
    async def Kill(self, ctx: RequestContext, req: v2.KillRequest) -> empty_pb2.Empty: ...
    async def Exec(self, ctx: RequestContext, req: v2.ExecProcessRequest) -> empty_pb2.Empty: ...
    async def ResizePty(self, ctx: RequestContext, req: v2.ResizePtyRequest) -> empty_pb2.Empty: ...
    async def CloseIO(self, ctx: RequestContext, req: v2.CloseIORequest) -> empty_pb2.Empty: ...
    async def Update(self, ctx: RequestContext, req: v2.UpdateTaskRequest) -> empty_pb2.Empty: ...
    async def Wait(self, ctx: RequestContext, req: v2.WaitRequest) -> v2.WaitResponse: ...
    async def Stats(self, ctx: RequestContext, req: v2.StatsRequest) -> v2.StatsResponse: ...
    async def Connect(self, ctx: RequestContext, req: v2.ConnectRequest) -> v2.ConnectResponse: ...
    async def Shutdown(self, ctx: RequestContext, req: v2.ShutdownRequest) -> empty_pb2.Empty: ...


class _Boundary:
    """What every request of one API version goes through: one per registration, however many
    RPCs (a shim in a shared process then costs a few hundred bytes here, not a closure per
    RPC and version)."""

    __slots__ = ("api", "bundle_dir")

    def __init__(self, api: ModuleType, bundle_dir: str | None) -> None:
        self.api, self.bundle_dir = api, bundle_dir

    async def intercept(self, ctx: RequestContext, request: Any, handler: Handler) -> Any:
        try:
            check_request(request, bundle_dir=self.bundle_dir)
        except InvalidRequest as exc:
            raise InvalidArgument(str(exc)) from None
        api = self.api
        if api is not v2:
            request = _convert(request, v2)
        try:
            reply = await handler(ctx, request)
        except TaskError as exc:
            raise to_ttrpc(exc) from None
        return reply if api is v2 else _convert(reply, api)


def task_services(
    service: TaskAPI, *, bundle_dir: str | None = None
) -> list[tuple[ServiceDescriptor, object]]:
    """``(descriptor, implementation)`` for v2 and v3, both served by ``service`` through the
    boundary (its RPC table is its class's, shared by every shim of the process)."""
    return [
        (
            api.DESCRIPTOR.services_by_name["Task"],
            Intercepted(service, _Boundary(api, bundle_dir).intercept),
        )
        for api in (v2, v3)
    ]


def _convert(message: Message, api: ModuleType) -> Message:
    """The same message in ``api``'s package (the two versions are field-identical)."""
    twin = getattr(api, type(message).__name__, None)
    if twin is None:  # google.protobuf.Empty: shared
        return message
    converted: Message = twin.FromString(message.SerializeToString())
    return converted


def check_request(request: Any, *, bundle_dir: str | None = None) -> None:
    """Raise :class:`InvalidRequest` unless every id is a containerd identifier and a
    Create's bundle is ``<bundle_dir>/<id>``. An empty ``exec_id`` names the init, except in
    Exec, which adds an exec and so needs one."""
    fields = request.DESCRIPTOR.fields_by_name
    container_id: str = request.id
    validate_identifier(container_id, "container id")
    if "exec_id" in fields:
        exec_id: str = request.exec_id
        if exec_id or request.DESCRIPTOR.name == "ExecProcessRequest":
            validate_identifier(exec_id, "exec id")
    if "bundle" in fields:
        validate_bundle(request.bundle, container_id, bundle_dir=bundle_dir)
