"""The services a server answers, looked up by name for each request. Also the
:func:`nonblocking` mark that handlers carry, and the :data:`Interceptor` a server may run
around every handler.

Registering is cheap in memory however many servers a process holds (shared mode serves many
shims from one process): the table of a service's rpcs (message classes, handler, nonblocking
mark) is computed once per implementation *class*, and a registration adds only (table,
implementation, interceptor). A request's handler is the class's function, called with the
implementation. Implementations whose handlers are not plain methods of their class (set on
the instance, ``functools.partial``, a ``__getattr__`` proxy) get a table of their own, bound
to the instance at registration. What runs around every handler (a check, a conversion) is an
interceptor, one per server or per registration, never a wrapper per rpc.
"""

from __future__ import annotations

import functools
import inspect
import types
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from trioshim.api.ttrpc.request_pb2 import Request

from .context import RequestContext
from .errors import Code

__all__ = [
    "NOT_REGISTERED",
    "Handler",
    "Intercepted",
    "Interceptor",
    "Method",
    "Registration",
    "ServiceRegistry",
    "nonblocking",
]

Handler = Callable[[RequestContext, Any], Awaitable[Any]]
#: ``await interceptor(ctx, request, handler)`` runs instead of ``await handler(ctx, request)``
#: for every request of a server (``Server(interceptor=...)``) or of one service
#: (:class:`Intercepted`): it may refuse the request (raise), change the request or the reply,
#: or map errors. It runs wherever the handler runs, so for a :func:`nonblocking` handler it
#: must not wait either.
Interceptor = Callable[[RequestContext, Any, Handler], Awaitable[Any]]
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
    """One rpc of a service as one implementation class (or instance) answers it."""

    service: str
    name: str
    full_name: str
    input_type: type[Message]
    output_type: type[Message]
    #: Called as ``handler(implementation, ctx, request)``: the class's function, or for a
    #: table of one instance, its handler behind a shim that drops the first argument.
    handler: Callable[[object, RequestContext, Any], Awaitable[Any]]
    #: Marked :func:`nonblocking`: run by the connection's reader, without a task.
    inline: bool


@dataclass(frozen=True, slots=True)
class Intercepted:
    """Register this to serve a service with ``implementation``, every handler run through
    ``interceptor`` (inside the server's, if it has one). A boundary written once for many
    instances (checks, conversions, error mapping) then costs one object per registration,
    and ``implementation``'s rpc table is still its class's."""

    implementation: object
    interceptor: Interceptor


_Table = dict[str, Method]
#: A registered service: its table (the rpcs it has a handler for), the implementation serving
#: it, and the interceptor its handlers run through (the server's around the service's own,
#: composed at registration). Made once per registration, so that serving a request allocates
#: nothing to find them.
Registration = tuple[_Table, object, Interceptor | None]
#: What an unknown service is found as: no rpcs.
NOT_REGISTERED: Final[Registration] = ({}, None, None)

# Per implementation class, per service: its table, with the handlers it was made from (a
# class patched since, by a test's monkeypatch, gets a new table rather than calling its old
# functions). Weak, so that classes made on the fly (tests) do not live on in here.
_class_tables: weakref.WeakKeyDictionary[
    type, dict[ServiceDescriptor, tuple[tuple[object, ...], _Table]]
] = weakref.WeakKeyDictionary()


class ServiceRegistry:
    """Services by full name, each a table of its rpcs and the implementation serving them."""

    def __init__(self, interceptor: Interceptor | None = None) -> None:
        self._interceptor = interceptor
        self._services: dict[str, Registration] = {}
        self._descriptors: dict[str, ServiceDescriptor] = {}

    def register(self, service: ServiceDescriptor, implementation: object) -> None:
        """See :meth:`trioshim.ttrpc.server.Server.register`."""
        if service.full_name in self._services:
            raise ValueError(f"service {service.full_name} is already registered")
        interceptor = self._interceptor
        if isinstance(implementation, Intercepted):
            interceptor = _around(interceptor, implementation.interceptor)
            implementation = implementation.implementation
        table = _table(service, implementation)
        self._services[service.full_name] = (table, implementation, interceptor)
        self._descriptors[service.full_name] = service

    @property
    def names(self) -> list[str]:
        return list(self._services)

    @property
    def registrations(self) -> Mapping[str, Registration]:
        """By service name. A request's rpc is ``registrations.get(request.service,
        NOT_REGISTERED)[0].get(request.method)`` (the connection looks it up so, without a
        call); a request it is missing for is answered with :meth:`refusal`."""
        return self._services

    def refusal(self, request: Request) -> tuple[int, str]:
        """The status (code, message) for a request no handler takes, as Go words it."""
        descriptor = self._descriptors.get(request.service)
        if descriptor is None:
            return Code.UNIMPLEMENTED, f"service {request.service}"
        rpc = descriptor.methods_by_name.get(request.method)
        if rpc is None:
            return Code.UNIMPLEMENTED, f"method {request.method}"
        why = "streaming is not supported" if _streaming(rpc) else "not implemented"
        return Code.UNIMPLEMENTED, f"/{descriptor.full_name}/{rpc.name}: {why}"


