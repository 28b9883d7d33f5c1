"""The shared process's control socket: what start helpers send, and what it refuses."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import trio

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import TTRPC_PLUGIN, Flags, InitContext, Manager, Registration, Registry
from trioshim.shim.address import new_socket
from trioshim.shim.shared import SharedShims
from trioshim.shim.sharedclient import ShimSpec, ask
from trioshim.testing import connect_task, open_fake_containerd

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]


class Connects:
    """A Task service that answers Connect only."""

    def ttrpc_services(self) -> list[tuple[Any, object]]:
        return [(TASK, self)]

    async def Connect(self, ctx: Any, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        return shim_pb2.ConnectResponse(shim_pid=os.getpid())


async def _init(ctx: InitContext) -> Connects:
    return Connects()


class Quick(Manager):
    abandon_timeout = None


@contextlib.asynccontextmanager
async def control_served() -> AsyncIterator[tuple[SharedShims, str, str, str]]:
    """A SharedShims on a control socket: (shims, control path, temp dir, ttrpc address)."""
    tmp = tempfile.mkdtemp(prefix="sharedctl-", dir="/tmp")
    path = os.path.join(tmp, "control")
    control = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await control.bind(path)
        control.listen()
        shims = SharedShims(
            Quick(), Registry([Registration(TTRPC_PLUGIN, "task", _init)]), handle_signals=False
        )
        async with open_fake_containerd() as containerd, trio.open_nursery() as nursery:
            await nursery.start(shims.serve, control)
            yield shims, path, tmp, containerd.ttrpc_address
            shims.shutdown_all("test over")
    finally:
        control.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _ask(path: str, message: dict[str, Any], fds: tuple[int, ...] = ()) -> Any:
    return await trio.to_thread.run_sync(functools.partial(ask, path, message, fds))


def _spec(tmp: str, ttrpc_address: str, id: str) -> dict[str, Any]:
    bundle = os.path.join(tmp, id)
    os.makedirs(bundle, exist_ok=True)
    flags = Flags(namespace="default", id=id, address="", bundle=bundle)
    return ShimSpec(flags, bundle, ttrpc_address, f"unix://{tmp}/{id}.sock").to_wire()


async def test_serve_hands_a_shim_over_and_ping_answers() -> None:
    async with control_served() as (shims, path, tmp, ttrpc):
        wire = _spec(tmp, ttrpc, "c0")
        listener = new_socket(wire["socket_address"])
        try:
            reply = await _ask(path, {"op": "serve", **wire}, (listener.fileno(),))
        finally:
            listener.close()  # the process has its own copy now
        assert reply == {"ok": True, "pid": os.getpid()}
        async with connect_task(wire["socket_address"]) as task:
            assert (await task.Connect(shim_pb2.ConnectRequest(id="c0"))).shim_pid
        assert await _ask(path, {"op": "ping"}) == {"ok": True, "pid": os.getpid()}
        assert sorted(shims.daemons) == [wire["socket_address"]]


async def test_bad_requests_get_a_clear_error_and_harm_nothing() -> None:
    async with control_served() as (shims, path, tmp, ttrpc):
        wire = _spec(tmp, ttrpc, "good")
        listener = new_socket(wire["socket_address"])
        with listener:
            assert (await _ask(path, {"op": "serve", **wire}, (listener.fileno(),)))["ok"]

        def refused(reply: Any, text: str) -> bool:
            return reply["ok"] is False and text in reply["error"]

        assert refused(await _ask(path, {"op": "launch"}), "unknown request 'launch'")
        no_fd = _spec(tmp, ttrpc, "nofd")
        assert refused(await _ask(path, {"op": "serve", **no_fd}), "exactly one socket")
        bad_id = {**_spec(tmp, ttrpc, "x"), "id": "../../x"}
        with new_socket(f"unix://{tmp}/bad.sock") as sock:
            reply = await _ask(path, {"op": "serve", **bad_id}, (sock.fileno(),))
        assert refused(reply, "id")
        with new_socket(f"unix://{tmp}/dup.sock") as sock:
            twice = await _ask(path, {"op": "serve", **wire}, (sock.fileno(),))
        assert refused(twice, "already served")
        assert refused(await _ask(path, {"op": "serve", "id": 5}), "malformed")

        def garbage() -> Any:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
                raw.connect(path)
                raw.send(b"\xff not marshal")
                return raw.recv(65536)

        assert b"error" in await trio.to_thread.run_sync(garbage)
        assert sorted(shims.daemons) == [wire["socket_address"]]  # still serving, alone
        async with connect_task(wire["socket_address"]) as task:
            assert (await task.Connect(shim_pb2.ConnectRequest(id="good"))).shim_pid


async def test_a_handed_over_socket_is_not_inherited_by_what_the_process_runs() -> None:
    """A descriptor received with ``SCM_RIGHTS`` is inheritable unless asked otherwise: the
    daemon's listener would then stay open in every runc and logger the process spawns."""
    async with control_served() as (shims, path, tmp, ttrpc):
        wire = _spec(tmp, ttrpc, "c0")
        with new_socket(wire["socket_address"]) as listener:
            assert (await _ask(path, {"op": "serve", **wire}, (listener.fileno(),)))["ok"]
        served = shims.daemons[wire["socket_address"]].config.listener
        assert served is not None
        assert not os.get_inheritable(served.fileno())
