"""Our shim's fork server under a real containerd: one per containerd, gone with it (its
daemons are not), and daemons placed and named as Go's containerd-shim-runc-v2 daemons are."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support import placed
from tests.support.containerd import venv_bin_dir
from tests.support.line_containerd import LineContainerd

from .helpers import E2E, REFERENCE, TRIOSHIM, wait_for

SHIM = os.path.join(venv_bin_dir(), "containerd-shim-trioshim-v2")


def only_shim(env: E2E, cid: str) -> int:
    pids = wait_for(lambda: env.shim_pids_for(cid), what=f"the shim of {cid}")
    assert len(pids) == 1, pids
    return int(pids[0])


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]


def test_the_fork_server_lives_and_dies_with_its_containerd(
    make_containerd: Callable[..., LineContainerd], busybox_rootfs: Path
) -> None:
    daemon = make_containerd()
    daemon.start()
    env = E2E(daemon, busybox_rootfs, TRIOSHIM, "test_forkserver_lifetime")
    try:
        first = env.run_detached("/bin/sleep", "1000")  # cold: spawns the server
        second = env.run_detached("/bin/sleep", "1000")  # warm: through it
        # One server (a second one spawned by a racing cold start exits: the lock is taken).
        wait_for(lambda: len(daemon.forkserver_pids()) == 1, what="one fork server")
        assert len(daemon.forkserver_files()) == 2  # its socket and its lock file
        shims = [only_shim(env, cid) for cid in (first, second)]

        daemon.halt()
        wait_for(lambda: not daemon.forkserver_pids(), what="the server to end with containerd")
        assert daemon.forkserver_files() == []
        assert [only_shim(env, cid) for cid in (first, second)] == shims  # containers stay

        daemon.start()  # containerd restarted: it finds its shims, a new server serves it
        assert env.status(first) == env.status(second) == "RUNNING"
        for cid in (first, second):
            env.kill_and_delete(cid)
        wait_for(lambda: not env.leftovers(), what="the shims to exit")

        daemon.halt()
        wait_for(lambda: not daemon.forkserver_pids(), what="the new server to end")
        assert daemon.forkserver_files() == [] and daemon.shim_pids() == []
    finally:
        daemon.stop()


def spawn_server_here(daemon: LineContainerd, log: Path) -> int:
    """A fork server for ``daemon``'s address, spawned by a helper run from this test process
    (so placed like it, not like containerd); returns its pid."""
    with tempfile.TemporaryDirectory() as bundle:
        subprocess.run(
            [
                SHIM,
                "-namespace",
                daemon.namespace,
                "-address",
                daemon.address,
                "-id",
                "x",
                "delete",
            ],
            cwd=bundle,
            env={**daemon.env, "TRIOSHIM_FORKSERVER_LOG": str(log)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
    found = wait_for(
        lambda: re.findall(r"forkserver\[(\d+)\] serving", log.read_text()), what="the server"
    )
    return int(found[0])


def test_daemons_are_placed_and_named_like_the_go_shims(
    make_containerd: Callable[..., LineContainerd], busybox_rootfs: Path
) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = min(hard, 4096) - 7  # soft = hard: Go's runtime raises its soft limit to the hard
    with placed.new_cgroups("tsh-ctrd") as cgroups:
        wrap = placed.wrap(
            [],
            umask=0o027 if umask != 0o027 else 0o077,
            rlimits={"NOFILE": (nofile, nofile), "CORE": (4096, 8192), "MSGQUEUE": (4000, 5000)},
            oom_score_adj=123,
            cgroup_procs=cgroups,
        )
        daemon = make_containerd(wrap=wrap)
        daemon.start()
        log = daemon.base / "forkserver.log"
        server = spawn_server_here(daemon, log)
        try:
            go = E2E(daemon, busybox_rootfs, REFERENCE, "test_placed")
            ours = E2E(daemon, busybox_rootfs, TRIOSHIM, "test_placed")
            go_cid, our_cid = (
                go.run_detached("/bin/sleep", "1000"),
                ours.run_detached("/bin/sleep", "1000"),
            )
            assert re.search(r"worker for pid \d+", log.read_text())  # ours went through it
            go_shim, our_shim = only_shim(go, go_cid), only_shim(ours, our_cid)

            # Placed like Go's daemon (so like containerd), not like the server.
            want, got, theirs = map(placed.Place.of, (go_shim, our_shim, server))
            assert got == want
            assert (theirs.cgroup, theirs.limits, theirs.umask) != (
                want.cgroup,
                want.limits,
                want.umask,
            )
            # Named like it: the same flags in the same order, no action word.
            go_argv, our_argv = cmdline(go_shim), cmdline(our_shim)
            assert os.path.basename(go_argv[0]) == "containerd-shim-runc-v2"
            assert our_argv[0] == SHIM
            assert [a.replace(our_cid, go_cid) for a in our_argv[1:]] == go_argv[1:]
            for env, cid in ((go, go_cid), (ours, our_cid)):
                env.kill_and_delete(cid)
        finally:
            os.kill(server, signal.SIGTERM)
            daemon.stop()
            wait_for(lambda: not daemon.forkserver_pids(), what="our servers to exit")