def _around(outer: Interceptor | None, inner: Interceptor) -> Interceptor:
    if outer is None:
        return inner

    def outer_then_inner(ctx: RequestContext, request: Any, handler: Handler) -> Awaitable[Any]:
        return outer(ctx, request, lambda ctx, request: inner(ctx, request, handler))

    return outer_then_inner


def _table(descriptor: ServiceDescriptor, implementation: object) -> _Table:
    cls = type(implementation)
    handlers = _class_handlers(cls, implementation, descriptor)
    if handlers is None:
        _check_handler_names(descriptor, implementation, dir(implementation))
        return _bind(descriptor, lambda name: getattr(implementation, name, None), bound=True)
    # The instance adds no handler: only its own attributes can hold a misspelt one.
    _check_handler_names(descriptor, implementation, getattr(implementation, "__dict__", ()))
    tables = _class_tables.setdefault(cls, {})
    cached = tables.get(descriptor)
    if cached is not None and cached[0] == handlers:
        return cached[1]
    _check_handler_names(descriptor, implementation, dir(cls))
    by_name = dict(zip(_rpcs(descriptor), handlers, strict=True))
    table = _bind(descriptor, by_name.__getitem__, bound=False)
    tables[descriptor] = (handlers, table)
    return table


def _rpcs(descriptor: ServiceDescriptor) -> list[str]:
    return [method.name for method in descriptor.methods]


def _class_handlers(
    cls: type, implementation: object, descriptor: ServiceDescriptor
) -> tuple[object, ...] | None:
    """The handlers of ``implementation``, rpc by rpc (None where it has none), when each is a
    plain function of its class: its table can then be the class's, shared by every instance.
    None when one is not (an attribute of the instance, a partial, a ``__getattr__``)."""
    if hasattr(cls, "__getattr__"):
        return None
    own = getattr(implementation, "__dict__", {})
    handlers = []
    for name in _rpcs(descriptor):
        attribute = inspect.getattr_static(cls, name, None)
        if name in own or (attribute is not None and type(attribute) is not types.FunctionType):
            return None
        handlers.append(attribute)
    return tuple(handlers)


def _check_handler_names(
    descriptor: ServiceDescriptor, implementation: object, names: Iterable[str]
) -> None:
    """A handler named like no rpc of the service (``Creat``) would never be called and its
    rpc would answer Unimplemented: refuse it at registration. Handlers are recognised as Go
    names them: async methods whose name starts with a capital letter."""
    rpcs = _rpcs(descriptor)
    for name in names:
        if not name[:1].isupper() or name in rpcs:
            continue
        if inspect.iscoroutinefunction(getattr(implementation, name, None)):
            import difflib  # only for this error: the module costs a shim process ~0.2 MB

            close = difflib.get_close_matches(name, rpcs, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(
                f"{type(implementation).__name__}.{name} is not an rpc of "
                f"{descriptor.full_name}{hint}; its rpcs are {', '.join(rpcs)}"
            )


def _streaming(rpc: MethodDescriptor) -> bool:
    return bool(rpc.client_streaming or rpc.server_streaming)


def _called_with_implementation(
    handler: Any, bound: bool
) -> Callable[[object, RequestContext, Any], Awaitable[Any]]:
    # Every handler is called the same way, so that the common case (a class's function)
    # costs no test per request; a handler bound to its instance pays a call instead.
    if not bound:
        return handler  # type: ignore[no-any-return]
    return lambda implementation, ctx, request: handler(ctx, request)


def _bind(
    descriptor: ServiceDescriptor, handler_of: Callable[[str], Any], *, bound: bool
) -> _Table:
    methods: _Table = {}
    for method in descriptor.methods:
        full_name = f"/{descriptor.full_name}/{method.name}"
        handler = handler_of(method.name)
        if handler is not None and not (callable(handler) and inspect.iscoroutinefunction(handler)):
            raise TypeError(f"{full_name}: {handler!r} is not an async method")
        # Only the rpcs with a handler are in the table (a streaming one is answered
        # Unimplemented whatever handler it has): a request finds one there or is refused.
        if handler is None or _streaming(method):
            continue
        methods[method.name] = Method(
            service=descriptor.full_name,
            name=method.name,
            full_name=full_name,
            input_type=GetMessageClass(method.input_type),
            output_type=GetMessageClass(method.output_type),
            handler=_called_with_implementation(handler, bound),
            inline=_is_nonblocking(handler),
        )
    return methods
