"""Shared mode in-process: several daemons in one process, each failing, stalling, being
flooded or shutting down on its own; the process's signals, reaper and log routing."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import empty_pb2

from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import (
    INTERNAL_PLUGIN,
    REAPER_PLUGIN,
    TTRPC_PLUGIN,
    Flags,
    InitContext,
    Manager,
    Registration,
    Registry,
)
from trioshim.shim.address import new_socket, socket_path
from trioshim.shim.log import LOG_NAME
from trioshim.shim.shared import SharedShims, route_module_logs
from trioshim.shim.sharedclient import ShimSpec
from trioshim.shim.stackdump import BEGIN, END
from trioshim.testing import open_fake_containerd
from trioshim.ttrpc import NAMESPACE_KEY, Unknown
from trioshim.ttrpc.client import Client, Stub, open_unix_client

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
module_log = logging.getLogger("trioshim.tests.shared")


class Service:
    """Connect answers (and logs through a module logger), Wait blocks, State raises, Pause
    crashes the daemon's root nursery, Shutdown shuts the daemon down."""

    reapers: list[object] = []

    def __init__(self, ctx: InitContext) -> None:
        self.ctx = ctx
        self.shutdown = ctx.get(INTERNAL_PLUGIN)
        Service.reapers.append(ctx.get(REAPER_PLUGIN))

    def ttrpc_services(self) -> list[tuple[Any, object]]:
        return [(TASK, self)]

    async def Connect(self, ctx: Any, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        module_log.info("connect", extra={"fields": {"shim": self.ctx.id}})
        return shim_pb2.ConnectResponse(shim_pid=os.getpid())

    async def Wait(self, ctx: Any, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def State(self, ctx: Any, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        raise RuntimeError("handler exploded")

    async def Pause(self, ctx: Any, req: shim_pb2.PauseRequest) -> empty_pb2.Empty:
        async def crash() -> None:
            raise RuntimeError("background task exploded")

        self.ctx.nursery.start_soon(crash)
        return empty_pb2.Empty()

    async def Shutdown(self, ctx: Any, req: shim_pb2.ShutdownRequest) -> empty_pb2.Empty:
        self.shutdown.shutdown("Shutdown RPC")
        return empty_pb2.Empty()


async def _init(ctx: InitContext) -> Service:
    return Service(ctx)


class Quick(Manager):
    shutdown_grace = 2.0
    abandon_timeout = None


@dataclass
class Shared:
    shims: SharedShims
    tmp: str
    ttrpc_address: str
    ended: trio.Event
    addresses: list[str] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    log_readers: list[int] = field(default_factory=list)

    def served(self) -> list[str]:
        return sorted(self.shims.daemons)

    async def add(self) -> int | None:
        """One more daemon (id ``c<n>``), its bundle's log FIFO read as containerd does."""
        i = len(self.addresses)
        bundle = os.path.join(self.tmp, f"c{i}")
        os.mkdir(bundle)
        os.mkfifo(os.path.join(bundle, "log"))
        self.log_readers.append(os.open(os.path.join(bundle, "log"), os.O_RDONLY | os.O_NONBLOCK))
        address = f"unix://{self.tmp}/s{i}"
        self.bundles.append(bundle)
        self.addresses.append(address)
        flags = Flags(namespace="default", id=f"c{i}", address="", bundle=bundle)
        spec = ShimSpec(flags, bundle, self.ttrpc_address, address)
        return await self.shims.add(spec, new_socket(address))


@contextlib.asynccontextmanager
async def shared(
    count: int, *, handle_signals: bool = False, extra: tuple[Registration, ...] = ()
) -> AsyncIterator[Shared]:
    """``count`` daemons (ids c0, c1, ...) served by one :class:`SharedShims`."""
    tmp = tempfile.mkdtemp(prefix="shared-", dir="/tmp")
    registry = Registry([Registration(TTRPC_PLUGIN, "task", _init), *extra])
    shims = SharedShims(Quick(), registry, handle_signals=handle_signals)
    ended = trio.Event()

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        await shims.serve(task_status=task_status)
        ended.set()

    env: Shared | None = None
    try:
        async with open_fake_containerd() as containerd, trio.open_nursery() as nursery:
            await nursery.start(serve)
            env = Shared(shims, tmp, containerd.ttrpc_address, ended)
            for _ in range(count):
                assert await env.add() is None
            yield env
            shims.shutdown_all("test over")
    finally:
        for fd in env.log_readers if env else ():
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Conn:
    task: Stub
    client: Client


@contextlib.asynccontextmanager
async def tasks(addresses: list[str]) -> AsyncIterator[list[Conn]]:
    """A Task client per address (``.client`` tells when the shim closed the connection)."""
    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for address in addresses:
            client = await stack.enter_async_context(open_unix_client(address))
            stub = Stub(client, TASK, metadata=[(NAMESPACE_KEY, "default")])
            conns.append(Conn(stub, client))
        yield conns


async def gone(address: str) -> bool:
    return not await trio.Path(socket_path(address)).exists()


async def test_shutdown_of_one_shim_leaves_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with shared(3) as env, tasks(env.addresses) as (t0, t1, t2):
        await t0.task.Shutdown(shim_pb2.ShutdownRequest(id="c0"))
        await t0.client.wait_closed()  # what containerd takes for the shim's exit
        assert await env.shims.wait(env.addresses[0]) == 0
        assert env.served() == env.addresses[1:]
        assert await gone(env.addresses[0])
        for task in (t1, t2):
            assert (
                await task.task.Connect(shim_pb2.ConnectRequest(id="x"))
            ).shim_pid == os.getpid()
        assert not env.ended.is_set()

        await t1.task.Shutdown(shim_pb2.ShutdownRequest(id="c1"))
        await t2.task.Shutdown(shim_pb2.ShutdownRequest(id="c2"))
        await env.ended.wait()  # the last daemon gone: the process is done
        assert env.served() == []
        assert all([await gone(a) for a in env.addresses])


async def test_exception_in_one_shim_ends_only_that_shim() -> None:
    async with shared(2) as env, tasks(env.addresses) as (t0, t1):
        with pytest.raises(Unknown, match="handler exploded"):
            await t1.task.State(shim_pb2.StateRequest(id="c1"))  # a handler's error: an answer
        statuses: list[int | None] = []

        async def wait_for_c0() -> None:
            statuses.append(await env.shims.wait(env.addresses[0]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_c0)
            await t0.task.Pause(shim_pb2.PauseRequest(id="c0"))  # its root nursery crashes
        await t0.client.wait_closed()
        assert statuses == [1]
        assert env.served() == env.addresses[1:]
        assert await gone(env.addresses[0])
        assert (await t1.task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid == os.getpid()


async def test_blocked_handler_stalls_only_its_shim(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with shared(2) as env, tasks(env.addresses) as (t0, t1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_call_until_closed, t0.task.Wait, shim_pb2.WaitRequest(id="c0"))
            await trio.testing.wait_all_tasks_blocked()
            before = trio.current_time()
            assert (await t1.task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid
            assert trio.current_time() == before  # answered at once, Wait still blocked

            await env.shims.stop(env.addresses[0], "test")
            assert trio.current_time() - before == Quick.shutdown_grace  # then cancelled
        assert env.served() == env.addresses[1:]
        assert (await t1.task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid


async def test_flood_of_requests_on_one_shim_leaves_the_others_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flood = 500
    async with shared(2) as env, tasks(env.addresses) as (t0, t1):
        async with trio.open_nursery() as nursery:
            for _ in range(flood):
                nursery.start_soon(_call_until_closed, t0.task.Wait, shim_pb2.WaitRequest(id="c0"))
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(10):
                assert (await t1.task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid
            await env.shims.stop(env.addresses[0], "flooded")
        assert env.served() == env.addresses[1:]
        assert (await t1.task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid


async def test_sigterm_ends_every_shim_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    async with shared(3, handle_signals=True) as env, tasks(env.addresses) as clients:
        os.kill(os.getpid(), signal.SIGTERM)
        await env.ended.wait()
        for conn in clients:
            await conn.client.wait_closed()
        assert env.served() == []
        assert all([await gone(a) for a in env.addresses])


async def test_one_reaper_serves_every_shim() -> None:
    Service.reapers.clear()
    async with shared(3) as env:
        assert Service.reapers == [env.shims.reaper] * 3
        completed = await env.shims.reaper.run(["/bin/sh", "-c", "exit 7"])
        assert completed.status == 7


async def test_each_shim_logs_to_its_own_fifo() -> None:
    logger = logging.getLogger(LOG_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    route_module_logs()
    try:
        async with shared(2) as env, tasks(env.addresses) as clients:
            for conn in clients:
                await conn.task.Connect(shim_pb2.ConnectRequest(id="x"))
            logs = [_drain(fd) for fd in env.log_readers]
    finally:
        logger.handlers, logger.level, logger.propagate = saved
    for i, text in enumerate(logs):
        connects = [line for line in text.splitlines() if "msg=connect" in line]
        assert len(connects) == 1 and f"shim=c{i}" in connects[0], text
        assert f"shim=c{1 - i}" not in text


async def _call_until_closed(method: Any, request: Any) -> None:
    with contextlib.suppress(Exception):
        await method(request)


def _drain(fd: int) -> str:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return data.decode()
            raise
        if not chunk:
            return data.decode()
        data += chunk


async def test_sigterm_reaches_a_shim_still_starting_and_no_new_one_is_taken() -> None:
    gate = trio.Event()

    async def slow_init(ctx: InitContext) -> object:
        if ctx.id == "c1":
            await gate.wait()  # a plugin still initialising when the signal comes
        return object()

    slow = Registration("io.trioshim.test.v1", "slow", slow_init)
    async with shared(1, extra=(slow,)) as env:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.add)
            await trio.testing.wait_all_tasks_blocked()
            assert len(env.served()) == 2  # c1 is starting
            env.shims.shutdown_all("signal SIGTERM")
            gate.set()
        await env.ended.wait()  # c1 too shut down once it served
        assert env.served() == []
        with pytest.raises(RuntimeError, match="shutting down"):
            await env.add()


async def test_sigusr1_dumps_the_process_into_every_shims_log() -> None:
    async with shared(2, handle_signals=True) as env:
        os.kill(os.getpid(), signal.SIGUSR1)
        dumps = [await _read_until(fd, END) for fd in env.log_readers]
    for dump in dumps:
        assert BEGIN in dump and "_run_daemon" in dump  # the tasks of every daemon


async def _read_until(fd: int, marker: str) -> str:
    text = ""
    while marker not in text:
        await trio.lowlevel.wait_readable(fd)
        text += _drain(fd)
    return text
