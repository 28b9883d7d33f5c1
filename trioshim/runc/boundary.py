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


class Handlers:
    """The ttrpc implementation of one API version: every RPC bound to the shared service.

    This is the service's boundary: each request's ids (and Create's bundle) are checked
    before the service sees it (the kit's :func:`~trioshim.task.boundary.check_request`), a
    value containerd would never send is InvalidArgument, and the service's domain errors
    (:class:`~trioshim.task.errors.TaskError`) become ttrpc statuses here.
    """

    def __init__(self, service: TaskService, api: ModuleType) -> None:
        for name in RPCS:
            setattr(self, name, _checked(service, getattr(service, name), api))


def _checked(service: TaskService, rpc: Any, api: ModuleType) -> Any:
    async def handler(ctx: RequestContext, request: Any) -> Any:
        try:
            check_request(request, bundle_dir=service.bundle_dir)
        except InvalidRequest as exc:
            raise InvalidArgument(str(exc)) from None
        try:
            return await rpc(api, ctx, request)
        except TaskError as exc:
            raise to_ttrpc(exc) from None

    return functools.update_wrapper(handler, rpc)
