"""The server's shortcuts behave like the long way: lazily decoded metadata, lock-free writes,
no batching for a request read alone, replies written by the reader itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import wrappers_pb2
from test_ttrpc_server import connect, echo, request_frame
from ttrpc_testing import TEST_SERVICE, RawPeer, TestService

from trioshim.api.ttrpc.request_pb2 import KeyValue, Request
from trioshim.ttrpc import RequestContext, Server, nonblocking, open_unix_listener
from trioshim.ttrpc.context import LazyMetadata

BIG = 2 << 20  # more than a unix socket buffer holds: the reply's write has to wait


def test_metadata_decoded_on_first_use_like_a_dict() -> None:
    pairs = [("b", "1"), ("ns", "k8s.io"), ("b", "2"), ("Mixed", "x")]
    request = Request(metadata=[KeyValue(key=k, value=v) for k, v in pairs])
    metadata = LazyMetadata(request)
    expected = {"b": ["1", "2"], "ns": ["k8s.io"], "Mixed": ["x"]}
    assert metadata == expected
    assert (len(metadata), list(metadata), metadata["b"]) == (3, ["b", "ns", "Mixed"], ["1", "2"])
    assert metadata.get("mixed") is None and "Mixed" in metadata
    assert repr(metadata) == repr(expected)
    assert LazyMetadata(Request()) == {}


class Marked(TestService):
    """Echo and Big answered by the connection's reader (no task per request)."""

    @nonblocking
    async def Echo(self, ctx: RequestContext, req: Any) -> Any:
        return await super().Echo(ctx, req)

    @nonblocking
    async def Big(self, ctx: RequestContext, req: Any) -> Any:
        return await super().Big(ctx, req)


async def serve(nursery: trio.Nursery, path: Path, impl: object) -> tuple[Server, RawPeer]:
    server = Server()
    server.register(TEST_SERVICE, impl)
    await nursery.start(server.serve, await open_unix_listener(path))
    return server, await connect(path)


@pytest.mark.parametrize("impl_type", [TestService, Marked], ids=["task", "reader"])
async def test_reply_written_in_part_then_the_rest_when_there_is_room(
    nursery: trio.Nursery, sock_path: Path, impl_type: type[TestService]
) -> None:
    # The Big reply fills the socket buffer: its first part goes out at once, the rest as the
    # peer reads, while the Echo reply waits for it. Written by a handler task, the rest goes
    # out under the send lock; written by the reader itself (marked handler), the reader waits
    # for room, reading nothing meanwhile, then reads and answers the Echo.
    server, peer = await serve(nursery, sock_path, impl_type())
    with trio.fail_after(30):  # bounds a hang only
        await peer.send(
            request_frame(1, "Big", wrappers_pb2.UInt64Value(value=BIG).SerializeToString())
        )
        await trio.testing.wait_all_tasks_blocked()
        await peer.send(request_frame(3, "Echo", echo("after")))
        await trio.testing.wait_all_tasks_blocked()
        sid, response = await peer.response()
        assert sid == 1 and len(wrappers_pb2.BytesValue.FromString(response.payload).value) == BIG
        sid, response = await peer.response()
        assert sid == 3 and wrappers_pb2.StringValue.FromString(response.payload).value == "after"
    await peer.aclose()
    server.close()


@pytest.mark.parametrize("impl_type", [TestService, Marked], ids=["task", "reader"])
async def test_requests_read_alone_answered_while_a_batch_waits_for_a_sibling(
    nursery: trio.Nursery, sock_path: Path, impl_type: type[TestService]
) -> None:
    # Two requests read together, one of which never answers, then requests read one at a
    # time: each of those is answered at once (a request read alone belongs to no batch),
    # whatever the silent sibling's batch still waits for.
    server, peer = await serve(nursery, sock_path, impl_type())
    forever = wrappers_pb2.DoubleValue(value=1e9).SerializeToString()
    with trio.fail_after(30):  # bounds a hang only
        await peer.send(request_frame(1, "Sleep", forever) + request_frame(3, "Echo", echo("a")))
        sid, response = await peer.response()
        assert sid == 3 and wrappers_pb2.StringValue.FromString(response.payload).value == "a"
        for sid in (5, 7, 9):
            await peer.send(request_frame(sid, "Echo", echo(f"m{sid}")))
            got, response = await peer.response()
            value = wrappers_pb2.StringValue.FromString(response.payload).value
            assert (got, value) == (sid, f"m{sid}")
    await peer.aclose()
    server.close()
