"""Attribute-style calls for any service: ``await Stub(client, descriptor).State(request)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

if TYPE_CHECKING:
    from .client import Client, Metadata

__all__ = ["Stub"]


class _StubMethod:
    __slots__ = ("_client", "_metadata", "_method", "_response_type", "_service", "_timeout")

    def __init__(
        self,
        client: Client,
        service: str,
        method: str,
        response_type: type[Message],
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> None:
        self._client = client
        self._service = service
        self._method = method
        self._response_type = response_type
        self._metadata = metadata
        self._timeout = timeout

    async def __call__(
        self,
        request: Message,
        *,
        metadata: Metadata = (),
        timeout: float | None = None,  # noqa: ASYNC109 (sent on the wire as timeout_nano)
    ) -> Any:
        return await self._client.call(
            self._service,
            self._method,
            request,
            self._response_type,
            metadata=(*self._metadata, *metadata),
            timeout=self._timeout if timeout is None else timeout,
        )

    def __repr__(self) -> str:
        return f"<ttrpc stub /{self._service}/{self._method}>"


class Stub:
    """Attribute-style calls for any service: ``await Stub(client, desc).State(request)``.

    Each rpc of the ``ServiceDescriptor`` becomes an async method taking the request message
    (plus optional ``metadata=`` and ``timeout=``) and returning the output message type.
    ``metadata`` and ``timeout`` given here apply to every call.
    """

    def __init__(
        self,
        client: Client,
        service: ServiceDescriptor,
        *,
        metadata: Metadata = (),
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._service = service
        self._methods: dict[str, _StubMethod] = {}
        meta = tuple(metadata)
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            self._methods[method.name] = _StubMethod(
                client,
                service.full_name,
                method.name,
                GetMessageClass(method.output_type),
                meta,
                timeout,
            )

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(f"{self._service.full_name} has no unary rpc {name!r}") from None

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._methods]
