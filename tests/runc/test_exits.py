"""Exit matching and event order (exits held until their start event, the init's exit
last), driven without runc."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from google.protobuf.message import Message

from trioshim.runc import states
from trioshim.runc.exec_process import ExecProcess
from trioshim.runc.exits import Exits
from trioshim.runc.init_process import InitProcess
from trioshim.runc.runc_cli import Runc
from trioshim.runc.stdio import StdioConfig
from trioshim.shim.reaper import Exit, Reaper, open_reaper
from trioshim.task.errors import TaskError
from trioshim.task.events import GO_ZERO_TIME_SECONDS, timestamp
from trioshim.ttrpc.errors import Code


@dataclass(eq=False)
class Box:
    """The container as exit handling sees it (private PID namespace: no kill-all)."""

    id: str
    init: InitProcess
    kill_all: bool = False

    def should_kill_all(self) -> bool:
        return self.kill_all


@dataclass
class Events:
    seen: list[tuple[str, str, str, int]] = field(default_factory=list)

    def publish(self, topic: str, message: Message) -> None:
        self.seen.append(
            (
                topic,
                getattr(message, "id", ""),
                getattr(message, "exec_id", ""),
                getattr(message, "exit_status", 0),
            )
        )


def _box(container_id: str = "c1") -> Box:
    runc = Runc.for_container(Reaper(), bundle=f"/b/{container_id}", namespace="ns")
    return Box(container_id, InitProcess(container_id, f"/b/{container_id}", runc, StdioConfig()))


def _exec(box: Box, exec_id: str, pid: int) -> ExecProcess:
    e = ExecProcess(exec_id, box.init, {"args": ["sh"]}, StdioConfig())
    e.pid = pid
    e.state = states.ExecRunning()
    return e


@pytest.fixture
async def tracker() -> AsyncIterator[tuple[Exits, Events]]:
    events = Events()
    async with trio.open_nursery() as nursery:
        yield Exits(events.publish, nursery), events
        nursery.cancel_scope.cancel()


def test_timestamps() -> None:
    zero = timestamp(None)
    assert (zero.seconds, zero.nanos) == (GO_ZERO_TIME_SECONDS, 0)
    assert zero.ToJsonString() == "0001-01-01T00:00:00Z"
    ts = timestamp(1_700_000_000_123_456_789)
    assert (ts.seconds, ts.nanos) == (1_700_000_000, 123_456_789)


async def test_exit_during_create_is_held_until_started(tracker: tuple[Exits, Events]) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        exits.on_exit(Exit(100, 3, 42))  # reaped while Create was still running
        await trio.testing.wait_all_tasks_blocked()
        assert events.seen == []
        events.publish("/tasks/create", Message())
        starting.started(box, box.init)
    await trio.testing.wait_all_tasks_blocked()
    assert [e[0] for e in events.seen] == ["/tasks/create", "/tasks/exit"]
    assert events.seen[1][1:] == ("c1", "", 3)
    assert box.init.exit_status == 3
    assert box.init.exited_at_ns == 42


async def test_exit_during_init_start_is_held(tracker: tuple[Exits, Events]) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    box.init.state = states.InitRunning()  # what Start does once runc start returned
    with exits.starting(box) as starting:
        exits.on_exit(Exit(100, 0, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert events.seen == []  # not in `running` during the start
        events.publish("/tasks/start", Message())
        starting.started(box, box.init)
    await trio.testing.wait_all_tasks_blocked()
    assert [e[0] for e in events.seen] == ["/tasks/start", "/tasks/exit"]


async def test_exit_after_start_is_handled_once(tracker: tuple[Exits, Events]) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    exits.on_exit(Exit(100, 137, 5))
    exits.on_exit(Exit(100, 137, 6))  # the pid is no longer tracked
    exits.on_exit(Exit(999, 1, 7))  # not ours
    await trio.testing.wait_all_tasks_blocked()
    assert events.seen == [("/tasks/exit", "c1", "", 137)]
    assert exits.init_exited(box)


async def test_init_exit_is_published_after_every_exec_exit(
    tracker: tuple[Exits, Events],
) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    execs = []
    for n in range(3):
        exits.exec_starting(box)
        e = _exec(box, f"e{n}", 200 + n)
        with exits.starting() as starting:
            starting.started(box, e)
        execs.append(e)
    assert exits.running_execs(box) == 3
    exits.on_exit(Exit(100, 0, 1))
    await trio.testing.wait_all_tasks_blocked()
    assert events.seen == []  # held: three execs still run
    assert not box.init.has_exited
    with pytest.raises(TaskError) as info:
        exits.exec_starting(box)
    assert info.value.code == Code.FAILED_PRECONDITION
    assert str(info.value) == "container c1 init process is not running: failed precondition"
    for n in (2, 0, 1):
        exits.on_exit(Exit(200 + n, 137, 2))
    await trio.testing.wait_all_tasks_blocked()
    assert [e[1] for e in events.seen] == ["e2", "e0", "e1", "c1"]
    assert box.init.has_exited
    assert exits.running_execs(box) == 0


async def test_exec_that_exits_before_its_pid_is_known(tracker: tuple[Exits, Events]) -> None:
    exits, events = tracker
    box = _box()
    exits.exec_starting(box)
    e = ExecProcess("e1", box.init, {}, StdioConfig())
    with exits.starting() as starting:
        exits.on_exit(Exit(300, 0, 9))  # `true` was done before runc wrote the pid file
        e.pid = 300
        e.state = states.ExecRunning()
        events.publish("/tasks/exec-started", Message())
        starting.started(box, e)
    await trio.testing.wait_all_tasks_blocked()
    assert [x[0] for x in events.seen] == ["/tasks/exec-started", "/tasks/exit"]
    assert e.has_exited
    assert exits.running_execs(box) == 0


async def test_failed_exec_start_releases_its_count(tracker: tuple[Exits, Events]) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    exits.exec_starting(box)
    exits.exec_start_failed(box)
    exits.on_exit(Exit(100, 1, 1))
    await trio.testing.wait_all_tasks_blocked()
    assert events.seen == [("/tasks/exit", "c1", "", 1)]


async def test_exit_of_a_deleted_init_publishes_nothing(tracker: tuple[Exits, Events]) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    box.init.state = states.InitDeleted()  # Delete of a never-started container
    exits.forget(box)
    exits.on_exit(Exit(100, 137, 1))
    await trio.testing.wait_all_tasks_blocked()
    assert events.seen == []
    assert not exits.init_exited(box)


async def test_wait_released_by_exit_for_waiters_before_and_after(
    tracker: tuple[Exits, Events],
) -> None:
    exits, _ = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    released = []

    async def waiter() -> None:
        await box.init.wait()
        released.append(box.init.exit_status)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        exits.on_exit(Exit(100, 143, 1))
    await box.init.wait()
    assert released == [143, 143, 143]


async def test_second_start_of_a_running_exec_is_counted_once(
    tracker: tuple[Exits, Events],
) -> None:
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    exits.exec_starting(box)
    e = _exec(box, "e1", 200)
    with exits.starting() as starting:
        starting.started(box, e)
    # Start again: refused by the state machine, the service then reports the failure
    exits.exec_starting(box)
    with exits.starting() as starting:
        exits.exec_start_failed(box)
        starting.started(box, e)
    assert exits.running_execs(box) == 1
    exits.on_exit(Exit(200, 0, 1))
    exits.on_exit(Exit(100, 0, 2))
    await trio.testing.wait_all_tasks_blocked()
    assert [x[1] for x in events.seen] == ["e1", "c1"]


async def test_exit_during_a_refused_second_start_counts_the_exec_once(
    tracker: tuple[Exits, Events],
) -> None:
    # e1 exits while a second Start of it is being refused: its exit reaches exit handling
    # twice (from `running` and from the start's buffer) and must end its count only once,
    # or the init's TaskExit overtakes e2's.
    exits, events = tracker
    box = _box()
    with exits.starting() as starting:
        box.init.pid = 100
        starting.started(box, box.init)
    running = []
    for n, pid in ((1, 201), (2, 202)):
        exits.exec_starting(box)
        e = _exec(box, f"e{n}", pid)
        with exits.starting() as starting:
            starting.started(box, e)
        running.append(e)
    exits.exec_starting(box)  # Start e1 again
    with exits.starting() as starting:
        exits.on_exit(Exit(201, 0, 1))  # e1 exits meanwhile
        exits.exec_start_failed(box)  # "cannot start a running process"
        starting.started(box, running[0])
    await trio.testing.wait_all_tasks_blocked()
    assert exits.running_execs(box) == 1  # e2
    exits.on_exit(Exit(100, 137, 2))
    await trio.testing.wait_all_tasks_blocked()
    exits.on_exit(Exit(202, 137, 3))
    await trio.testing.wait_all_tasks_blocked()
    assert [e[1] for e in events.seen] == ["e1", "e2", "c1"]


class _UndrainedIO:
    """Output still being delivered to the client (the exit is held meanwhile)."""

    drained = False

    async def wait_drained(self, timeout: float) -> bool:  # noqa: ASYNC109
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def process_exited(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_kill_after_reap_never_signals_the_pid_again(tracker: tuple[Exits, Events]) -> None:
    """Between the reap and the recorded exit (output delivery), the pid may be reused: Kill
    answers "process already finished" and signals nobody."""
    exits, _ = tracker
    box = _box()
    async with open_reaper() as reaper:
        stranger = reaper.spawn(["sleep", "30"])  # as if the exec's pid had been reused already
        try:
            e = _exec(box, "e1", stranger.pid)
            e.io = _UndrainedIO()  # type: ignore[assignment]
            exits.exec_starting(box)
            with exits.starting() as starting:
                starting.started(box, e)
            exits.on_exit(Exit(stranger.pid, 0, 1))
            await trio.testing.wait_all_tasks_blocked()
            assert not e.has_exited  # held until the output is delivered
            with pytest.raises(TaskError) as info:
                await e.kill(signal.SIGTERM)
            assert info.value.code == Code.NOT_FOUND
            await trio.testing.wait_all_tasks_blocked()
            assert stranger.returncode is None  # not signalled
        finally:
            stranger.kill()
            assert await stranger.wait() == 128 + signal.SIGKILL


async def test_a_sigkilled_init_hands_off_to_the_oom_check_before_its_exit() -> None:
    """TaskOOM before TaskExit by an explicit hand-off: the OOM check runs (and publishes)
    before the SIGKILLed init's exit is published; another exit status does not ask."""
    events = Events()

    def check_oom(container_id: str) -> None:
        events.publish("/tasks/oom", Message())
        events.seen[-1] = ("/tasks/oom", container_id, "", 0)

    async with trio.open_nursery() as nursery:
        exits = Exits(events.publish, nursery, check_oom)
        killed, ended = _box("c1"), _box("c2")
        for pid, box in ((100, killed), (200, ended)):
            with exits.starting() as starting:
                box.init.pid = pid
                starting.started(box, box.init)
        exits.on_exit(Exit(100, 137, 5))
        exits.on_exit(Exit(200, 1, 6))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    c1 = [e for e in events.seen if e[1] == "c1"]
    c2 = [e for e in events.seen if e[1] == "c2"]
    assert c1 == [("/tasks/oom", "c1", "", 0), ("/tasks/exit", "c1", "", 137)]
    assert c2 == [("/tasks/exit", "c2", "", 1)]
