"""The task service in-process, with real runc and a busybox rootfs.

The service runs in the test's Trio run with a real reaper (this process is made a child
subreaper, so container inits are reaped here) and records the events it publishes. RPC
handlers are called through the service's boundary, as containerd calls them. Edge cases
are in test_service_failures.py, stdio in test_service_stdio.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2

from tests.runc.service_harness import (
    Harness,
    add_exec,
    exec_request,
    is_mounted,
    runc_container,
)
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.task.boundary import task_services
from trioshim.task.events import GO_ZERO_TIME_SECONDS
from trioshim.ttrpc.errors import Code, TTRPCError

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)

# --- lifecycle --------------------------------------------------------------------------------


async def test_lifecycle_events_files_and_cleanup(harness: Harness) -> None:
    h = harness
    reply = await h.create("c1", ["sh", "-c", "exit 3"])
    bundle = h.tmp / "c1"
    assert reply.pid > 0
    assert int((bundle / "init.pid").read_text()) == reply.pid
    assert json.loads((bundle / "options.json").read_text()) == {"root": str(h.runc_root)}
    assert (bundle / "runtime").read_text() == ""
    assert oct((bundle / "options.json").stat().st_mode & 0o777) == "0o600"
    assert (bundle / "log.json").exists()
    assert is_mounted(bundle / "rootfs")

    state = await h.call("State", api.StateRequest(id="c1"))
    assert (state.id, state.pid, state.status) == ("c1", reply.pid, task_types.CREATED)
    assert state.bundle == str(bundle)
    assert state.exited_at.seconds == GO_ZERO_TIME_SECONDS
    connect = await h.call("Connect", api.ConnectRequest(id="c1"))
    assert (connect.shim_pid, connect.task_pid) == (os.getpid(), reply.pid)

    started = await h.call("Start", api.StartRequest(id="c1"))
    assert started.pid == reply.pid
    with trio.fail_after(20):
        waited = await h.call("Wait", api.WaitRequest(id="c1"))
    assert waited.exit_status == 3
    assert waited.exited_at.seconds > 0
    await h.events.wait_for("/tasks/exit")
    state = await h.call("State", api.StateRequest(id="c1"))
    assert (state.status, state.exit_status) == (task_types.STOPPED, 3)

    # a second Start, a Kill and a Shutdown while the container is still held
    err = await h.fails("Start", api.StartRequest(id="c1"))
    assert (err.code, err.message) == (Code.UNKNOWN, "cannot start a stopped process")
    err = await h.fails("Kill", api.KillRequest(id="c1", signal=9))
    assert (err.code, err.message) == (Code.NOT_FOUND, "process already finished: not found")
    await h.call("Shutdown", api.ShutdownRequest(id="c1"))
    assert not h.shutdown.is_shutdown

    deleted = await h.call("Delete", api.DeleteRequest(id="c1"))
    assert (deleted.pid, deleted.exit_status) == (reply.pid, 3)
    assert deleted.exited_at == waited.exited_at
    assert h.events.topics("c1") == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ]
    exit_event = h.events.of("/tasks/exit")[0]
    assert (exit_event.id, exit_event.pid, exit_event.exit_status) == ("c1", reply.pid, 3)
    assert exit_event.exited_at == waited.exited_at
    assert not is_mounted(bundle / "rootfs")

    err = await h.fails("State", api.StateRequest(id="c1"))
    assert (err.code, err.message) == (Code.NOT_FOUND, "container not created: not found")
    err = await h.fails("Kill", api.KillRequest(id="c1", signal=9))
    assert err.code == Code.NOT_FOUND
    connect = await h.call("Connect", api.ConnectRequest(id="c1"))
    assert connect.task_pid == 0
    runc_list = await h.reaper.run(["runc", "--root", str(h.runc_root / "testns"), "list", "-q"])
    assert runc_list.stdout.strip() == b""

    await h.call("Shutdown", api.ShutdownRequest(id="c1"))
    assert h.shutdown.is_shutdown


async def test_exit_codes_by_signal(harness: Harness) -> None:
    h = harness
    await h.create("k1", ["sleep", "1000"])
    await h.call("Start", api.StartRequest(id="k1"))
    await h.call("Kill", api.KillRequest(id="k1", signal=signal.SIGKILL))
    with trio.fail_after(20):
        waited = await h.call("Wait", api.WaitRequest(id="k1"))
    assert waited.exit_status == 137
    # exec killed by SIGTERM (not pid 1, so the default action applies)
    await h.create("k2", ["sleep", "1000"])
    await h.call("Start", api.StartRequest(id="k2"))
    await add_exec(h, "k2", "e1", ["sleep", "1000"])
    await h.call("Start", api.StartRequest(id="k2", exec_id="e1"))
    await h.call("Kill", api.KillRequest(id="k2", exec_id="e1", signal=signal.SIGTERM))
    with trio.fail_after(20):
        waited = await h.call("Wait", api.WaitRequest(id="k2", exec_id="e1"))
    assert waited.exit_status == 143
    state = await h.call("State", api.StateRequest(id="k2", exec_id="e1"))
    assert (state.id, state.status, state.exit_status) == ("e1", task_types.STOPPED, 143)
    err = await h.fails("Kill", api.KillRequest(id="k2", exec_id="e1", signal=9))
    assert (err.code, err.message) == (Code.NOT_FOUND, "process already finished: not found")
    await h.call("Delete", api.DeleteRequest(id="k2", exec_id="e1"))
    assert not (h.tmp / "k2" / "e1.pid").exists()
    err = await h.fails("State", api.StateRequest(id="k2", exec_id="e1"))
    assert (err.code, err.message) == (Code.NOT_FOUND, "process does not exist e1: not found")


# --- execs ------------------------------------------------------------------------------------


async def test_exec_rules(harness: Harness) -> None:
    h = harness
    await h.create("x1", ["sleep", "1000"])
    # allowed while created; an id in use is AlreadyExists; unstarted kill is FailedPrecondition
    await add_exec(h, "x1", "e1", ["sh", "-c", "exit 7"])
    err = await h.fails("Exec", exec_request("x1", "e1", ["true"]))
    assert (err.code, err.message) == (Code.ALREADY_EXISTS, "id e1: already exists")
    err = await h.fails("Kill", api.KillRequest(id="x1", exec_id="e1", signal=9))
    assert (err.code, err.message) == (
        Code.FAILED_PRECONDITION,
        "process not created: failed precondition",
    )
    await h.call("Start", api.StartRequest(id="x1"))
    started = await h.call("Start", api.StartRequest(id="x1", exec_id="e1"))
    assert started.pid > 0
    with trio.fail_after(20):
        waited = await h.call("Wait", api.WaitRequest(id="x1", exec_id="e1"))
    assert waited.exit_status == 7
    await h.events.wait_for("/tasks/exit")
    assert h.events.topics("x1") == [
        "/tasks/create",
        "/tasks/exec-added",
        "/tasks/start",
        "/tasks/exec-started",
        "/tasks/exit",
    ]
    exit_event = h.events.of("/tasks/exit")[0]
    assert (exit_event.id, exit_event.pid, exit_event.exit_status) == ("e1", started.pid, 7)
    err = await h.fails("Delete", api.DeleteRequest(id="x1"))
    assert (err.code, err.message) == (Code.UNKNOWN, "cannot delete a running process")
    deleted = await h.call("Delete", api.DeleteRequest(id="x1", exec_id="e1"))
    assert (deleted.pid, deleted.exit_status) == (started.pid, 7)
    await add_exec(h, "x1", "e1", ["true"])  # the id is free again
    # bad args: runc exec fails, Wait returns at once, a retry is refused
    await add_exec(h, "x1", "bad", ["/no/such/binary"])
    err = await h.fails("Start", api.StartRequest(id="x1", exec_id="bad"))
    assert err.code == Code.UNKNOWN
    assert err.message.startswith("OCI runtime exec failed: exec failed: "), err.message
    with trio.fail_after(5):
        waited = await h.call("Wait", api.WaitRequest(id="x1", exec_id="bad"))
    assert (waited.exit_status, waited.exited_at.seconds) == (0, GO_ZERO_TIME_SECONDS)
    err = await h.fails("Start", api.StartRequest(id="x1", exec_id="bad"))
    assert err.message == "cannot start an exec process whose start failed"
    # after the init exited: Exec RPC refused by state, a pending exec's Start by bookkeeping
    await add_exec(h, "x1", "late", ["true"])
    await h.call("Kill", api.KillRequest(id="x1", signal=9))
    with trio.fail_after(20):
        await h.call("Wait", api.WaitRequest(id="x1"))
    err = await h.fails("Exec", exec_request("x1", "e2", ["true"]))
    assert (err.code, err.message) == (Code.UNKNOWN, "cannot exec in a stopped state")
    err = await h.fails("Start", api.StartRequest(id="x1", exec_id="late"))
    assert (err.code, err.message) == (
        Code.FAILED_PRECONDITION,
        "container x1 init process is not running: failed precondition",
    )
    err = await h.fails("CloseIO", api.CloseIORequest(id="x1", exec_id="nope", stdin=True))
    assert (err.code, err.message) == (Code.UNKNOWN, "process does not exist nope: not found")
    await h.call("Delete", api.DeleteRequest(id="x1"))


async def test_concurrent_execs_and_init_exit_last(harness: Harness) -> None:
    h = harness
    await h.create("m1", ["sleep", "1000"], pid_namespace=False)
    await h.call("Start", api.StartRequest(id="m1"))
    n = 20
    for i in range(n):
        # mixed: instant exits and long sleepers (those die by the kill-all)
        args = ["true"] if i % 2 else ["sleep", "1000"]
        await add_exec(h, "m1", f"e{i}", args)
    pids: dict[str, int] = {}

    async def start(i: int) -> None:
        reply = await h.call("Start", api.StartRequest(id="m1", exec_id=f"e{i}"))
        pids[f"e{i}"] = reply.pid

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(start, i)
    await h.events.wait_for("/tasks/exit", n // 2)
    # the init dies; no PID namespace of its own, so the shim runs `runc kill --all`
    await h.call("Kill", api.KillRequest(id="m1", signal=9))
    await h.events.wait_for("/tasks/exit", n + 1)
    exits = h.events.of("/tasks/exit")
    assert len(exits) == n + 1
    assert exits[-1].id == "m1"
    by_id = {e.id: e for e in exits}
    for i in range(n):
        assert by_id[f"e{i}"].pid == pids[f"e{i}"]
        assert by_id[f"e{i}"].exit_status == (0 if i % 2 else 137)
    started = [m.exec_id for m in h.events.of("/tasks/exec-started")]
    assert sorted(started) == sorted(pids)
    topics = h.events.topics("m1")
    for i in range(n):
        exec_events = [
            t
            for t, m in h.events.events
            if getattr(m, "exec_id", None) == f"e{i}" or getattr(m, "id", None) == f"e{i}"
        ]
        assert exec_events == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
    assert topics[-1] == "/tasks/exit"


async def test_pids_pause_resume(harness: Harness) -> None:
    h = harness
    await h.create("p1", ["sleep", "1000"])
    err = await h.fails("Pause", api.PauseRequest(id="p1"))
    assert err.message == "cannot pause task in created state"
    await h.call("Start", api.StartRequest(id="p1"))
    await add_exec(h, "p1", "e1", ["sleep", "1000"])
    exec_pid = (await h.call("Start", api.StartRequest(id="p1", exec_id="e1"))).pid
    pids = await h.call("Pids", api.PidsRequest(id="p1"))
    by_pid = {p.pid: p for p in pids.processes}
    init_pid = h.service.containers["p1"].init.pid
    assert set(by_pid) == {init_pid, exec_pid}
    assert not by_pid[init_pid].HasField("info")
    info = by_pid[exec_pid].info
    assert info.type_url == "containerd.runc.v1.ProcessDetails"
    assert oci_pb2.ProcessDetails.FromString(info.value).exec_id == "e1"

    err = await h.fails("Resume", api.ResumeRequest(id="p1"))
    assert err.message == "cannot resume a running process"
    await h.call("Pause", api.PauseRequest(id="p1"))
    state = await h.call("State", api.StateRequest(id="p1"))
    assert state.status == task_types.PAUSED
    state = await h.call("State", api.StateRequest(id="p1", exec_id="e1"))
    assert state.status == task_types.PAUSED
    err = await h.fails("Exec", exec_request("p1", "e2", ["true"]))
    assert err.message == "cannot exec in a paused state"
    err = await h.fails("Delete", api.DeleteRequest(id="p1"))
    assert err.message == "cannot delete a paused process"
    await h.call("Resume", api.ResumeRequest(id="p1"))
    state = await h.call("State", api.StateRequest(id="p1"))
    assert state.status == task_types.RUNNING
    assert h.events.topics("p1")[-2:] == ["/tasks/paused", "/tasks/resumed"]

    # killed while paused: ends stopped, and the cgroup is thawed
    await h.call("Pause", api.PauseRequest(id="p1"))
    await h.call("Kill", api.KillRequest(id="p1", signal=9))
    with trio.fail_after(20):
        waited = await h.call("Wait", api.WaitRequest(id="p1"))
    assert waited.exit_status == 137
    state = await h.call("State", api.StateRequest(id="p1"))
    assert state.status == task_types.STOPPED


async def test_update_and_stats(harness: Harness) -> None:
    h = harness
    await h.create("u1", ["sleep", "1000"])
    await h.call("Start", api.StartRequest(id="u1"))
    stats = await h.call("Stats", api.StatsRequest(id="u1"))
    assert stats.stats.type_url in (
        "io.containerd.cgroups.v1.Metrics",
        "io.containerd.cgroups.v2.Metrics",
    )
    limit = 48 * 1024 * 1024
    resources = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps({"memory": {"limit": limit}}).encode(),
    )
    await h.call("Update", api.UpdateTaskRequest(id="u1", resources=resources))
    runc = runc_container(h, "u1").init.runc
    state = json.loads((await h.reaper.run(runc.command(["state", "u1"]))).check().stdout)
    assert state["status"] == "running"
    cgroup = runc_container(h, "u1").cgroup
    assert cgroup is not None
    from trioshim.api.cgroups.v1 import metrics_pb2 as v1

    if stats.stats.type_url.endswith("v1.Metrics"):
        metrics = v1.Metrics.FromString(cgroup.metrics().value)
        assert metrics.memory.usage.limit == limit
    bad = any_pb2.Any(type_url="x", value=b"{not json")
    err = await h.fails("Update", api.UpdateTaskRequest(id="u1", resources=bad))
    assert err.code == Code.UNKNOWN
    err = await h.fails("Update", api.UpdateTaskRequest(id="u1"))
    assert err.code == Code.INVALID_ARGUMENT
    err = await h.fails("Stats", api.StatsRequest(id="nope"))
    assert err.code == Code.NOT_FOUND


# --- over ttrpc ---------------------------------------------------------------------------------


async def test_over_ttrpc_v2_and_v3(harness: Harness) -> None:
    from trioshim.api.containerd.runtime.task.v3 import shim_pb2 as api3
    from trioshim.ttrpc.client import Stub, open_unix_client
    from trioshim.ttrpc.server import Server, open_unix_listener

    h = harness
    server = Server(handshake=None)
    for descriptor, implementation in task_services(h.service):
        server.register(descriptor, implementation)
    path = h.tmp / "shim.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, await open_unix_listener(path))
        async with open_unix_client(path) as client:
            v2 = Stub(client, api.DESCRIPTOR.services_by_name["Task"])
            v3 = Stub(client, api3.DESCRIPTOR.services_by_name["Task"])
            bundle = await h.bundle("w1", ["sh", "-c", "exit 5"])
            request = api3.CreateTaskRequest.FromString(
                h.create_request("w1", bundle).SerializeToString()
            )
            created = await v3.Create(request)
            assert created.pid > 0
            with pytest.raises(TTRPCError) as info:
                await v2.State(api.StateRequest(id="nosuch"))
            assert (info.value.code, info.value.message) == (
                Code.NOT_FOUND,
                "container not created: not found",
            )
            with pytest.raises(TTRPCError) as info:
                await v3.Pause(api3.PauseRequest(id="w1"))
            assert (info.value.code, info.value.message) == (
                Code.UNKNOWN,
                "cannot pause task in created state",
            )
            # Wait honours the caller's deadline
            with pytest.raises(TTRPCError) as info:
                await v2.Wait(api.WaitRequest(id="w1"), timeout=0.2)
            assert info.value.code == Code.DEADLINE_EXCEEDED
            # State (nonblocking: answered by the connection's reader) while a Wait is pending.
            waited: list[Any] = []

            async def wait_exit() -> None:
                waited.append(await v3.Wait(api3.WaitRequest(id="w1")))

            async with trio.open_nursery() as waits:
                waits.start_soon(wait_exit)
                await trio.testing.wait_all_tasks_blocked()
                state = await v2.State(api.StateRequest(id="w1"))
                assert state.status == task_types.CREATED and not waited
                await v2.Start(api.StartRequest(id="w1"))
            assert waited[0].exit_status == 5
            state = await v2.State(api.StateRequest(id="w1"))
            assert (state.status, state.exit_status) == (task_types.STOPPED, 5)
            deleted = await v3.Delete(api3.DeleteRequest(id="w1"))
            assert deleted.exit_status == 5
            await v2.Shutdown(api.ShutdownRequest(id="w1"))
            assert h.shutdown.is_shutdown
        nursery.cancel_scope.cancel()
