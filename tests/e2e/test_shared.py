"""Shared mode end to end: `io.containerd.trioshim-shared.v2` serves every shim of a
containerd from one process; each shim still behaves (and ends) as a process of its own would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.containerd import PrivateContainerd
from tests.support.containerd_layout import RUNC_ROOT
from tests.support.forkserver_env import maps_library
from tests.support.line_containerd import LineContainerd
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as task_v2

from .helpers import E2E, alive, on_own_containerd, wait_for

SHARED = "io.containerd.trioshim-shared.v2"
BINARY = b"containerd-shim-trioshim-shared-v2"


def shared_pids(containerd: PrivateContainerd) -> list[int]:
    """The shared processes of this containerd (a shim argv0, `-address`, no `-id`)."""
    found = []
    for pid in containerd.shim_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(BINARY) and b"-id" not in argv:
            found.append(pid)
    return found


@pytest.fixture
def shared(
    request: pytest.FixtureRequest, containerd: PrivateContainerd, busybox_rootfs: Path
) -> Iterator[E2E]:
    env = E2E(containerd, busybox_rootfs, SHARED, request.node.name, short="sh")
    yield env
    try:
        wait_for(lambda: not env.leftovers() and not shared_pids(containerd), timeout=10)
    except AssertionError:
        left = env.leftovers() + [f"shared process {p}" for p in shared_pids(containerd)]
        env.force_cleanup()
        for pid in shared_pids(containerd):
            os.kill(pid, signal.SIGKILL)
        rep = getattr(request.node, "rep_call", None)
        if rep is None or not rep.failed:
            pytest.fail(f"left behind after the test: {left}", pytrace=False)


@pytest.fixture
def shared_own(
    request: pytest.FixtureRequest,
    busybox_rootfs: Path,
    make_containerd: Callable[..., LineContainerd],
) -> Iterator[E2E]:
    with on_own_containerd(request, make_containerd(), busybox_rootfs, SHARED, short="sh") as env:
        yield env


# The default idle time, for one containerd only (the tests' containerd sets 0): the process
# outlives its last shim, so what ends it is its containerd going, or a signal.
IDLE = {"TRIOSHIM_SHARED_IDLE": "600"}


def gone_with_its_files(c: PrivateContainerd) -> bool:
    return not shared_pids(c) and not c.forkserver_files()


@pytest.fixture
def shared_idling(
    request: pytest.FixtureRequest,
    busybox_rootfs: Path,
    make_containerd: Callable[..., LineContainerd],
) -> Iterator[E2E]:
    daemon = make_containerd(env=IDLE)
    with on_own_containerd(request, daemon, busybox_rootfs, SHARED, short="sh") as env:
        yield env


def test_one_process_serves_many_containers(shared: E2E) -> None:
    e2e = shared
    with ThreadPoolExecutor(4) as pool:  # concurrent starts: still one process
        cids = list(pool.map(lambda _: e2e.run_detached("/bin/sleep", "1000"), range(4)))
    assert len(shared_pids(e2e.containerd)) == 1
    (owner,) = shared_pids(e2e.containerd)
    assert e2e.shim_pids_for(cids[0]) == []  # no process of its own

    r = e2e.run("/bin/sh", "-c", "echo hello from shared; exit 3")
    assert (r.returncode, r.stdout) == (3, "hello from shared\n"), r.stderr
    r = e2e.exec(cids[1], "/bin/sh", "-c", "echo in exec; exit 5", exec_id="x1")
    assert (r.returncode, r.stdout) == (5, "in exec\n"), r.stderr
    assert shared_pids(e2e.containerd) == [owner]

    # trio imports ssl and hmac; the shared process defers them, so it maps no OpenSSL.
    assert not maps_library(owner, "libcrypto")

    for cid in cids:
        assert e2e.kill_and_delete(cid) == 137
    wait_for(lambda: not alive(owner), what="the shared process to end with its last shim")


def test_shutdown_of_one_shim_leaves_the_others(shared: E2E) -> None:
    e2e = shared
    cids = [e2e.run_detached("/bin/sleep", "1000") for _ in range(3)]
    (owner,) = shared_pids(e2e.containerd)
    first = e2e.containerd.shim_sockets([cids[0]])
    assert first, "the shim has a socket of its own"

    assert e2e.kill_and_delete(cids[0]) == 137  # Delete, then Shutdown of that shim
    wait_for(lambda: not e2e.containerd.shim_sockets([cids[0]]), what="its socket removed")
    assert shared_pids(e2e.containerd) == [owner]
    for n, cid in enumerate(cids[1:]):
        assert e2e.status(cid) == "RUNNING"
        r = e2e.exec(cid, "/bin/echo", f"still-{n}", exec_id=f"still-{n}")
        assert (r.returncode, r.stdout) == (0, f"still-{n}\n"), r.stderr
    for cid in cids[1:]:
        assert e2e.kill_and_delete(cid) == 137


def test_containerd_restart_shims_reconnect(shared_own: E2E) -> None:
    e2e = shared_own
    cids = [e2e.run_detached("/bin/sleep", "1000") for _ in range(2)]
    (owner,) = shared_pids(e2e.containerd)
    pids = {cid: e2e.tasks()[cid][0] for cid in cids}

    e2e.containerd.restart(sig=signal.SIGTERM)

    assert shared_pids(e2e.containerd) == [owner]
    for cid in cids:
        assert e2e.tasks()[cid] == (pids[cid], "RUNNING")
        r = e2e.exec(cid, "/bin/sh", "-c", "echo back; exit 4", exec_id="after")
        assert (r.returncode, r.stdout) == (4, "back\n"), r.stderr
    # trio imports ssl and hmac; the shared process defers them, so it maps no OpenSSL.
    assert not maps_library(owner, "libcrypto")

    for cid in cids:
        assert e2e.kill_and_delete(cid) == 137
    wait_for(lambda: not alive(owner), what="the shared process to end with its last shim")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_shared_process_killed(shared_own: E2E, sig: signal.Signals) -> None:
    e2e = shared_own
    c = e2e.containerd
    cids = [e2e.run_detached("/bin/sleep", "1000") for _ in range(3)]
    inits = [e2e.tasks()[cid][0] for cid in cids]
    (owner,) = shared_pids(c)

    os.kill(owner, sig)  # SIGTERM: every shim shuts down in order; SIGKILL: all at once

    # containerd sees every shim's connection close and runs `<shim> delete` for each.
    for cid, pid in zip(cids, inits, strict=True):
        wait_for(lambda cid=cid: cid not in e2e.tasks(), timeout=30, what=f"task {cid} gone")
        wait_for(lambda pid=pid: not alive(pid), what=f"container init {pid} killed")
    for cid in cids:
        # containerd forgets the task before its clean-up (delete action, bundle) is done.
        wait_for(lambda cid=cid: not c.bundle(cid).exists(), timeout=30, what="bundle gone")
        assert not (RUNC_ROOT / c.namespace / cid).exists()
        r = e2e.ctr("container", "delete", cid)
        assert r.returncode == 0, r.stderr
    assert not c.shim_sockets(cids)
    assert not [m for m in c.mounts() if any(f"/{cid}/" in m + "/" for cid in cids)]
    assert not shared_pids(c)
    assert e2e.leftovers() == []
    # The killed process's control socket and lock file went with the shims' clean-up.
    assert not [f for f in c.forkserver_files() if f.name.startswith("shared-")]


def test_delete_action_leaves_the_shim_serving(shared: E2E) -> None:
    e2e = shared
    c = e2e.containerd
    doomed, kept = (e2e.run_detached("/bin/sleep", "1000") for _ in range(2))
    init = e2e.tasks()[doomed][0]
    (owner,) = shared_pids(c)
    bundle = c.bundle(doomed)

    # As with the Go shim, `delete` cleans up runc's side only: containerd 1.x runs it for
    # every container of a group whose connection closes while the group's shim still
    # serves the others, so it must not end a live shim.
    binary = shutil.which("containerd-shim-trioshim-shared-v2", path=c.path)
    assert binary is not None
    argv = [binary, "-namespace", c.namespace, "-address", c.address, "-id", doomed]
    r = subprocess.run(
        [*argv, "-bundle", str(bundle), "delete"],
        cwd=bundle,
        env={**c.env, "PYTHONVERBOSE": "1"},  # lists what the helper imports on stderr
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    # The live shared process ran it: the helper never imported the shim (nor trio).
    assert b"import 'trio'" not in r.stderr
    assert b"import 'trioshim.shim.sharedlaunch'" in r.stderr
    reply = task_v2.DeleteResponse.FromString(r.stdout)
    assert (reply.pid, reply.exit_status) == (init, 137)

    wait_for(lambda: not alive(init), what=f"container init {init} killed")
    e2e.wait_status(doomed, "STOPPED")  # the shim saw the exit and reported it
    assert c.shim_sockets([doomed])
    assert e2e.delete_task(doomed) == 137
    assert e2e.ctr("container", "delete", doomed).returncode == 0
    assert shared_pids(c) == [owner]
    r = e2e.exec(kept, "/bin/echo", "untouched", exec_id="kept")
    assert (r.returncode, r.stdout) == (0, "untouched\n"), r.stderr
    assert e2e.kill_and_delete(kept) == 137


def test_new_build_gets_a_process_of_its_own(shared: E2E) -> None:
    e2e = shared
    c = e2e.containerd
    old = e2e.run_detached("/bin/sleep", "1000")
    (first,) = shared_pids(c)

    # An upgrade: the shim executable changes (its mtime is part of the process's key).
    binary = shutil.which("containerd-shim-trioshim-shared-v2", path=c.path)
    assert binary is not None
    stat = os.stat(binary)
    os.utime(binary, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    new = e2e.run_detached("/bin/sleep", "1000")
    pids = shared_pids(c)
    assert len(pids) == 2 and first in pids, pids  # the old one keeps its shim
    r = e2e.exec(old, "/bin/echo", "old build", exec_id="old")
    assert (r.returncode, r.stdout) == (0, "old build\n"), r.stderr

    assert e2e.kill_and_delete(old) == 137
    wait_for(lambda: not alive(first), what="the old build's process to end with its shim")
    r = e2e.exec(new, "/bin/echo", "new build", exec_id="new")
    assert (r.returncode, r.stdout) == (0, "new build\n"), r.stderr
    assert e2e.kill_and_delete(new) == 137


def test_idle_process_serves_the_next_start_and_delete_itself(shared_idling: E2E) -> None:
    e2e = shared_idling
    c = e2e.containerd
    r = e2e.run("/bin/echo", "first")  # no process yet: the helper forks one
    assert (r.returncode, r.stdout) == (0, "first\n"), r.stderr
    (owner,) = shared_pids(c)  # its last shim is gone; it stays for the next start
    for n in range(2):
        r = e2e.run("/bin/sh", "-c", f"echo again-{n}; exit {n + 2}")
        assert (r.returncode, r.stdout) == (n + 2, f"again-{n}\n"), r.stderr
        assert shared_pids(c) == [owner]
    # The shared process, not a fork server, stays warm for the helpers.
    names = [f.name for f in c.forkserver_files()]
    assert names and all(n.startswith("shared-") for n in names), names

    os.kill(owner, signal.SIGTERM)  # idle: it just ends
    wait_for(lambda: not alive(owner), what="the idle shared process to end on SIGTERM")
    assert c.forkserver_files() == []


def test_process_ends_when_its_containerd_stops(shared_idling: E2E) -> None:
    e2e = shared_idling
    c = e2e.containerd
    cid = e2e.run_detached("/bin/sleep", "1000")
    (owner,) = shared_pids(c)
    assert e2e.kill_and_delete(cid) == 137
    wait_for(lambda: not e2e.leftovers(), what="the shim to end")
    assert shared_pids(c) == [owner]  # its containerd is alive: it idles for the next start

    c.halt()
    wait_for(lambda: gone_with_its_files(c), what="the process and its files to go")


def test_process_after_a_containerd_restart_ends_with_its_last_shim(shared_idling: E2E) -> None:
    e2e = shared_idling
    c = e2e.containerd
    cids = [e2e.run_detached("/bin/sleep", "1000") for _ in range(2)]
    (owner,) = shared_pids(c)

    c.restart()  # the new containerd reconnects to the shims; it starts nothing
    assert shared_pids(c) == [owner]
    assert e2e.kill_and_delete(cids[0]) == 137
    r = e2e.exec(cids[1], "/bin/echo", "served on", exec_id="on")
    assert (r.returncode, r.stdout) == (0, "served on\n"), r.stderr
    assert shared_pids(c) == [owner]  # a shim is left: it serves on

    assert e2e.kill_and_delete(cids[1]) == 137
    # Its containerd has gone: no idle time.
    wait_for(lambda: gone_with_its_files(c), what="the process and its files to go")


def test_restarted_containerd_makes_the_process_its_own_with_its_first_start(
    shared_idling: E2E,
) -> None:
    e2e = shared_idling
    c = e2e.containerd
    old = e2e.run_detached("/bin/sleep", "1000")
    (owner,) = shared_pids(c)

    c.restart()
    new = e2e.run_detached("/bin/sleep", "1000")  # same address: the same process
    assert shared_pids(c) == [owner]
    for cid in (old, new):
        assert e2e.kill_and_delete(cid) == 137
    # It is the new containerd's now, idling for its next start (had it ended with its
    # last shim, this start would fork another process).
    r = e2e.run("/bin/echo", "still here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    assert shared_pids(c) == [owner]

    c.halt()
    wait_for(lambda: gone_with_its_files(c), what="the process and its files to go")
