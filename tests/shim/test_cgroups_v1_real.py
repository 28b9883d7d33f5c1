"""Cgroup v1 metrics from a real cgroup on this host: a child moves itself into fresh
controller directories and charges memory there, and Task.Stats must see it (skipped unless
root on a cgroup v1 host)."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests.support.cgroupdirs import rmdir_cgroup
from trioshim.api.cgroups.v1 import metrics_pb2 as v1
from trioshim.shim.cgroups import CgroupV1, is_unified, load_cgroup
from trioshim.ttrpc.errors import NotFound

REAL_ROOT = "/sys/fs/cgroup"
needs_real_v1 = pytest.mark.skipif(
    os.geteuid() != 0
    or is_unified(REAL_ROOT)
    or not os.path.isdir(os.path.join(REAL_ROOT, "memory")),
    reason="needs root on a cgroup v1 host",
)

# A child that moves itself into the cgroups named on its command line, then allocates and
# touches 4 MiB (charged to the new memory cgroup), says "ready" and waits for stdin to close.
CHILD = """
import os, sys
for procs in sys.argv[1:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
data = bytearray(b"x" * (4 << 20))
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def real_v1_dirs() -> Iterator[dict[str, str]]:
    name = f"trioshim-test-{uuid.uuid4().hex[:12]}"
    dirs: dict[str, str] = {}
    try:
        for controller in ("memory", "cpu", "cpuacct", "pids", "blkio"):
            mount = os.path.join(REAL_ROOT, controller)
            if not os.path.isdir(mount):
                continue
            path = os.path.join(mount, name)
            os.mkdir(path)
            dirs[controller] = path
        yield dirs
    finally:
        for path in dirs.values():
            rmdir_cgroup(path)


def _spawn(argv: list[str]) -> tuple[int, int, int]:
    """posix_spawn with pipes on stdin/stdout; returns (pid, stdin writer, stdout reader)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
            ],
        )
    except BaseException:
        for fd in (in_w, out_r):
            os.close(fd)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    return pid, in_w, out_r


async def _reap(pid: int) -> int | None:
    try:
        _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
    except ChildProcessError:
        return None  # reaped elsewhere
    return status


@pytest.fixture
async def sleeping_child(real_v1_dirs: dict[str, str]) -> AsyncIterator[int]:
    procs = [os.path.join(d, "cgroup.procs") for d in real_v1_dirs.values()]
    pid, stdin_w, stdout_r = _spawn([sys.executable, "-c", CHILD, *procs])
    try:
        stream = trio.lowlevel.FdStream(stdout_r)
        stdout_r = -1
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await stream.receive_some()
                assert chunk, "child died before it was ready"
                line += chunk
        await stream.aclose()
        assert line == b"ready\n"
        yield pid
    finally:
        if stdout_r >= 0:
            os.close(stdout_r)
        os.close(stdin_w)  # the child's stdin.read() returns: it exits
        with trio.move_on_after(10) as scope:
            await _reap(pid)
        if scope.cancelled_caught:
            os.kill(pid, signal.SIGKILL)
            await _reap(pid)
        # the fixture above removes the (now empty) cgroups


@needs_real_v1
async def test_v1_real_metrics(real_v1_dirs: dict[str, str], sleeping_child: int) -> None:
    cg = load_cgroup(sleeping_child)
    assert isinstance(cg, CgroupV1)
    for controller, path in real_v1_dirs.items():
        assert cg.paths[controller] == path
    got = v1.Metrics.FromString(cg.metrics().value)
    assert got.memory.usage.usage > 0
    assert got.memory.usage.max >= got.memory.usage.usage
    assert got.memory.usage.limit > 0
    assert got.memory.total_rss + got.memory.total_cache > 0
    assert got.HasField("memory_oom_control")
    if "pids" in real_v1_dirs:
        assert got.pids.current == 1
        assert got.pids.limit == 0  # "max"
    if "cpuacct" in real_v1_dirs:
        assert got.cpu.usage.total > 0
        assert len(got.cpu.usage.per_cpu) >= 1
        assert sum(got.cpu.usage.per_cpu) == got.cpu.usage.total
    assert got.HasField("blkio")


@needs_real_v1
async def test_v1_real_gone_is_not_found(real_v1_dirs: dict[str, str]) -> None:
    cg = CgroupV1(real_v1_dirs)
    cg.metrics()
    for path in real_v1_dirs.values():
        os.rmdir(path)
    with pytest.raises(NotFound):
        cg.metrics()
