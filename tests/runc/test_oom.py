"""OOM watcher: a real OOM kill in a cgroup v1 memory group on this machine,
and the v2 inotify logic driven by writing memory.events/cgroup.events in tmp_path."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.support.cgroupdirs import rmdir_cgroup
from trioshim.runc.oom import open_oom_watcher
from trioshim.shim.cgroups import CgroupV1, CgroupV2, is_unified, oomsource

# --- helpers ----------------------------------------------------------------------------------


class Recorder:
    """on_oom that records the ids and lets a test await the n-th call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._changed = trio.Event()

    def __call__(self, container_id: str) -> None:
        self.calls.append(container_id)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.calls) < count:
            await self._changed.wait()


def _inotify_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            continue  # the listing's own fd, already closed
    return count


# --- v2: inotify on files in tmp_path ---------------------------------------------------------


def _events(oom_kill: int, *, oom: int | None = None, max_: int = 0) -> str:
    oom = oom_kill if oom is None else oom
    return f"low 0\nhigh 0\nmax {max_}\noom {oom}\noom_kill {oom_kill}\noom_group_kill 0\n"


@pytest.fixture
def v2_group(tmp_path: Path) -> Path:
    group = tmp_path / "ctr"
    group.mkdir()
    (group / "cgroup.controllers").write_text("memory pids\n")
    (group / "memory.events").write_text(_events(0))
    (group / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    return group


def _rewrite(path: Path, text: str) -> None:
    # one write(2) into the same inode: the watch is on the inode, so no rename
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


async def test_v2_reports_each_increase_once(v2_group: Path) -> None:
    rec = Recorder()
    with trio.fail_after(10):
        async with open_oom_watcher(rec) as watcher:
            watcher.add("c1", CgroupV2(str(v2_group)))
            assert watcher.watching == {"c1"}
            await trio.testing.wait_all_tasks_blocked()
            assert rec.calls == []

            _rewrite(v2_group / "memory.events", _events(1))
            await rec.wait_for(1)
            # other counters move, oom_kill does not: nothing; then oom_kill 1 -> 3: one call
            _rewrite(v2_group / "memory.events", _events(1, oom=2, max_=9))
            _rewrite(v2_group / "memory.events", _events(3))
            await rec.wait_for(2)
            await trio.testing.wait_all_tasks_blocked()
            assert rec.calls == ["c1", "c1"]

            # the group empties: the watch ends
            _rewrite(v2_group / "cgroup.events", "populated 0\nfrozen 0\n")
            await watcher.wait_stopped("c1")
            _rewrite(v2_group / "memory.events", _events(4))
            await trio.testing.wait_all_tasks_blocked()
            assert rec.calls == ["c1", "c1"]


async def test_v2_poll_reports_a_kill_now_and_once(v2_group: Path) -> None:
    """poll() is the hand-off before an OOM-killed init's exit: the kill is reported during
    the call, and the watch task, waking later to the same change, does not repeat it."""
    rec = Recorder()
    with trio.fail_after(10):
        async with open_oom_watcher(rec) as watcher:
            watcher.add("c1", CgroupV2(str(v2_group)))
            await trio.testing.wait_all_tasks_blocked()  # the watch waits on inotify
            watcher.poll("c1")
            assert rec.calls == []
            _rewrite(v2_group / "memory.events", _events(1))
            watcher.poll("c1")
            assert rec.calls == ["c1"]
            watcher.poll("c1")
            _rewrite(v2_group / "cgroup.events", "populated 0\nfrozen 0\n")
            await watcher.wait_stopped("c1")
            assert rec.calls == ["c1"]
            watcher.poll("c1")  # no watch left: nothing to look at
            assert rec.calls == ["c1"]


def test_v1_pending_takes_one_notification_and_leaves_a_removal() -> None:
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        with tempfile.TemporaryDirectory() as group:
            pending = oomsource.v1_pending(group, efd)
            assert not pending()
            os.eventfd_write(efd, 1)
            assert pending()
            assert not pending()
        os.eventfd_write(efd, 1)  # the group is gone: the watch task must see this signal
        assert not pending()
        assert os.eventfd_read(efd) == 1
    finally:
        os.close(efd)


async def test_v2_kill_before_add_is_reported(v2_group: Path) -> None:
    (v2_group / "memory.events").write_text(_events(1))
    rec = Recorder()
    with trio.fail_after(10):
        async with open_oom_watcher(rec) as watcher:
            watcher.add("early", CgroupV2(str(v2_group)))
            await rec.wait_for(1)
            assert rec.calls == ["early"]


async def test_v2_files_vanish_ends_watch(v2_group: Path) -> None:
    rec = Recorder()
    with trio.fail_after(10):
        async with open_oom_watcher(rec) as watcher:
            watcher.add("c1", CgroupV2(str(v2_group)))
            watcher.add("c2", CgroupV2(str(v2_group)))
            assert watcher.watching == {"c1", "c2"}
            (v2_group / "memory.events").unlink()
            await watcher.wait_stopped("c1")
            await watcher.wait_stopped("c2")
            assert rec.calls == []


async def test_v2_add_errors_and_callback_errors(tmp_path: Path, v2_group: Path) -> None:
    class Exploding(Recorder):
        def __call__(self, container_id: str) -> None:
            super().__call__(container_id)
            raise RuntimeError("publisher exploded")

    rec = Exploding()
    with trio.fail_after(10):
        async with open_oom_watcher(rec) as watcher:
            with pytest.raises(OSError) as info:
                watcher.add("missing", CgroupV2(str(tmp_path / "nope")))
            assert info.value.errno == errno.ENOENT
            assert watcher.watching == frozenset()

            watcher.add("c1", CgroupV2(str(v2_group)))
            _rewrite(v2_group / "memory.events", _events(1))
            await rec.wait_for(1)
            # the watch survived the callback's exception
            _rewrite(v2_group / "memory.events", _events(2))
            await rec.wait_for(2)
            assert watcher.watching == {"c1"}


async def test_exit_closes_everything_and_discard(v2_group: Path) -> None:
    before = _inotify_fds()
    rec = Recorder()
    with trio.fail_after(10):
        async with open_oom_watcher(rec) as watcher:
            watcher.add("c1", CgroupV2(str(v2_group)))
            watcher.add("c2", CgroupV2(str(v2_group)))
            await trio.testing.wait_all_tasks_blocked()
            assert _inotify_fds() == before + 2
            watcher.discard("c1")
            watcher.discard("unknown")
            await watcher.wait_stopped("c1")
            assert watcher.watching == {"c2"}
        assert _inotify_fds() == before
        with pytest.raises(RuntimeError):
            watcher.add("late", CgroupV2(str(v2_group)))


async def test_v1_without_memory_controller(tmp_path: Path) -> None:
    async with open_oom_watcher(Recorder()) as watcher:
        with pytest.raises(OSError):
            watcher.add("c1", CgroupV1({"cpu": str(tmp_path)}))


# --- v1: a real OOM kill ----------------------------------------------------------------------

REAL_MEMORY = "/sys/fs/cgroup/memory"
needs_real_v1 = pytest.mark.skipif(
    os.geteuid() != 0 or is_unified("/sys/fs/cgroup") or not os.path.isdir(REAL_MEMORY),
    reason="needs root on a cgroup v1 host",
)

LIMIT = 8 << 20

# Moves itself into the memory cgroup, then touches 64 MiB: the group's OOM killer fires.
HOG = """
import sys
with open(sys.argv[1], "w") as f:
    f.write(str(__import__("os").getpid()))
data = b"x" * (64 << 20)
"""


@pytest.fixture
def memory_group() -> Iterator[str]:
    path = os.path.join(REAL_MEMORY, f"trioshim-oom-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(LIMIT))
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # no escape into swap
            with open(memsw, "w") as f:
                f.write(str(LIMIT))
        yield path
    finally:
        rmdir_cgroup(path)


def _spawn_hog(memory_group: str) -> int:
    procs = os.path.join(memory_group, "cgroup.procs")
    return os.posix_spawn(sys.executable, [sys.executable, "-c", HOG, procs], dict(os.environ))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


async def _reap(pid: int) -> int | None:
    try:
        _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
    except ChildProcessError:
        return None  # reaped by someone else
    return status


@needs_real_v1
async def test_v1_real_oom_kill(memory_group: str) -> None:
    rec = Recorder()
    pid = -1
    try:
        with trio.fail_after(60):
            async with open_oom_watcher(rec) as watcher:
                watcher.add("oom-ctr", CgroupV1({"memory": memory_group}))
                pid = _spawn_hog(memory_group)
                await rec.wait_for(1)
                assert set(rec.calls) == {"oom-ctr"}

                status = await _reap(pid)
                pid = -1
                if status is not None:
                    assert os.WIFSIGNALED(status)
                    assert os.WTERMSIG(status) == signal.SIGKILL
                assert "oom_kill 0" not in _read(os.path.join(memory_group, "memory.oom_control"))

                # removing the group signals the eventfd: the watch ends without a report
                count = len(rec.calls)
                rmdir_cgroup(memory_group)
                await watcher.wait_stopped("oom-ctr")
                assert len(rec.calls) == count
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            await _reap(pid)
