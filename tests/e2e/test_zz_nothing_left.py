"""Runs last (file order): after every e2e test, nothing of ours is left on the machine, and
once containerd stops, neither is our shim's fork server (process, socket or lock file)."""

from __future__ import annotations

from tests.support.containerd import PrivateContainerd
from tests.support.containerd_layout import RUNC_ROOT

from .helpers import USED_IDS, wait_for


def test_nothing_left_behind(containerd: PrivateContainerd) -> None:
    ns = containerd.namespace
    ids = USED_IDS.get(containerd.address, [])

    def leftovers() -> list[str]:
        left = [f"shim process {pid}" for pid in containerd.shim_pids()]
        left += [f"socket {s}" for s in containerd.shim_sockets(ids)]
        left += [f"mount {m}" for m in containerd.mounts()]
        tasks = containerd.ctr("task", "ls", "-q", timeout=30).stdout.split()
        left += [f"task {t}" for t in tasks]
        conts = containerd.ctr("container", "ls", "-q", timeout=30).stdout.split()
        left += [f"container {c}" for c in conts]
        bundles = containerd.state / "io.containerd.runtime.v2.task" / ns
        if bundles.is_dir():
            left += [f"bundle {b}" for b in bundles.iterdir()]
        workdirs = containerd.root / "io.containerd.runtime.v2.task" / ns
        if workdirs.is_dir():
            left += [f"work dir {w}" for w in workdirs.iterdir()]
        runc_state = RUNC_ROOT / ns
        if runc_state.is_dir():
            left += [f"runc state {r}" for r in runc_state.iterdir()]
        return left

    try:
        wait_for(lambda: not leftovers(), timeout=10, interval=0.2)
    except AssertionError:
        raise AssertionError(f"left behind after the e2e tests: {leftovers()}") from None

    def forkserver_leftovers() -> list[str]:
        left = [f"fork server {pid}" for pid in containerd.forkserver_pids()]
        left += [f"shim process {pid}" for pid in containerd.shim_pids()]
        return left + [f"fork server file {f}" for f in containerd.forkserver_files()]

    containerd.halt()
    try:
        wait_for(lambda: not forkserver_leftovers(), timeout=10, interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"left behind once containerd stopped: {forkserver_leftovers()}"
        ) from None
    finally:
        containerd.start()  # for any later test of this containerd line
