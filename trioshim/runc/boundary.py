"""The runc task service's boundary: what containerd's requests must be before the service
sees them.

:class:`Handlers` is the ttrpc implementation of one API version (``containerd.task.v2.Task``
or ``v3``): every RPC of :data:`RPCS` bound to the one :class:`~trioshim.runc.service.TaskService`
that serves both. Each request's ids, and a Create's bundle, are checked here, so a value
containerd would never send (``../x`` as an id, a bundle outside containerd's bundle
directory) is InvalidArgument before anything is written or run. The check raises the domain
error :class:`~trioshim.shim.identifiers.InvalidRequest`; it, and every domain error the
service raises (:class:`~trioshim.task.errors.TaskError`), becomes a ttrpc status here and
nowhere else.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trioshim.shim.identifiers import InvalidRequest
from trioshim.task.boundary import RPCS, check_request
from trioshim.task.errors import TaskError, to_ttrpc
from trioshim.ttrpc.errors import InvalidArgument
from trioshim.ttrpc.server import RequestContext

if TYPE_CHECKING:
    from trioshim.runc.service import TaskService

__all__ = ["Handlers"]


class _Handlers:
    """The ttrpc implementation of one API version over one service: its handlers are
    functions of the class (one class per service class and API version, made once), so the
    server shares one table of them among every shim of a process; a shim adds one object."""

    __slots__ = ("_service",)

    def __init__(self, service: TaskService) -> None:
        self._service = service


# By API version and the service's rpc functions (a class patched since gets a new one).
_classes: dict[tuple[ModuleType, tuple[Any, ...]], type[_Handlers]] = {}


def Handlers(service: TaskService, api: ModuleType) -> object:
    """The ttrpc implementation of ``api``: every RPC bound to the shared service. (A
    function, named as the class it replaces, so that the service registers it unchanged.)

    This is the service's boundary: each request's ids (and Create's bundle) are checked
    before the service sees it (the kit's :func:`~trioshim.task.boundary.check_request`), a
    value containerd would never send is InvalidArgument, and the service's domain errors
    (:class:`~trioshim.task.errors.TaskError`) become ttrpc statuses here.
    """
    rpcs = tuple(getattr(type(service), name) for name in RPCS)
    cls = _classes.get((api, rpcs))
    if cls is None:
        handlers = {name: _checked(rpc, api) for name, rpc in zip(RPCS, rpcs, strict=True)}
        name = f"Handlers_{api.__name__.split('.')[-2]}"
        cls = _classes[api, rpcs] = type(name, (_Handlers,), handlers)
    return cls(service)


def _checked(rpc: Any, api: ModuleType) -> Any:
    async def handler(self: _Handlers, ctx: RequestContext, request: Any) -> Any:
        service = self._service
        try:
            check_request(request, bundle_dir=service.bundle_dir)
        except InvalidRequest as exc:
            raise InvalidArgument(str(exc)) from None
        try:
            return await rpc(service, api, ctx, request)
        except TaskError as exc:
            raise to_ttrpc(exc) from None

    return functools.update_wrapper(handler, rpc)
