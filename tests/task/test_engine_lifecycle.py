"""The kit over an in-process engine, on MockClock: events, Wait, states, errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2

import trioshim.task as task
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.api.containerd.types import mount_pb2
from trioshim.testing.task import open_task_shim
from trioshim.ttrpc import FailedPrecondition, NotFound, Unimplemented, Unknown


class Sleeper:
    """Runs until a signal arrives; exits 128 + that signal. Writes its args to stdout."""

    name = "sleeper"

    def __init__(self) -> None:
        self.contexts: list[task.RunContext] = []

    async def run(self, ctx: task.RunContext) -> int:
        self.contexts.append(ctx)
        ctx.started()
        os.write(ctx.stdio.stdout, " ".join(ctx.args).encode())
        return 128 + await ctx.signals.receive()


class Quick:
    name = "quick"

    async def run(self, ctx: task.RunContext) -> int:
        return int(ctx.args[0])


async def test_run_returns_the_exit_status_and_events_in_order(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_task_shim(Quick()) as kit:
        assert await kit.run("c1", ["7"]) == 7
        await kit.wait_for_events(4)
    assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    exit_event = kit.events("c1")[2][1]
    assert exit_event.exit_status == 7  # type: ignore[attr-defined]


class OOMKilled:
    """Met the OOM killer (told twice, as a cgroup may notify more than once) and died of it."""

    name = "oom"

    async def run(self, ctx: task.RunContext) -> int:
        ctx.started()
        ctx.oom()
        ctx.oom()
        return 128 + signal.SIGKILL


async def test_an_engine_reported_oom_is_one_task_oom_just_before_the_exit(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_task_shim(OOMKilled()) as kit:
        assert await kit.run("c1", ["x"]) == 137
        await kit.wait_for_events(5)
    assert kit.topics("c1") == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/oom",
        "/tasks/exit",
        "/tasks/delete",
    ]
    assert kit.events("c1")[2][1].container_id == "c1"  # type: ignore[attr-defined]


class StalledAtItsLimit:
    """Meets an OOM that does not end it (the OOM killer is off) and reports it in the step it
    says it started, before the kit has published the start; runs until Kill."""

    name = "stalled"

    async def run(self, ctx: task.RunContext) -> int:
        ctx.started()
        ctx.report_oom()
        return 128 + await ctx.signals.receive()


async def test_an_oom_reported_while_the_engine_runs_goes_out_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_task_shim(StalledAtItsLimit()) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.wait_for_events(3)  # create, start, oom (held until the start is out)
        assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/oom"]
        state = await kit.task.State(pb.StateRequest(id="c1"))
        assert state.status == 2  # RUNNING
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        assert (await kit.task.Wait(pb.WaitRequest(id="c1"))).exit_status == 137
    # the exit carries no second TaskOOM: the engine did not call ctx.oom()
    assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]


async def test_every_waiter_is_released_once_by_the_exit(
    mock_clock: trio.testing.MockClock,
) -> None:
    engine = Sleeper()
    async with open_task_shim(engine) as kit:
        await kit.create("c1", ["hello"])
        statuses: list[int] = []
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                statuses.append((await kit.task.Wait(pb.WaitRequest(id="c1"))).exit_status)

            nursery.start_soon(wait)  # before Start
            started = await kit.task.Start(pb.StartRequest(id="c1"))
            nursery.start_soon(wait)  # after Start
            await trio.testing.wait_all_tasks_blocked()
            assert statuses == []
            state = await kit.task.State(pb.StateRequest(id="c1"))
            assert (state.status, state.pid) == (2, started.pid)  # RUNNING
            await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGTERM))
        assert statuses == [128 + signal.SIGTERM] * 2
        # a waiter after the exit gets the same answer at once
        late = await kit.task.Wait(pb.WaitRequest(id="c1"))
        assert late.exit_status == 128 + signal.SIGTERM
        with pytest.raises(NotFound):
            await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGTERM))
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        with pytest.raises(NotFound):
            await kit.task.State(pb.StateRequest(id="c1"))


async def test_the_engine_gets_spec_args_and_rootfs(mock_clock: trio.testing.MockClock) -> None:
    engine = Sleeper()
    async with open_task_shim(engine) as kit:
        await kit.create("c1", ["a", "b"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        ctx = engine.contexts[0]
        assert (ctx.id, ctx.exec_id, tuple(ctx.args)) == ("c1", None, ("a", "b"))
        assert ctx.rootfs == f"{kit.bundles}/c1/rootfs"
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        await kit.task.Wait(pb.WaitRequest(id="c1"))


async def test_state_refusals_are_containerd_codes(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(Sleeper()) as kit:
        with pytest.raises(NotFound):
            await kit.task.Start(pb.StartRequest(id="nope"))
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        with pytest.raises(FailedPrecondition):
            await kit.task.Start(pb.StartRequest(id="c1"))
        with pytest.raises(FailedPrecondition):
            await kit.task.Delete(pb.DeleteRequest(id="c1"))
        with pytest.raises(Unimplemented, match="Pause"):
            await kit.task.Pause(pb.PauseRequest(id="c1"))
        with pytest.raises(Unimplemented, match="Exec"):
            await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1"))
        with pytest.raises(Unimplemented, match="Stats"):
            await kit.task.Stats(pb.StatsRequest(id="c1"))
        # Shutdown is ignored while a task is left
        await kit.task.Shutdown(pb.ShutdownRequest(id="c1"))
        assert not kit.shim.exited.is_set()
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        await kit.task.Shutdown(pb.ShutdownRequest(id="c1"))
        assert await kit.shim.wait() == 0


class MeasuredSleeper(Sleeper):
    """A Sleeper with the optional stats hook: answers with its container id."""

    async def stats(self, ctx: task.RunContext) -> any_pb2.Any:
        return any_pb2.Any(type_url="example.Stats", value=ctx.id.encode())


async def test_the_engines_stats_hook_answers_stats(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(MeasuredSleeper()) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        reply = await kit.task.Stats(pb.StatsRequest(id="c1"))
        assert (reply.stats.type_url, reply.stats.value) == ("example.Stats", b"c1")
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        await kit.task.Delete(pb.DeleteRequest(id="c1"))


class Failing:
    name = "failing"

    async def run(self, ctx: task.RunContext) -> int:
        if ctx.args[0] == "after":
            ctx.started()
        raise RuntimeError("the workload broke")


async def test_an_engine_error_fails_start_or_becomes_status_255(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_task_shim(Failing()) as kit:
        await kit.create("c1", ["before"])
        with pytest.raises(Unknown, match="engine failing: the workload broke"):
            await kit.task.Start(pb.StartRequest(id="c1"))
        assert (await kit.task.State(pb.StateRequest(id="c1"))).status == 1  # still CREATED
        # containerd's clean-up of a failed Start: Kill, Wait (must return), Delete.
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        with trio.fail_after(5):  # virtual time: fails at once if nothing can end it
            assert (await kit.task.Wait(pb.WaitRequest(id="c1"))).exit_status == 137
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        assert await kit.run("c2", ["after"]) == 255


class ExecSleeper(Sleeper):
    execs = True


async def test_an_engine_with_execs_runs_them_with_their_process_spec(
    mock_clock: trio.testing.MockClock,
) -> None:
    engine = ExecSleeper()
    async with open_task_shim(engine) as kit:
        await kit.create("c1", ["init"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        spec = any_pb2.Any(value=b'{"args": ["exec", "args"], "cwd": "/work"}')
        await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1", spec=spec))
        await kit.task.Start(pb.StartRequest(id="c1", exec_id="e1"))
        ctx = engine.contexts[1]
        assert (ctx.exec_id, tuple(ctx.args), ctx.cwd) == ("e1", ("exec", "args"), "/work")
        await kit.task.Kill(pb.KillRequest(id="c1", exec_id="e1", signal=signal.SIGINT))
        waited = await kit.task.Wait(pb.WaitRequest(id="c1", exec_id="e1"))
        assert waited.exit_status == 128 + signal.SIGINT
        assert (await kit.task.State(pb.StateRequest(id="c1"))).status == 2  # init runs on


class MountWatcher(Sleeper):
    """A Sleeper that notes whether its rootfs is a mount point when it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.mounted: list[bool] = []

    async def run(self, ctx: task.RunContext) -> int:
        self.mounted.append(os.path.ismount(ctx.rootfs))  # noqa: ASYNC240 - a stat
        return await super().run(ctx)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount")
async def test_create_mounts_the_rootfs_and_delete_unmounts_it() -> None:
    engine = MountWatcher()
    async with open_task_shim(engine) as kit:
        bundle = kit.bundle("c1", ["x"])
        rootfs = os.path.join(bundle, "rootfs")
        tmpfs = mount_pb2.Mount(type="tmpfs", source="tmpfs", options=["size=1m"])
        await kit.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle, rootfs=[tmpfs]))
        assert os.path.ismount(rootfs)  # noqa: ASYNC240 - a stat
        await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        assert not os.path.ismount(rootfs)  # noqa: ASYNC240 - a stat
    assert engine.mounted == [True]


async def test_a_rootfs_that_cannot_be_mounted_fails_create(tmp_path: Path) -> None:
    async with open_task_shim(Sleeper()) as kit:
        bundle = kit.bundle("c1", ["x"])
        bad = mount_pb2.Mount(type="bind", source=str(tmp_path / "absent"), options=["rbind"])
        with pytest.raises(Unknown, match="failed to mount rootfs component"):
            await kit.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle, rootfs=[bad]))
        assert not os.path.ismount(os.path.join(bundle, "rootfs"))  # noqa: ASYNC240 - a stat
        await kit.create("c1", ["x"])  # the id is free again
