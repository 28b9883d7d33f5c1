"""The server's shortcuts behave like the long way: lazily decoded metadata, lock-free writes."""

from __future__ import annotations

import trio
import trio.testing
from google.protobuf import wrappers_pb2
from test_ttrpc_server import echo, request_frame
from ttrpc_testing import RawPeer

from trioshim.api.ttrpc.request_pb2 import KeyValue, Request
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


async def test_reply_written_in_part_then_the_rest_under_the_lock(peer: RawPeer) -> None:
    # The Big reply fills the socket buffer: its first part goes out without the lock, the rest
    # under it as the peer reads; the Echo reply written meanwhile waits for it.
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
