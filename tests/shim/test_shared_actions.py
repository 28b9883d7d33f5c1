"""Start and delete helpers' actions run inside the shared process (``sharedactions``), and the
process's idle time once its last daemon has ended."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.shim.test_shared_control import _init
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim import TTRPC_PLUGIN, Flags, Manager, Registration, Registry
from trioshim.shim.address import DEFAULT_SOCKET_DIR, SOCKET_DIR_ENV, new_socket, read_address
from trioshim.shim.manager import StopContext, StopStatus
from trioshim.shim.shared import SharedShims, idle_timeout, route_module_logs
from trioshim.shim.sharedclient import ShimSpec, ask
from trioshim.shim.sharedcontainerd import Containerd
from trioshim.shim.startplan import plan_start
from trioshim.testing import connect_task, open_fake_containerd

CONTAINERD = "/run/nowhere/containerd.sock"


class Cleans(Manager):
    """A manager whose delete logs through a module logger and reports a fixed exit."""

    abandon_timeout = None

    async def stop(self, ctx: StopContext) -> StopStatus:
        logging.getLogger("trioshim.tests.cleans").warning("cleaned %s", ctx.flags.id)
        return StopStatus(pid=42, exit_status=137, exited_at_ns=1_500_000_000)


@dataclass
class Served:
    shims: SharedShims
    path: str  # the control socket
    tmp: str
    ttrpc: str  # the fake containerd's event address
    ended: trio.Event  # serve() returned: the process would exit

    def files(self) -> list[str]:
        """Which of the control socket and its lock file are there."""
        return [f for f in (self.path, self.path + ".lock") if os.path.lexists(f)]

    async def add(self, id: str) -> str:
        """A daemon ``id`` handed over directly; its address."""
        bundle = os.path.join(self.tmp, id)
        os.makedirs(bundle)
        flags = Flags(namespace="default", id=id, address="", bundle=bundle)
        address = f"unix://{self.tmp}/{id}.sock"
        spec = ShimSpec(flags, bundle, self.ttrpc, address)
        assert await self.shims.add(spec, new_socket(address)) is None
        return address


@contextlib.asynccontextmanager
async def served(
    idle: float = 600.0, *, containerd: Containerd | None = None
) -> AsyncIterator[Served]:
    """A SharedShims for ``containerd`` on a control socket and lock file (the helper that
    forked it made both), ``idle`` seconds of idle time."""
    tmp = tempfile.mkdtemp(prefix="sharedact-", dir="/tmp")
    path = os.path.join(tmp, "control")
    control = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ended = trio.Event()
    try:
        await control.bind(path)
        control.listen()
        os.close(os.open(path + ".lock", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        registry = Registry([Registration(TTRPC_PLUGIN, "task", _init)])
        shims = SharedShims(
            Cleans(socket_dir=tmp),
            registry,
            lock_path=path + ".lock",
            handle_signals=False,
            idle=idle,
            containerd=containerd,
        )

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            await shims.serve(control, path, task_status=task_status)
            ended.set()

        async with open_fake_containerd() as events, trio.open_nursery() as nursery:
            await nursery.start(serve)
            yield Served(shims, path, tmp, events.ttrpc_address, ended)
            shims.shutdown_all("test over")
    finally:
        control.close()
        if containerd is not None:
            containerd.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _request(tmp: str, ttrpc: str, id: str, *argv: str, stdin: bytes = b"") -> dict[str, Any]:
    bundle = os.path.join(tmp, id)
    os.makedirs(bundle, exist_ok=True)
    return {
        "argv": ["-namespace", "default", "-address", CONTAINERD, "-id", id, *argv],
        "env": {"TTRPC_ADDRESS": ttrpc},
        "cwd": bundle,
        "ppid": os.getpid(),
        "stdin": stdin,
    }


async def _ask(path: str, message: dict[str, Any]) -> Any:
    return await trio.to_thread.run_sync(functools.partial(ask, path, message))


async def test_start_runs_in_the_process_and_serves_the_daemon() -> None:
    async with served() as env:
        shims, path, tmp, ttrpc = env.shims, env.path, env.tmp, env.ttrpc
        reply = await _ask(path, {"op": "start", **_request(tmp, ttrpc, "c0", "start")})
        assert (reply["ok"], reply["status"], reply["stderr"]) == (True, 0, b"")
        address = reply["stdout"].decode()
        assert address.startswith(f"unix://{tmp}/")
        assert read_address(os.path.join(tmp, "c0", "address")) == address
        assert sorted(shims.daemons) == [address]
        async with connect_task(address) as task:
            assert (await task.Connect(shim_pb2.ConnectRequest(id="c0"))).shim_pid == os.getpid()

        # The same address again (a live daemon serves it): reused, not a second daemon.
        again = await _ask(path, {"op": "start", **_request(tmp, ttrpc, "c0", "start")})
        assert (again["status"], again["stdout"].decode()) == (0, address)
        assert sorted(shims.daemons) == [address]


async def test_delete_runs_the_managers_clean_up_and_logs_to_the_helper() -> None:
    route_module_logs()  # as the shared process does
    async with served() as env:
        shims, path, tmp, ttrpc = env.shims, env.path, env.tmp, env.ttrpc
        reply = await _ask(path, {"op": "delete", **_request(tmp, ttrpc, "gone", "delete")})
        assert (reply["ok"], reply["status"]) == (True, 0)
        response = shim_pb2.DeleteResponse.FromString(reply["stdout"])
        assert (response.pid, response.exit_status) == (42, 137)
        assert (response.exited_at.seconds, response.exited_at.nanos) == (1, 500_000_000)
        assert b"cleaned gone" in reply["stderr"]  # a module logger's record, to this helper
        assert shims.daemons == {}


async def test_failed_start_reports_to_the_helper_and_leaves_nothing() -> None:
    async with served() as env:
        shims, path, tmp, ttrpc = env.shims, env.path, env.tmp, env.ttrpc
        bad = _request(tmp, ttrpc, "c1", "start", stdin=b"\xff\xff not protobuf")
        reply = await _ask(path, {"op": "start", **bad})
        assert (reply["ok"], reply["status"], reply["stdout"]) == (True, 1, b"")
        assert b"unreadable options on stdin" in reply["stderr"]
        assert not await trio.Path(tmp, "c1", "address").exists()
        bad_id = {**_request(tmp, ttrpc, "c2", "start")}
        bad_id["argv"] = ["-namespace", "default", "-address", CONTAINERD, "-id", "../x", "start"]
        reply = await _ask(path, {"op": "start", **bad_id})
        assert (reply["status"], reply["stdout"]) == (1, b"")
        assert b"id" in reply["stderr"]
        assert shims.daemons == {}


async def test_what_the_process_cannot_stand_in_for_is_declined() -> None:
    async with served() as env:
        shims, path, tmp, ttrpc = env.shims, env.path, env.tmp, env.ttrpc
        info = {**_request(tmp, ttrpc, "c0"), "argv": ["-info"]}
        sched = _request(tmp, ttrpc, "c0", "start")
        sched["env"] = {**sched["env"], "SCHED_CORE": "1"}
        for request in (info, sched):
            reply = await _ask(path, {"op": "start", **request})
            assert (reply["ok"], reply["declined"]) == (False, True), reply
        malformed = {**_request(tmp, ttrpc, "c0", "start"), "cwd": "relative"}
        reply = await _ask(path, {"op": "start", **malformed})
        assert reply["ok"] is False and "malformed action request" in reply["error"]
        assert shims.daemons == {}
        assert not await trio.Path(tmp, "c0", "address").exists()


async def test_process_idles_after_its_last_daemon_then_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with served(idle=30.0) as env:
        for n in range(2):
            assert await env.shims.stop(await env.add(f"c{n}"), "test")
            with trio.move_on_after(29):
                await env.ended.wait()
            assert not env.ended.is_set()  # idle, and a new daemon is still taken
        before = trio.current_time()
        await env.ended.wait()
        assert trio.current_time() - before >= 1  # the rest of the 30 s after the last one
        assert env.files() == []  # control socket and lock file


def test_idle_time_from_the_environment() -> None:
    assert idle_timeout({}) == 600.0
    assert idle_timeout({"TRIOSHIM_SHARED_IDLE": ""}) == 600.0
    assert idle_timeout({"TRIOSHIM_SHARED_IDLE": "0"}) == 0.0
    assert idle_timeout({"TRIOSHIM_SHARED_IDLE": "2.5"}) == 2.5
    assert idle_timeout({"TRIOSHIM_SHARED_IDLE": "soon"}) == 600.0
    assert idle_timeout({"TRIOSHIM_SHARED_IDLE": "-1"}) == 600.0


def test_start_puts_the_socket_where_the_helpers_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared process's own environment is that of the helper that forked it: where a
    later helper's daemon listens is that helper's ``$TRIOSHIM_SOCKET_DIR``, as when it runs
    ``start`` itself."""
    monkeypatch.setenv(SOCKET_DIR_ENV, str(tmp_path / "process"))
    flags = Flags(namespace="default", id="c0", address=CONTAINERD, bundle=str(tmp_path))
    helper = {SOCKET_DIR_ENV: str(tmp_path / "helper")}
    plan = plan_start(Manager("m"), flags, b"", helper, os.getpid())
    assert plan.address.startswith(f"unix://{tmp_path}/helper/")
    plan = plan_start(Manager("m"), flags, b"", {}, os.getpid())
    assert plan.address.startswith(f"unix://{DEFAULT_SOCKET_DIR}/")
