"""How runc's kit instances collect their exits, without runc: an exit reaped before its
wait is kept, a reaped exec is never signalled again, the init's exit is followed by kill
--all (unless its PID namespace is private) and preceded by the OOM check when SIGKILLed.

The order of the events these exits cause (start < exit, execs before their init, Wait) is
the kit's, tested in tests/task/test_event_order.py and test_engine_lifecycle.py, and with
real runc in tests/runc/test_service.py."""

from __future__ import annotations

import signal

import pytest
import trio
import trio.testing

from tests.runc.backend_fakes import PID, reaped, running
from trioshim.runc import exec_process
from trioshim.shim.reaper import Reaper
from trioshim.task.errors import TaskError
from trioshim.task.events import GO_ZERO_TIME_SECONDS, timestamp
from trioshim.ttrpc.errors import Code


def test_timestamps() -> None:
    zero = timestamp(None)
    assert (zero.seconds, zero.nanos) == (GO_ZERO_TIME_SECONDS, 0)
    assert zero.ToJsonString() == "0001-01-01T00:00:00Z"
    ts = timestamp(1_700_000_000_123_456_789)
    assert (ts.seconds, ts.nanos) == (1_700_000_000, 123_456_789)


@pytest.mark.parametrize("kind", ["init", "exec"])
async def test_exit_reaped_before_the_wait_is_kept(kind: str) -> None:
    """``runc start``/``exec`` may still run when the process exits: its exit waits for the
    wait that the kit begins once Start returned."""
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        instance, _ = running(kind, reaper, nursery)
        reaped(reaper, PID, 3, at_ns=7)
        exit = await instance.wait()
        assert (exit.status, exit.exited_at_ns) == (3, 7)
        assert (instance.process.exit_status, instance.process.exited_at_ns) == (3, 7)
        assert instance.process.has_exited
        nursery.cancel_scope.cancel()


class _UndrainedIO:
    """Output still being delivered to the client (the exit is recorded after it)."""

    drained = False

    async def wait_drained(self, timeout: float) -> bool:  # noqa: ASYNC109
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def process_exited(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_kill_after_reap_never_signals_the_pid_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the reap and the recorded exit (output delivery), the pid may be reused: Kill
    answers "process already finished" and signals nobody."""
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(exec_process.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        instance, _ = running("exec", reaper, nursery)
        instance.process.io = _UndrainedIO()  # type: ignore[assignment]
        nursery.start_soon(instance.wait)
        await trio.testing.wait_all_tasks_blocked()
        await instance.kill(signal.SIGTERM, False)  # before the reap: delivered
        assert signalled == [(PID, signal.SIGTERM)]
        reaped(reaper, PID, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert not instance.process.has_exited  # recorded once the output is delivered
        with pytest.raises(TaskError) as info:
            await instance.kill(signal.SIGTERM, False)
        assert info.value.code == Code.NOT_FOUND
        assert signalled == [(PID, signal.SIGTERM)]  # not signalled again
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("status", "polled"), [(137, True), (1, False)])
async def test_a_sigkilled_init_polls_the_oom_watcher_before_its_exit(
    status: int, polled: bool
) -> None:
    """TaskOOM before TaskExit by an explicit hand-off: the OOM check runs (and publishes)
    before the SIGKILLed init's wait returns; another exit status does not ask."""
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        instance, container = running("init", reaper, nursery)
        reaped(reaper, PID, status)
        exit = await instance.wait()
        container.order.append(f"exit {exit.status}")
        nursery.cancel_scope.cancel()
    assert container.order == ["oom c1"] * polled + [f"exit {status}"]


@pytest.mark.parametrize("kill_all", [True, False])
async def test_init_exit_kills_what_is_left_unless_its_pid_namespace_is_private(
    kill_all: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        instance, container = running("init", reaper, nursery)
        container.kill_all = kill_all  # no private PID namespace: the kernel leaves the rest

        async def kill_all_() -> None:
            container.order.append("kill --all")

        monkeypatch.setattr(instance.process, "kill_all", kill_all_)
        reaped(reaper, PID, 0)
        await instance.wait()
        container.order.append("exit")
        nursery.cancel_scope.cancel()
    assert container.order == ["kill --all"] * kill_all + ["exit"]
