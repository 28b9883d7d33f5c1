"""The daemon's root nursery and its shutdown order, in virtual time where timing matters."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Awaitable
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import empty_pb2

from trioshim.api.containerd.events import task_pb2 as events
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import (
    EVENT_PLUGIN,
    INTERNAL_PLUGIN,
    REAPER_PLUGIN,
    TTRPC_PLUGIN,
    Flags,
    InitContext,
    Manager,
    Publisher,
    Reaper,
    Registration,
    Registry,
    ShutdownService,
)
from trioshim.shim.address import new_socket
from trioshim.shim.daemon import DaemonConfig, serve_daemon
from trioshim.shim.stackdump import BEGIN, END
from trioshim.testing import ShimStartupError, open_fake_containerd, open_shim
from trioshim.ttrpc import ClosedError, Unimplemented, Unknown

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]


class Service:
    """A Task service with hooks: Connect answers, Wait blocks, State raises."""

    def __init__(self, ctx: InitContext, trace: list[str]) -> None:
        self.ctx = ctx
        self.trace = trace
        self.shutdown: ShutdownService = ctx.get(INTERNAL_PLUGIN)
        self.publisher: Publisher = ctx.get(EVENT_PLUGIN)
        self.reaper: Reaper = ctx.get(REAPER_PLUGIN)

        async def callback() -> None:
            trace.append("callback ran")

        self.shutdown.register_callback(callback)

    def ttrpc_services(self) -> list[tuple[Any, object]]:
        return [(TASK, self)]

    async def Connect(self, ctx: Any, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        return shim_pb2.ConnectResponse(shim_pid=os.getpid())

    async def Wait(self, ctx: Any, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        self.trace.append("handler waiting")
        try:
            await trio.sleep_forever()
        finally:
            self.trace.append("handler cancelled")

    async def State(self, ctx: Any, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        raise RuntimeError("handler exploded")

    async def Shutdown(self, ctx: Any, req: shim_pb2.ShutdownRequest) -> empty_pb2.Empty:
        self.shutdown.shutdown("Shutdown RPC")
        return empty_pb2.Empty()


def registry(trace: list[str], *extra: Registration) -> Registry:
    async def init(ctx: InitContext) -> Service:
        return Service(ctx, trace)

    return Registry([Registration(TTRPC_PLUGIN, "task", init, requires=(EVENT_PLUGIN,)), *extra])


def exists(path: str) -> bool:
    return os.path.exists(path)


def stages(trace: list[str]) -> list[str]:
    """The shutdown part of a trace (from the request on)."""
    start = next(i for i, s in enumerate(trace) if s.startswith("shutdown:"))
    return trace[start:]


def quiet_shutdown(reason: str) -> list[str]:
    """The stages of a shutdown with nothing in flight, every event delivered, exit 0."""
    return [
        f"shutdown: {reason}",
        "stop accepting",
        "in-flight done",
        "publisher drained",
        "callbacks",
        "callbacks done",
        "socket removed",
        "exit 0",
    ]


class Quick(Manager):
    shutdown_grace = 2.0


async def test_serves_plugins_unimplemented_and_raising_handler() -> None:
    trace: list[str] = []
    async with open_shim(Quick(), registry(trace)) as shim:
        reply = await shim.task.Connect(shim_pb2.ConnectRequest(id="t"))
        assert reply.shim_pid == os.getpid()
        with pytest.raises(Unimplemented):
            await shim.task.Pause(shim_pb2.PauseRequest(id="t"))
        with pytest.raises(Unknown, match="handler exploded"):
            await shim.task.State(shim_pb2.StateRequest(id="t"))
        # A raising handler does not take the daemon down.
        assert (await shim.task.Connect(shim_pb2.ConnectRequest(id="t"))).shim_pid
        await shim.task.Shutdown(shim_pb2.ShutdownRequest(id="t"))
        assert await shim.wait() == 0
        assert not exists(shim.socket_path)
    assert stages(shim.trace) == quiet_shutdown("Shutdown RPC")
    assert trace == ["callback ran"]
    # Every built-in came before the user's plugin.
    plugins = [s for s in shim.trace if s.startswith("plugin ")]
    assert plugins == [
        "plugin io.containerd.internal.v1.shutdown",
        "plugin io.containerd.event.v1.publisher",
        "plugin io.trioshim.reaper.v1.reaper",
        "plugin io.containerd.ttrpc.v1.task",
    ]


async def test_client_disconnect_does_not_stop_daemon() -> None:
    trace: list[str] = []
    async with open_shim(Quick(), registry(trace)) as shim:
        await shim.client.aclose()
        from trioshim.testing import connect_task

        async with connect_task(shim.address) as task:
            assert (await task.Connect(shim_pb2.ConnectRequest(id="t"))).shim_pid
        assert not shim.exited.is_set()


async def test_publisher_that_never_completes_ends_shutdown_at_exactly_5s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: list[str] = []
    async with open_fake_containerd() as containerd:

        async def stall(envelope: Any) -> None:
            await trio.sleep_forever()

        containerd.forward_hook = stall
        async with open_shim(Quick(), registry(trace), containerd=containerd) as shim:
            assert shim.config.publisher is not None
            shim.config.publisher.publish("/tasks/oom", events.TaskOOM(container_id="t"))
            await trio.testing.wait_all_tasks_blocked()
            assert containerd.calls == 1  # the Forward is in flight, and will never answer
            started = trio.current_time()
            shim.shutdown("SIGTERM")
            status = await shim.wait()
            assert trio.current_time() - started == 5.0
            assert status == 1
            assert not exists(shim.socket_path)
    assert "publisher not closed" in stages(shim.trace)
    assert any('level=error msg="publisher not closed"' in line for line in shim.log)
    assert stages(shim.trace)[-2:] == ["socket removed", "exit 1"]


async def test_sigterm_during_in_flight_request_documented_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: list[str] = []
    async with open_shim(Quick(), registry(trace), handle_signals=True, trace=trace) as shim:
        failures: list[BaseException] = []

        async def wait_call() -> None:
            try:
                await shim.task.Wait(shim_pb2.WaitRequest(id="t"))
            except ClosedError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_call)
            await trio.testing.wait_all_tasks_blocked()
            assert trace[-2:] == ["serving", "handler waiting"]
            started = trio.current_time()
            os.kill(os.getpid(), signal.SIGTERM)
            assert await shim.wait() == 0
            assert trio.current_time() - started == Quick.shutdown_grace
        assert len(failures) == 1  # the cancelled request's connection was closed
    assert stages(trace) == [
        "shutdown: signal SIGTERM",
        "stop accepting",
        "handler cancelled",
        "in-flight cancelled",
        "publisher drained",
        "callbacks",
        "callback ran",
        "callbacks done",
        "socket removed",
        "exit 0",
    ]


async def test_stack_dump_on_sigusr1() -> None:
    trace: list[str] = []
    async with open_shim(Quick(), registry(trace), handle_signals=True) as shim:
        os.kill(os.getpid(), signal.SIGUSR1)
        dump = await shim.wait_for_log(BEGIN)
    assert END in dump and "level=info" in dump
    assert "serve_daemon" in dump  # a Trio task's await frame
    assert "Current thread" in dump or "Thread 0x" in dump  # faulthandler's thread dump


# ---------------------------------------------------------------------------------------------
# every exit path removes the socket


def daemon_config(
    reg: Registry, trace: list[str], **kwargs: Any
) -> tuple[DaemonConfig, str, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(dir="/tmp")
    path = os.path.join(tmp.name, "s")
    config = DaemonConfig(
        flags=Flags(namespace="default", id="t"),
        manager=Quick(),
        registry=reg,
        bundle=tmp.name,
        ttrpc_address=os.path.join(tmp.name, "nobody-home"),
        log=logging.getLogger("test.daemon"),
        listener=new_socket(path),
        socket_address=path,
        handle_signals=False,
        plugin_config={},
        trace=trace.append,
        **kwargs,
    )
    return config, path, tmp


async def _exit_path(extra: Registration) -> list[str]:
    trace: list[str] = []
    config, path, tmp = daemon_config(registry(trace, extra), trace)
    with tmp:
        assert exists(path)
        assert await serve_daemon(config) == 1
        assert not exists(path)
    return trace


async def test_plugin_init_failure_removes_socket() -> None:
    async def broken(ctx: InitContext) -> object:
        raise OSError("no cgroup for you")

    trace = await _exit_path(Registration("io.example.v1", "broken", broken, requires=("*",)))
    assert trace[-3:] == [
        "crash: failed to load plugin io.example.v1.broken: no cgroup for you",
        "socket removed",
        "exit 1",
    ]
    assert "serving" not in trace


async def test_crash_inside_the_nursery_removes_socket_and_leaves_no_task() -> None:
    async def crashing(ctx: InitContext) -> object:
        async def background() -> None:
            await trio.lowlevel.checkpoint()
            raise ValueError("plugin task crashed")

        ctx.nursery.start_soon(background)
        return object()

    trace = await _exit_path(Registration("io.example.v1", "crash", crashing))
    assert trace[-3:] == ["crash: plugin task crashed", "socket removed", "exit 1"]
    root = trio.lowlevel.current_root_task()
    assert root is not None
    names = _task_names(root)
    assert not [n for n in names if "trioshim" in n], names


def _task_names(task: trio.lowlevel.Task) -> list[str]:
    out = [task.name]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            out.extend(_task_names(child))
    return out


async def test_missing_ttrpc_service_and_bad_fd3_are_errors() -> None:
    trace: list[str] = []
    config, path, tmp = daemon_config(Registry(), trace)
    with tmp:
        assert await serve_daemon(config) == 1
        assert "crash: required that ttrpc service" in trace
        assert not exists(path)
    trace.clear()
    config, path, tmp = daemon_config(registry(trace), trace)
    with tmp:
        config.listener.close()  # type: ignore[union-attr]
        config.listener = None  # neither an inherited socket, nor -socket: fd 3
        if _fd3_is_socket():
            pytest.skip("fd 3 happens to be a socket in this process")
        assert await serve_daemon(config) == 1
        assert any(s.startswith("crash: no listening socket") for s in trace)
        assert not exists(path)


def _fd3_is_socket() -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.fstat(3).st_mode)
    except OSError:
        return False


async def test_startup_error_surfaces_in_open_shim() -> None:
    async def broken(ctx: InitContext) -> Awaitable[object]:
        raise RuntimeError("nope")

    with pytest.raises(ShimStartupError, match="status 1") as info:
        async with open_shim(Quick(), Registry([Registration("x", "y", broken)])):
            pass
    assert info.value.trace[-2:] == ["socket removed", "exit 1"]
