"""What a backend may add to the kit: its own refusal words, a pid from Create on, live OOM
events, and failpoints (any backend's containers get them from their spec's annotations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2

import trioshim.task as task
from tests.task.scripted import Scripted, ScriptedBackend, ScriptedInit
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.shim.failpoint import ANNOTATION_PREFIX
from trioshim.task.errors import NotFoundError, TaskError, UnknownError
from trioshim.task.events import GO_ZERO_TIME_SECONDS
from trioshim.task.process import Action, Process, State
from trioshim.task.states import KIT_REFUSALS
from trioshim.testing.task import TaskShim, open_task_shim
from trioshim.ttrpc import FailedPrecondition, InvalidArgument, NotFound, Unknown

EXEC_SPEC = any_pb2.Any(type_url="x", value=b'{"args": ["sh"]}')


class GoWords:
    """Refusals worded as containerd's runc shim words them (bare texts, code Unknown)."""

    def refuse(self, action: Action, process: Process) -> TaskError:
        if process.state is State.DELETED or action is Action.KILL:
            return KIT_REFUSALS.refuse(action, process)
        return UnknownError(f"cannot {action.value} a {process.state.value} process")

    def no_container(self, container_id: str) -> TaskError:
        return NotFoundError.wrapping("container not created")

    def no_exec(self, container_id: str, exec_id: str) -> TaskError:
        return NotFoundError.wrapping(f"process does not exist {exec_id}")


@dataclass(eq=False)
class WordyBackend(ScriptedBackend):
    refusals: GoWords = field(default_factory=GoWords)


async def test_a_backend_words_its_refusals(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(WordyBackend()) as kit:
        with pytest.raises(NotFound, match=r"^container not created: not found$"):
            await kit.task.Start(pb.StartRequest(id="nope"))
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        with pytest.raises(Unknown, match=r"^cannot start a running process$"):
            await kit.task.Start(pb.StartRequest(id="c1"))
        with pytest.raises(Unknown, match=r"^cannot delete a running process$"):
            await kit.task.Delete(pb.DeleteRequest(id="c1"))
        with pytest.raises(NotFound, match=r"^process does not exist e9: not found$"):
            await kit.task.State(pb.StateRequest(id="c1", exec_id="e9"))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=9))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        with pytest.raises(NotFound, match=r"^process already finished: not found$"):
            await kit.task.Kill(pb.KillRequest(id="c1", signal=9))


@dataclass(eq=False)
class CreatedInit(ScriptedInit):
    """A process that exists from Create on, and reports OOM kills that spare it."""

    host: Any = None

    @property
    def created_pid(self) -> int:
        return self.pid


@dataclass(eq=False)
class EarlyBackend(ScriptedBackend):
    async def create(self, request: task.CreateRequest) -> task.Instance:
        self.calls.append(f"create {request.id}")
        init = CreatedInit(request.id, self.calls, host=request.host)
        self.inits[request.id] = init
        return init


async def test_created_pid_and_live_oom(mock_clock: trio.testing.MockClock) -> None:
    backend = EarlyBackend()
    async with open_task_shim(backend) as kit:
        bundle = kit.bundle("c1", ["x"])
        created = await kit.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle))
        init = backend.inits["c1"]
        assert created.pid == init.pid
        assert (await kit.task.State(pb.StateRequest(id="c1"))).pid == init.pid
        await kit.task.Start(pb.StartRequest(id="c1"))
        init.host.report_oom("c1")  # a child of the init was OOM-killed: the init runs on
        await kit.wait_for_events(3)
        assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/oom"]
        assert (await kit.task.State(pb.StateRequest(id="c1"))).status == 2  # RUNNING
        init.finish(task.Exit(0))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
    assert kit.events("c1")[0][1].pid == init.pid


def _annotated(kit: TaskShim, container_id: str, **points: str) -> str:
    spec = {
        "process": {"args": ["x"]},
        "annotations": {ANNOTATION_PREFIX + k.replace("_", "."): v for k, v in points.items()},
    }
    return kit.bundle(container_id, ["x"], spec=spec)


@pytest.mark.parametrize("point", ["Create", "Create_after"])
async def test_create_failpoints(mock_clock: trio.testing.MockClock, point: str) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        bundle = _annotated(kit, "c1", **{point: "1*error(boom)"})
        with pytest.raises(Unknown, match=r"^boom$"):
            await kit.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle))
        with pytest.raises(NotFound):
            await kit.task.State(pb.StateRequest(id="c1"))
        # Create.after: the instance was made, and is deleted again.
        made = ["create c1", "delete c1"] if point == "Create_after" else []
        assert backend.calls == made
        await kit.create("c2", ["x"])  # the shim serves on
    assert kit.topics("c1") == []


async def test_bad_failpoint_is_invalid_argument(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(ScriptedBackend()) as kit:
        bundle = _annotated(kit, "c1", Start="1*explode")
        with pytest.raises(InvalidArgument, match="invalid failpoint expression"):
            await kit.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle))


