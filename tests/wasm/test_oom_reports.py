"""WasmProcess's OOM reports on a stand-in child and a fake v1 eventfd (the test signals it as
the kernel would): each notification is reported live or left for the exit, never both, and
what the kernel counted before anyone looked is one report. Real cgroups:
tests/wasm/test_cgroup_limits.py; through containerd: tests/wasm/test_shim_e2e.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import trio
import trio.testing

from trioshim.shim.cgroups.oom import OOMCount
from trioshim.shim.reaper import Child
from trioshim.wasm import WasmProcess


class StandInChild:
    """Lives until :meth:`exit`; its status is the OOM killer's SIGKILL."""

    pid = 4242

    def __init__(self) -> None:
        self.exited = trio.Event()

    def exit(self) -> None:
        self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        return 137


@asynccontextmanager
async def _process(counted: bool = True) -> AsyncIterator[tuple[WasmProcess, int, StandInChild]]:
    """A WasmProcess whose diagnostics pipe is already at EOF; the eventfd the test signals."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.close(write_end)
    child = StandInChild()
    process = WasmProcess(
        cast(Child, child),
        "m.wasm",
        trio.lowlevel.FdStream(read_end),
        _oom_count=OOMCount(eventfd=efd) if counted else None,
    )
    try:
        yield process, efd, child
    finally:
        await process._diagnostics.aclose()
        if counted:
            assert process._oom_count is not None
            process._oom_count.close()
        else:
            os.close(efd)


async def test_an_oom_is_reported_while_the_module_runs_and_not_again_at_its_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reported = trio.Event()
    async with _process() as (process, efd, child), trio.open_nursery() as nursery:
        nursery.start_soon(process.watch_ooms, reported.set)
        os.eventfd_write(efd, 1)
        await reported.wait()  # the module still runs: its child has not exited
        assert not child.exited.is_set()
        child.exit()
        assert await process.wait() == 137
        nursery.cancel_scope.cancel()
    assert (process.oom_reports, process.oom_events, process.oom_at_exit) == (1, 1, False)


async def test_notifications_counted_before_anyone_looked_are_one_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[int] = []
    async with _process() as (process, efd, child), trio.open_nursery() as nursery:
        os.eventfd_write(efd, 1)
        os.eventfd_write(efd, 1)
        nursery.start_soon(process.watch_ooms, lambda: reports.append(process.oom_events))
        await trio.testing.wait_all_tasks_blocked()  # the watch took both and waits again
        os.eventfd_write(efd, 1)
        await trio.testing.wait_all_tasks_blocked()
        child.exit()
        await process.wait()
        nursery.cancel_scope.cancel()
    assert reports == [2, 3]  # one report per read of the eventfd, as runc's shim
    assert (process.oom_reports, process.oom_at_exit) == (2, False)


async def test_a_notification_no_watch_took_goes_with_the_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _process() as (process, efd, child):
        os.eventfd_write(efd, 1)  # the OOM that killed it, not yet seen when it is reaped
        child.exit()
        assert await process.wait() == 137
    assert (process.oom_reports, process.oom_events, process.oom_at_exit) == (0, 1, True)


async def test_a_notification_at_the_exit_is_told_once_whoever_takes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The watch and the exit race for the last notification: one of them has it."""
    reports: list[None] = []
    async with _process() as (process, efd, child), trio.open_nursery() as nursery:
        nursery.start_soon(process.watch_ooms, lambda: reports.append(None))
        await trio.testing.wait_all_tasks_blocked()
        os.eventfd_write(efd, 1)
        child.exit()  # both the watch and wait() are woken in the same scheduler pass
        await process.wait()
        nursery.cancel_scope.cancel()
    assert len(reports) + process.oom_at_exit == 1 and process.oom_events == 1


async def test_a_kill_without_a_notification_source_goes_with_the_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _process(counted=False) as (process, _, child), trio.open_nursery() as nursery:
        nursery.start_soon(process.watch_ooms, lambda: None)  # nothing to watch: returns
        child.exit()
        await process.wait()
    assert not process.oom_at_exit  # no kill recorded: nothing to tell
    process.oom_killed = True  # what wait() reads from a cgroup with no way to notify
    assert process.oom_at_exit and process.oom_reports == 0
