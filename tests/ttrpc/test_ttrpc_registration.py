"""Registering a service costs one small entry per server, not a record per rpc: the table of
rpcs is made once per implementation class (shared mode holds many servers in one process)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import trio
from google.protobuf import wrappers_pb2
from test_ttrpc_server import echo, request_frame
from ttrpc_testing import TEST_SERVICE, RawPeer, TestService

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.ttrpc import RequestContext, Server, open_unix_listener
from trioshim.ttrpc.registry import ServiceRegistry

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]


async def _answer(self: object, ctx: RequestContext, request: Any) -> Any: ...


# Every rpc of the Task service (17), as the runc shim's handlers are.
FullTask = type("FullTask", (), {method.name: _answer for method in TASK.methods})


def bytes_per_registration(count: int, implementation: type) -> float:
    registries = [ServiceRegistry() for _ in range(count)]
    instances = [implementation() for _ in range(count)]
    ServiceRegistry().register(TASK, implementation())  # the class's table, made once
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for registry, instance in zip(registries, instances, strict=True):
            registry.register(TASK, instance)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return grown / count


def test_a_registration_does_not_cost_a_record_per_rpc() -> None:
    # Measured: ~500 bytes (the registry's entries), whatever the number of rpcs; binding each
    # of the 17 rpcs per registration cost ~8 kB.
    assert bytes_per_registration(50, FullTask) < 1024


class Named(TestService):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    async def Echo(self, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.StringValue(value=f"{self.name}: {req.value}")


async def echo_from(path: Path, text: str) -> str:
    peer = RawPeer(await trio.open_unix_socket(str(path)))
    try:
        await peer.send(request_frame(1, "Echo", echo(text)))
        _, response = await peer.response()
        return wrappers_pb2.StringValue.FromString(response.payload).value
    finally:
        await peer.aclose()


async def test_each_server_calls_its_own_instance(nursery: trio.Nursery, sock_dir: Path) -> None:
    for name in ("a", "b"):
        server = Server()
        server.register(TEST_SERVICE, Named(name))
        await nursery.start(server.serve, await open_unix_listener(sock_dir / name))
    assert await echo_from(sock_dir / "a", "hi") == "a: hi"
    assert await echo_from(sock_dir / "b", "hi") == "b: hi"


async def test_a_class_patched_after_a_registration_is_served_patched(
    nursery: trio.Nursery, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Server().register(TEST_SERVICE, Named("before"))

    async def shouting(self: Named, ctx: RequestContext, req: Any) -> Any:
        return wrappers_pb2.StringValue(value=req.value.upper())

    monkeypatch.setattr(Named, "Echo", shouting)
    server = Server()
    server.register(TEST_SERVICE, Named("after"))
    await nursery.start(server.serve, await open_unix_listener(sock_dir / "s"))
    assert await echo_from(sock_dir / "s", "hi") == "HI"


class Misspelt(FullTask):  # type: ignore[misc,valid-type]
    async def Creat(self, ctx: RequestContext, req: Any) -> Any: ...


def test_a_misspelt_class_is_refused_at_every_registration() -> None:
    for _ in range(2):
        with pytest.raises(TypeError, match=r"Misspelt\.Creat is not an rpc"):
            Server().register(TASK, Misspelt())


def test_a_misspelt_handler_set_on_the_instance_is_refused() -> None:
    implementation = FullTask()
    implementation.Creat = _answer.__get__(implementation)
    with pytest.raises(TypeError, match=r"FullTask\.Creat is not an rpc"):
        Server().register(TASK, implementation)