async def test_rpc_failpoints(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedBackend()
    async with open_task_shim(backend) as kit:
        points = {"Start": "1*error(s)", "Exec_after": "1*error(x)", "Kill": "1*panic(k)"}
        bundle = _annotated(kit, "c1", **points, Delete="1*delay(1000)")
        await kit.task.Create(pb.CreateTaskRequest(id="c1", bundle=bundle))
        with pytest.raises(Unknown, match=r"^s$"):
            await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Start(pb.StartRequest(id="c1"))  # the point fired once
        with pytest.raises(Unknown, match=r"^x$"):
            await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1", spec=EXEC_SPEC))
        assert "delete e1" in backend.calls  # made, then deleted; its id is free again
        await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1", spec=EXEC_SPEC))
        with pytest.raises(Unknown, match="failpoint Kill: panic: k"):  # the server's answer
            await kit.task.Kill(pb.KillRequest(id="c1", signal=9))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=9))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        before = trio.current_time()
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        assert trio.current_time() - before >= 1.0  # the delay ran first, in virtual time
    assert isinstance(backend.inits["c1"].execs["e1"], Scripted)


@dataclass(eq=False)
class ExecsOf(ScriptedInit):
    """An init whose execs are ``kind``."""

    kind: type[Scripted] = Scripted

    async def exec(self, request: task.ExecRequest) -> task.Instance:
        process = self.kind(request.exec_id, self.calls)
        self.execs[request.exec_id] = process
        return process


@dataclass(eq=False)
class ExecsBackend(ScriptedBackend):
    """Containers whose inits are ``init_kind``, their execs ``kind``."""

    kind: type[Scripted] = Scripted
    init_kind: type[ExecsOf] = ExecsOf

    async def create(self, request: task.CreateRequest) -> task.Instance:
        init = self.init_kind(request.id, self.calls, kind=self.kind)
        self.inits[request.id] = init
        return init


@dataclass(eq=False)
class FailingStart(Scripted):
    async def start(self) -> int:
        raise UnknownError("OCI runtime exec failed")


async def test_an_exec_whose_start_failed_never_runs(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(ExecsBackend(kind=FailingStart)) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id="e1", spec=EXEC_SPEC))
        with pytest.raises(Unknown, match="OCI runtime exec failed"):
            await kit.task.Start(pb.StartRequest(id="c1", exec_id="e1"))
        waited = await kit.task.Wait(pb.WaitRequest(id="c1", exec_id="e1"))  # at once
        assert (waited.exit_status, waited.exited_at.seconds) == (0, GO_ZERO_TIME_SECONDS)
        state = await kit.task.State(pb.StateRequest(id="c1", exec_id="e1"))
        assert state.status == 1  # CREATED
        await kit.task.Delete(pb.DeleteRequest(id="c1", exec_id="e1"))
        await kit.wait_for_events(3)
    assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/exec-added"]


@dataclass(eq=False)
class SlowStart(Scripted):
    """An exec whose start returns only when the test says so."""

    go: trio.Event = field(default_factory=trio.Event)

    async def start(self) -> int:
        await self.go.wait()
        return await super().start()


async def test_the_init_exit_waits_for_an_exec_start_in_progress(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An exec that starts while its init exits still exits first; after the init's exit no
    exec starts at all."""
    backend = ExecsBackend(kind=SlowStart)
    async with open_task_shim(backend) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        for exec_id in ("e1", "late"):
            await kit.task.Exec(pb.ExecProcessRequest(id="c1", exec_id=exec_id, spec=EXEC_SPEC))
        init = backend.inits["c1"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kit.task.Start, pb.StartRequest(id="c1", exec_id="e1"))
            await trio.testing.wait_all_tasks_blocked()
            init.finish(task.Exit(0))  # while e1's start is in progress
            await trio.testing.wait_all_tasks_blocked()
            assert kit.topics("c1")[-1] == "/tasks/exec-added"  # the init's exit is held
            init.execs["e1"].go.set()
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        init.execs["late"].go.set()
        with pytest.raises(FailedPrecondition):
            await kit.task.Start(pb.StartRequest(id="c1", exec_id="late"))
        await kit.wait_for_events(7)
    assert kit.topics("c1")[-3:] == ["/tasks/exec-started", "/tasks/exit", "/tasks/exit"]
    assert [m.id for t, m in kit.events("c1") if t == "/tasks/exit"] == ["e1", "c1"]


@dataclass(eq=False)
class Tunable(ExecsOf):
    """An init that records Update and Checkpoint."""

    async def update(self, resources: Any, annotations: Any) -> None:
        self.calls.append(f"update {self.name}")

    async def checkpoint(self, path: str, options: Any) -> None:
        self.calls.append(f"checkpoint {self.name} {path}")


async def test_update_and_checkpoint_states(mock_clock: trio.testing.MockClock) -> None:
    """As containerd's runc shim: Update from Create on, Checkpoint once running; neither
    after the exit."""
    backend = ExecsBackend(init_kind=Tunable)
    async with open_task_shim(backend) as kit:
        await kit.create("c1", ["x"])
        await kit.task.Update(pb.UpdateTaskRequest(id="c1"))
        with pytest.raises(FailedPrecondition, match="cannot checkpoint a created process"):
            await kit.task.Checkpoint(pb.CheckpointTaskRequest(id="c1", path="/ck"))
        await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Checkpoint(pb.CheckpointTaskRequest(id="c1", path="/ck"))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=9))
        await kit.task.Wait(pb.WaitRequest(id="c1"))
        with pytest.raises(FailedPrecondition, match="cannot update a stopped process"):
            await kit.task.Update(pb.UpdateTaskRequest(id="c1"))
        with pytest.raises(FailedPrecondition, match="cannot checkpoint a stopped process"):
            await kit.task.Checkpoint(pb.CheckpointTaskRequest(id="c1", path="/ck"))
    assert backend.calls == ["update c1", "start c1", "checkpoint c1 /ck", "kill c1 9"]
