"""The kit's ordering guarantees over a scripted instance backend, on MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2

import trioshim.task as task
from tests.task.scripted import ScriptedBackend
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.testing.task import TaskShim, open_task_shim
from trioshim.ttrpc import AlreadyExists, FailedPrecondition, NotFound

EXEC_SPEC = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                        value=b'{"args": ["sh"]}')  # fmt: skip


async def _exec(kit: TaskShim, exec_id: str) -> int:
    await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id=exec_id, spec=EXEC_SPEC))
    return int((await kit.task.Start(pb.StartRequest(id="c1", exec_id=exec_id))).pid)


async def test_execs_exit_before_their_init_and_oom_precedes_its_exit(
    mock_clock: trio.testing.MockClock,
) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        await _exec(kit, "e1")
        with pytest.raises(AlreadyExists):
            await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1", spec=EXEC_SPEC))
        backend.inits["c1"].finish(task.Exit(137, oom=True))  # the init dies of OOM
        waited = await kit.task.Wait(pb.WaitRequest(id="c1"))
        assert waited.exit_status == 137
        exec_state = await kit.task.State(pb.StateRequest(id="c1", exec_id="e1"))
        assert (exec_state.status, exec_state.exit_status) == (3, 128 + 9)  # SIGKILLed
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        await kit.wait_for_events(8)
    assert kit.topics("c1") == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",  # e1's, first
        "/tasks/oom",
        "/tasks/exit",  # the init's, last
        "/tasks/delete",
    ]
    exits = [e for t, e in kit.events("c1") if t == "/tasks/exit"]
    assert [e.id for e in exits] == ["e1", "c1"]  # type: ignore[attr-defined]
    assert "kill e1 9" in backend.calls


async def test_kill_before_start_exits_without_a_start(mock_clock: trio.testing.MockClock) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        await kit.create("c1", ["x"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kit.task.Wait, pb.WaitRequest(id="c1"))
            await kit.task.Kill(pb.KillRequest(id="c1", signal=9))
        with pytest.raises(FailedPrecondition):
            await kit.task.Start(pb.StartRequest(id="c1"))
        deleted = await kit.task.Delete(pb.DeleteRequest(id="c1"))
        assert deleted.exit_status == 137
        await kit.wait_for_events(3)
    assert kit.topics("c1") == ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    assert backend.calls == ["create c1", "kill c1 9", "delete c1"]


async def test_pause_resume_and_exec_refusals(mock_clock: trio.testing.MockClock) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        await kit.create("c1", ["x"])
        # An exec may be added before its init runs (containerd's runc shim allows it), but
        # not started.
        await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1", spec=EXEC_SPEC))
        with pytest.raises(FailedPrecondition):  # not running yet
            await kit.task.Start(pb.StartRequest(id="c1", exec_id="e1"))
        with pytest.raises(FailedPrecondition):
            await kit.task.Pause(pb.PauseRequest(id="c1"))
        await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Start(pb.StartRequest(id="c1", exec_id="e1"))
        await kit.task.Pause(pb.PauseRequest(id="c1"))
        assert (await kit.task.State(pb.StateRequest(id="c1"))).status == 4  # PAUSED
        # so are its execs
        assert (await kit.task.State(pb.StateRequest(id="c1", exec_id="e1"))).status == 4
        await kit.task.Resume(pb.ResumeRequest(id="c1"))
        assert (await kit.task.State(pb.StateRequest(id="c1", exec_id="e1"))).status == 2
        with pytest.raises(NotFound):
            await kit.task.State(pb.StateRequest(id="c1", exec_id="nope"))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=15))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        await kit.wait_for_events(8)
    assert kit.topics("c1") == [
        "/tasks/create", "/tasks/exec-added", "/tasks/start", "/tasks/exec-started",
        "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/exit",
    ]  # fmt: skip


async def test_containers_are_grouped_and_shutdown_waits_for_the_last(
    mock_clock: trio.testing.MockClock,
) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        for cid in ("c1", "c2"):
            await kit.create(cid, ["x"])
        with pytest.raises(AlreadyExists):
            await kit.create("c1", ["x"])
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        await kit.task.Shutdown(pb.ShutdownRequest(id="c1"))
        connect = await kit.task.Connect(pb.ConnectRequest(id="c2"))
        assert connect.shim_pid > 0
        await kit.task.Delete(pb.DeleteRequest(id="c2"))
        await kit.task.Shutdown(pb.ShutdownRequest(id="c2"))
        assert await kit.shim.wait() == 0


async def test_an_init_being_paused_is_pausing(mock_clock: trio.testing.MockClock) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        gate = backend.inits["c1"].pause_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kit.task.Pause, pb.PauseRequest(id="c1"))
            await trio.testing.wait_all_tasks_blocked()  # the Pause waits in the backend
            assert backend.calls[-1] == "pause c1"
            state = await kit.task.State(pb.StateRequest(id="c1"))
            assert state.status == 5  # PAUSING, as containerd's runc shim answers meanwhile
            gate.set()
        assert (await kit.task.State(pb.StateRequest(id="c1"))).status == 4  # PAUSED
        await kit.task.Kill(pb.KillRequest(id="c1", signal=9))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
