"""The shared process ends with its containerd: at once once that containerd has gone and its
last daemon has ended (not after its idle time), its control socket and lock file removed; a
containerd restarted at the same address makes the process its own with its first start. A
fake containerd is a child process the test kills; time is virtual."""

from __future__ import annotations

import contextlib
import marshal
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from tests.shim.test_shared_actions import _request, served
from trioshim.api.containerd.runtime.task.v2 import shim_pb2
from trioshim.shim.forkserver import containerd_address
from trioshim.shim.sharedcontainerd import POLL_INTERVAL, Containerd
from trioshim.shim.sharedlaunch import control_path
from trioshim.testing import connect_task

IDLE = 600.0


Popen = subprocess.Popen[bytes]


@contextlib.contextmanager
def fake_containerd() -> Iterator[Popen]:
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def end(proc: Popen) -> None:
    """containerd stops (reaped at once, so a pidfd on it is readable from now on)."""
    proc.kill()
    proc.wait()


def watched(pid: int, how: str) -> Containerd:
    containerd = Containerd.of(pid)
    if how == "polled":
        containerd.close()  # as where the kernel has no pidfds: the start time is looked at
    else:
        assert containerd.pidfd is not None
    return containerd


async def noticed() -> None:
    """Long enough (virtual time) for the process to see its containerd gone: a pidfd is
    readable already, a poll comes within ``POLL_INTERVAL``."""
    await trio.sleep(2 * POLL_INTERVAL)
    await trio.testing.wait_all_tasks_blocked()


async def connects(address: str) -> bool:
    async with connect_task(address) as task:
        return bool((await task.Connect(shim_pb2.ConnectRequest(id="x"))).shim_pid)


@pytest.mark.parametrize("how", ["pidfd", "polled"])
async def test_process_ends_at_once_when_containerd_and_the_last_daemon_are_gone(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    with fake_containerd() as containerd:
        async with served(IDLE, containerd=watched(containerd.pid, how)) as env:
            await env.shims.stop(await env.add("c0"), "test")
            with trio.move_on_after(IDLE / 2):
                await env.ended.wait()
            assert not env.ended.is_set()  # containerd alive: it idles
            assert env.files() == [env.path, env.path + ".lock"]

            address = await env.add("c1")  # and takes the next daemon
            end(containerd)
            await noticed()
            assert env.shims.orphaned
            assert not env.ended.is_set()  # a daemon is left: it serves on
            assert await connects(address)

            before = trio.current_time()
            await env.shims.stop(address, "test")
            await env.ended.wait()
            assert trio.current_time() - before < 1  # not the rest of its idle time
            assert env.files() == []


async def test_process_idle_when_its_containerd_goes_ends_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with fake_containerd() as containerd:
        async with served(IDLE, containerd=watched(containerd.pid, "pidfd")) as env:
            await env.shims.stop(await env.add("c0"), "test")
            with trio.move_on_after(IDLE / 2):
                await env.ended.wait()
            before = trio.current_time()
            end(containerd)
            await env.ended.wait()
            assert trio.current_time() - before < 1
            assert env.files() == []


# A fake containerd that runs one start helper (its child) against the control socket, prints
# the reply, and lives on until killed.
_RESTARTED = """
import os, socket, sys, time
path, request = sys.argv[1], bytes.fromhex(sys.argv[2])
pid = os.fork()
if pid == 0:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as helper:
        helper.connect(path)
        helper.send(request)
        os.write(1, helper.recv(1 << 20))
    os._exit(0)
os.waitpid(pid, 0)
os.close(1)
time.sleep(1000)
"""


@contextlib.contextmanager
def restarted_containerd(path: str, request: dict[str, object]) -> Iterator[Popen]:
    """A new containerd whose start helper sends ``request`` to the control socket ``path``;
    its stdout gives the reply."""
    message = marshal.dumps(request).hex()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RESTARTED, path, message], stdout=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        end(proc)


async def test_restarted_containerd_makes_the_process_its_own_with_its_first_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with fake_containerd() as old:
        async with served(IDLE, containerd=watched(old.pid, "pidfd")) as env:
            kept = await env.add("c0")
            end(old)  # containerd restarts at the same address; its daemons serve on
            await noticed()
            assert env.shims.orphaned

            request = {"op": "start", **_request(env.tmp, env.ttrpc, "c1", "start")}
            with restarted_containerd(env.path, request) as new:
                assert new.stdout is not None
                reply = marshal.loads(await trio.to_thread.run_sync(new.stdout.read))
                assert (reply["ok"], reply["status"]) == (True, 0), reply
                started = reply["stdout"].decode()
                assert env.shims.containerd is not None
                assert (env.shims.containerd.pid, env.shims.orphaned) == (new.pid, False)

                for address in (kept, started):
                    await env.shims.stop(address, "test")
                with trio.move_on_after(IDLE / 2):
                    await env.ended.wait()
                assert not env.ended.is_set()  # the new containerd is alive: it idles

                before = trio.current_time()
                end(new)
                await env.ended.wait()
                assert trio.current_time() - before < 1
                assert env.files() == []


def test_helper_finds_its_containerd_as_its_parent() -> None:
    containerd = Containerd.parent_of(os.getpid())
    try:
        assert containerd.pid == os.getppid() and not containerd.gone()
    finally:
        containerd.close()
    with fake_containerd() as proc:
        gone = Containerd.of(proc.pid)
        end(proc)
        assert gone.gone()
        gone.close()


def test_one_process_per_containerd_address_and_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    shim = os.path.join(tmp_path, "containerd-shim-trioshim-shared-v2")
    with open(shim, "w"):
        pass
    monkeypatch.setattr(sys, "argv", [shim, "start"])
    first = control_path("shared", "/run/a/containerd.sock")
    assert control_path("shared", "/run/a/containerd.sock") == first
    assert control_path("shared", "/run/b/containerd.sock") != first  # another containerd
    stat = os.stat(shim)
    os.utime(shim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert control_path("shared", "/run/a/containerd.sock") != first  # an upgraded build

    # No -address (nor GRPC_ADDRESS): the helper's look-up and the start's flags agree.
    monkeypatch.delenv("GRPC_ADDRESS", raising=False)
    monkeypatch.setenv("TTRPC_ADDRESS", "unix:///run/c/containerd.sock.ttrpc")
    assert control_path("shared", "") == control_path("shared", containerd_address(["start"]))
    assert control_path("shared", "") != control_path("shared", "/run/a/containerd.sock")
