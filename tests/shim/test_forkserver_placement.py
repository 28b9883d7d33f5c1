"""A daemon forked by a fork-server worker is placed where the helper is (cgroups, resource
limits, umask, oom_score_adj), not where the server is; a worker that cannot get there lets
the helper run the action itself."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import placed
from tests.support.forkserver_env import Env, alive, open_env, poll, shim_pid, shutdown
from trioshim.shim.placement import Placement, PlacementError, parse_cgroups, parse_limits


@pytest.fixture
def env() -> Iterator[Env]:
    with open_env() as world:
        yield world


def test_limits_are_read_in_resource_number_order() -> None:
    limits = parse_limits(Path("/proc/self/limits").read_bytes())
    assert len(limits) >= resource.RLIMIT_NOFILE + 1
    for number, pair in enumerate(limits):
        assert resource.getrlimit(number) == pair


def test_cgroups_are_read_per_hierarchy() -> None:
    text = b"4:memory:/a/b\n1:name=systemd:/\n0::/c\n"
    assert parse_cgroups(text) == {
        ("4", "memory"): "/a/b",
        ("1", "name=systemd"): "/",
        ("0", ""): "/c",
    }
    with pytest.raises(PlacementError):
        parse_cgroups(b"garbage\n")


@pytest.mark.parametrize("data", [None, {}, {"umask": "022"}, {"umask": 18, "cgroup": "x"}])
def test_a_request_without_a_placement_is_declined(data: object) -> None:
    with pytest.raises(PlacementError):
        Placement.from_request(data)


def fake_proc(root: Path, cgroup: str) -> str:
    """A /proc/self look-alike: we are in the root cgroup of a v1 `pids` hierarchy mounted on
    root/pids (its root cgroup is /top) and of a v2 hierarchy mounted on root/unified."""
    proc = root / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("3:pids:/top\n0::/\n")
    (proc / "mountinfo").write_text(
        f"30 25 0:26 /top {root}/pids rw,relatime shared:9 - cgroup cgroup rw,pids\n"
        f"31 25 0:27 / {root}/unified rw shared:10 - cgroup2 cgroup2 rw\n"
        "32 25 0:28 / /tmp rw shared:11 - tmpfs tmpfs rw\n"
    )
    for directory in ("pids/x/y", "unified/z"):
        (root / directory).mkdir(parents=True)
    return str(proc)


def test_joins_the_helpers_cgroup_where_it_differs(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "")
    umask = os.umask(0o022)
    os.umask(umask)
    Placement(b"3:pids:/top/x/y\n0::/z\n", None, None, umask).apply(proc)
    assert (tmp_path / "pids/x/y/cgroup.procs").read_text() == str(os.getpid())
    assert (tmp_path / "unified/z/cgroup.procs").read_text() == str(os.getpid())


def test_a_cgroup_not_mounted_here_is_declined(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "")
    umask = os.umask(0o022)
    os.umask(umask)
    with pytest.raises(PlacementError, match="not mounted"):
        Placement(b"5:memory:/a\n", None, None, umask).apply(proc)
    with pytest.raises(PlacementError, match="not mounted"):
        Placement(b"3:pids:/elsewhere\n", None, None, umask).apply(proc)  # outside /top


# What the test process is not: every value differs from the defaults (limits only lowered:
# lowering needs no privilege, so the server can follow).
def elsewhere(cgroup_procs: list[Path]) -> dict[str, object]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "umask": 0o027 if os.umask(os.umask(0o022)) != 0o027 else 0o077,
        "rlimits": {
            "NOFILE": (min(nofile[0], 1000) - 1, min(nofile[1], 2000) - 1),
            "CORE": (4096, 8192),
            "MSGQUEUE": (400000, 500000),
        },
        "oom_score_adj": 300,
        "cgroup_procs": cgroup_procs,
    }


def test_a_warm_start_places_the_daemon_where_its_containerd_is(env: Env) -> None:
    env.bundle("c1")
    env.bundle("c2")
    first = env.run_under("c1", "start")  # spawns the server, placed like this test process
    poll(lambda: "serving" in env.server_log(), "the fork server")
    server = placed.Place.of(env.server_pid())
    with placed.new_cgroups("tsh-place") as cgroups:
        wrapper = placed.wrap([], **elsewhere(cgroups))  # type: ignore[arg-type]
        containerd = env.run_under("c2", "start", wrap=wrapper)
        assert containerd.status == 0
        daemon = shim_pid(containerd.out.decode())
        try:
            assert "worker" in env.server_log() and "itself" not in env.server_log()
            want, got = placed.Place.of(containerd.proc.pid), placed.Place.of(daemon)
            assert (got.cgroup, got.limits, got.umask) == (want.cgroup, want.limits, want.umask)
            assert (got.cgroup, got.limits, got.umask) != (
                server.cgroup,
                server.limits,
                server.umask,
            )
            assert int(got.oom_score_adj) == int(want.oom_score_adj) + 1  # containerd's + 1
        finally:
            shutdown(containerd.out.decode())
            containerd.stop()
            poll(lambda: not alive(daemon), "the daemon to leave its cgroups")
    shutdown(first.out.decode())


def test_a_worker_that_cannot_follow_lets_the_helper_run_it(env: Env) -> None:
    env.bundle("c1")
    env.bundle("c2")
    # The server is spawned from a containerd with a lower hard limit and no CAP_SYS_RESOURCE:
    # its workers cannot raise theirs back to a helper's.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = placed.wrap([], rlimits={"NOFILE": (min(soft, hard - 1), hard - 1)})
    no_sys_resource = ["setpriv", "--bounding-set", "-sys_resource", "--inh-caps", "-sys_resource"]
    first = env.run_under("c1", "start", wrap=[*no_sys_resource, *lower])
    poll(lambda: "serving" in env.server_log(), "the fork server")
    containerd = env.run_under("c2", "start")  # placed like this test process
    assert containerd.status == 0
    daemon = shim_pid(containerd.out.decode())
    try:
        assert "the helper runs it itself" in env.server_log()
        want, got = placed.Place.of(containerd.proc.pid), placed.Place.of(daemon)
        assert (got.cgroup, got.limits, got.umask) == (want.cgroup, want.limits, want.umask)
    finally:
        shutdown(containerd.out.decode())
        shutdown(first.out.decode())


def _pids_cgroup_of(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return Path("/sys/fs/cgroup/pids") / path.lstrip("/")
    pytest.fail("no pids cgroup hierarchy mounted (cgroup v1 with the pids controller)")


def test_a_server_that_cannot_fork_lets_the_helper_run_it(env: Env) -> None:
    # Under a pids limit (or out of memory) the server's fork fails: the helper is told that
    # nothing ran and runs the action itself, and the server goes on serving.
    env.bundle("c1")
    env.bundle("c2")
    first = env.run_under("c1", "start")
    poll(lambda: "serving" in env.server_log(), "the fork server")
    server = env.server_pid()
    home = _pids_cgroup_of(server)
    full = home / f"tsh-nofork-{os.getpid()}"
    full.mkdir()
    try:
        (full / "pids.max").write_text("1")  # the server alone: no room for a worker
        (full / "cgroup.procs").write_text(str(server))
        containerd = env.run_under("c2", "start")
        assert containerd.status == 0
        daemon = shim_pid(containerd.out.decode())
        assert "cannot fork a worker" in env.server_log()
        assert alive(server) and alive(daemon)
    finally:
        (home / "cgroup.procs").write_text(str(server))
        full.rmdir()
    shutdown(containerd.out.decode())
    shutdown(first.out.decode())
