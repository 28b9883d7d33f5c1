"""OOMCount on a fake v2 cgroup (memory.events written by the test) and a fake v1 eventfd
(signalled by the test); the real v1 eventfd is counted on a real cgroup in
tests/wasm/test_cgroup_limits.py."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from trioshim.shim.cgroups.oom import OOMCount


def _events(directory: Path, oom: int, oom_kill: int) -> None:
    (directory / "memory.events").write_text(
        f"low 0\nhigh 0\nmax 9\noom {oom}\noom_kill {oom_kill}\noom_group_kill 0\n"
    )


def test_v2_counts_oom_events_since_it_was_opened(tmp_path: Path) -> None:
    _events(tmp_path, oom=2, oom_kill=1)  # before: not ours
    count = OOMCount.open(str(tmp_path), unified=True)
    try:
        assert count.take() == 0
        _events(tmp_path, oom=5, oom_kill=2)  # three OOMs, one killing
        assert count.take() == 3
        assert count.take() == 0  # taken once
        (tmp_path / "memory.events").unlink()  # the cgroup went away
        assert count.take() == 0
    finally:
        count.close()
    assert count.take() == 0  # closed: nothing more, no error


async def test_v2_wait_wakes_when_memory_events_changes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    _events(tmp_path, oom=2, oom_kill=1)
    count = OOMCount.open(str(tmp_path), unified=True)
    try:
        with trio.move_on_after(60) as idle:  # virtual time: nothing changed, nothing wakes it
            await count.wait()
        assert idle.cancelled_caught
        _events(tmp_path, oom=3, oom_kill=1)  # an OOM that killed nothing
        await count.wait()
        assert count.take() == 1
        _events(tmp_path, oom=3, oom_kill=1)  # rewritten, no new OOM: a wake-up that says 0
        await count.wait()
        assert count.take() == 0
    finally:
        count.close()


async def test_v1_wait_wakes_on_the_eventfd_and_take_reads_all_it_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # as the kernel's, signalled by hand
    count = OOMCount(eventfd=efd)
    try:
        with trio.move_on_after(60) as idle:
            await count.wait()
        assert idle.cancelled_caught
        os.eventfd_write(efd, 1)
        os.eventfd_write(efd, 1)  # two notifications before anyone looked
        await count.wait()
        assert count.take() == 2
        with trio.move_on_after(60) as idle:  # taken: not readable any more
            await count.wait()
        assert idle.cancelled_caught
    finally:
        count.close()


async def test_wait_without_a_source_never_returns(autojump_clock: trio.testing.MockClock) -> None:
    count = OOMCount()
    with trio.move_on_after(3600) as idle:
        await count.wait()
    assert idle.cancelled_caught and count.take() == 0
