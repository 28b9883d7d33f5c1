"""What a handler is told about its request: :class:`RequestContext`, and the request's
metadata decoded only when a handler looks at it."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from trioshim.api.ttrpc.request_pb2 import Request

from .handshake import PeerCredentials

__all__ = ["NAMESPACE_KEY", "LazyMetadata", "RequestContext"]

#: Metadata key carrying the containerd namespace on every namespaced call.
NAMESPACE_KEY: Final = "containerd-namespace-ttrpc"


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about its request besides the message.

    ``metadata`` maps each key (verbatim, as received) to its values in wire order.
    ``deadline`` is in Trio time (``math.inf`` when the caller set none); the handler already
    runs inside a cancel scope with that deadline.

    Each request gets its own, and the server reads nothing back from it. (It is not frozen:
    a frozen dataclass sets each field through ``object.__setattr__``, which doubled the cost
    of building one, a few percent of a trivial call.)
    """

    service: str
    method: str
    metadata: Mapping[str, list[str]] = field(default_factory=dict)
    deadline: float = math.inf
    stream_id: int = 0
    peer: PeerCredentials | None = None

    @property
    def full_method(self) -> str:
        """``/<service>/<method>``, the form Go uses in logs and interceptors."""
        return f"/{self.service}/{self.method}"

    def get(self, key: str) -> str | None:
        """First value for ``key`` looked up lower-cased, like Go's ``GetMetadataValue``."""
        values = self.metadata.get(key.lower())
        return values[0] if values else None

    @property
    def namespace(self) -> str | None:
        """The containerd namespace (first ``containerd-namespace-ttrpc`` value), if sent."""
        return self.get(NAMESPACE_KEY)


class LazyMetadata(Mapping[str, list[str]]):
    """A request's metadata as ``{key: [values in wire order]}``, decoded on first use.

    Most handlers never look at it, and decoding the protobuf list costs about as much as the
    rest of a trivial call's dispatch.
    """

    __slots__ = ("_decoded", "_request")

    def __init__(self, request: Request) -> None:
        self._request: Request | None = request
        self._decoded: dict[str, list[str]] | None = None

    def _dict(self) -> dict[str, list[str]]:
        decoded = self._decoded
        if decoded is None:
            assert self._request is not None
            decoded = {}
            for kv in self._request.metadata:
                decoded.setdefault(kv.key, []).append(kv.value)
            self._decoded = decoded
            self._request = None
        return decoded

    def __getitem__(self, key: str) -> list[str]:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())
