"""The services a server answers: their rpcs bound to handlers once, at registration, and
looked up by name for each request. Also the :func:`nonblocking` mark that handlers carry."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from trioshim.api.ttrpc.request_pb2 import Request

from .context import RequestContext
from .errors import Code

__all__ = ["Handler", "Method", "ServiceRegistry", "nonblocking"]

Handler = Callable[[RequestContext, Any], Awaitable[Any]]
_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])
_NONBLOCKING_ATTR: Final = "__ttrpc_nonblocking__"


def nonblocking(handler: _H) -> _H:
    """Mark a handler that answers without waiting (no await that reaches Trio).

    The server runs it in the connection's reader, in the order the requests were read, instead
    of in a task of its own. Should it wait after all, it is still served correctly (deadline
    included), but the connection reads nothing else meanwhile, not even the peer's disconnect,
    so leave unmarked whatever may block (Wait, anything calling runc). Works through
    ``functools.partial`` and bound methods.
    """
    setattr(handler, _NONBLOCKING_ATTR, True)
    return handler


def _is_nonblocking(handler: object) -> bool:
    while isinstance(handler, functools.partial):
        handler = handler.func
    return getattr(handler, _NONBLOCKING_ATTR, False) is True


@dataclass(frozen=True, slots=True)
class Method:
    """One rpc of a registered service, ready to call."""

    service: str
    name: str
    full_name: str
    input_type: type[Message]
    output_type: type[Message]
    handler: Handler | None
    streaming: bool
    #: Marked :func:`nonblocking`: run by the connection's reader, without a task.
    inline: bool


class ServiceRegistry:
    """Services by full name, each a table of its rpcs."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Method]] = {}

    def register(self, service: ServiceDescriptor, implementation: object) -> None:
        """See :meth:`trioshim.ttrpc.server.Server.register`."""
        if service.full_name in self._services:
            raise ValueError(f"service {service.full_name} is already registered")
        self._services[service.full_name] = _bind_methods(service, implementation)

    @property
    def names(self) -> list[str]:
        return list(self._services)

    def lookup(self, request: Request) -> Method | tuple[int, str]:
        """The rpc ``request`` calls, or the status (code, message) to answer it with."""
        methods = self._services.get(request.service)
        if methods is None:
            return Code.UNIMPLEMENTED, f"service {request.service}"
        method = methods.get(request.method)
        if method is None:
            return Code.UNIMPLEMENTED, f"method {request.method}"
        if method.streaming:
            return Code.UNIMPLEMENTED, f"{method.full_name}: streaming is not supported"
        if method.handler is None:
            return Code.UNIMPLEMENTED, f"{method.full_name}: not implemented"
        return method


def _check_handler_names(descriptor: ServiceDescriptor, implementation: object) -> None:
    """A handler named like no rpc of the service (``Creat``) would never be called and its
    rpc would answer Unimplemented: refuse it at registration. Handlers are recognised as Go
    names them: async methods whose name starts with a capital letter."""
    rpcs = [method.name for method in descriptor.methods]
    for name in dir(implementation):
        if not name[:1].isupper() or name in rpcs:
            continue
        if inspect.iscoroutinefunction(getattr(implementation, name, None)):
            close = difflib.get_close_matches(name, rpcs, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(
                f"{type(implementation).__name__}.{name} is not an rpc of "
                f"{descriptor.full_name}{hint}; its rpcs are {', '.join(rpcs)}"
            )


def _bind_methods(descriptor: ServiceDescriptor, implementation: object) -> dict[str, Method]:
    _check_handler_names(descriptor, implementation)
    methods: dict[str, Method] = {}
    for method in descriptor.methods:
        full_name = f"/{descriptor.full_name}/{method.name}"
        handler = getattr(implementation, method.name, None)
        if handler is not None and not (callable(handler) and inspect.iscoroutinefunction(handler)):
            raise TypeError(f"{full_name}: {handler!r} is not an async method")
        methods[method.name] = Method(
            service=descriptor.full_name,
            name=method.name,
            full_name=full_name,
            input_type=GetMessageClass(method.input_type),
            output_type=GetMessageClass(method.output_type),
            handler=handler,
            streaming=bool(method.client_streaming or method.server_streaming),
            inline=handler is not None and _is_nonblocking(handler),
        )
    return methods
