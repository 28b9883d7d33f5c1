"""Failpoints through containerd: each injected failure leaves nothing behind, and the shim
that served it goes on serving the other containers of its group.

Only our shim: containerd-shim-runc-v2 has no failpoints (containerd builds them into a test
shim of its own). Every test runs its containers in one shim group, anchored by a long-lived
container so that the shim outlives the failures; the shim process must be the same one at the
end. The `e2e` fixture then checks that the group's socket and shim went with the anchor.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.containerd_layout import CGROUP_ROOT

from .helpers import E2E, TRIOSHIM, wait_for

PREFIX = "io.containerd.runtime.v2.shim.failpoint."
GROUP = "io.containerd.trioshim.v2.group"


@pytest.fixture
def runtime() -> str:
    return TRIOSHIM


@dataclass
class Group:
    e2e: E2E
    name: str
    anchor: str
    shim_pid: int

    def opts(self, **points: str) -> tuple[str, ...]:
        """`ctr run` options: this group, and the failpoints (`Create_after` for Create.after)."""
        annotations = [f"{GROUP}={self.name}"]
        annotations += [f"{PREFIX}{p.replace('_', '.')}={v}" for p, v in points.items()]
        return tuple(a for annotation in annotations for a in ("--annotation", annotation))

    def still_serves(self) -> None:
        r = self.e2e.run("/bin/echo", "still serving", opts=self.opts())
        assert (r.returncode, r.stdout) == (0, "still serving\n"), r.stderr
        assert self.e2e.shim_pids_for(self.anchor) == [self.shim_pid]


@pytest.fixture
def group(e2e: E2E) -> Iterator[Group]:
    name = e2e.new_id("group")  # an id too: the fixture checks its shim socket is gone at the end
    anchor = e2e.new_id("anchor")
    e2e.run_detached("/bin/sleep", "100000", cid=anchor, opts=("--annotation", f"{GROUP}={name}"))
    shims = e2e.shim_pids_for(anchor)
    assert len(shims) == 1, shims
    yield Group(e2e, name, anchor, shims[0])
    e2e.kill_and_delete(anchor)


def _marked_processes(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark.encode() in argv:
            found.append(int(entry.name))
    return found


def _cgroups(e2e: E2E, cid: str) -> list[Path]:
    """The container's cgroup directories (`/<ns>/<id>` under each v1 hierarchy, or v2's)."""
    roots = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]
    return [d for d in (r / e2e.namespace / cid for r in roots) if d.is_dir()]


def _open_files(pid: int, cid: str) -> list[str]:
    """What process ``pid`` holds open of the container (its stdio FIFOs, bundle files)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if cid in target:
            found.append(target)
    return found


def _assert_gone(group: Group, cid: str, mark: str) -> None:
    """No task, container, bundle, runc state, rootfs mount, cgroup or process is left, and
    the shim holds no file of it (containerd's cleanup after a failed Create would hide a
    shim that left the rest to it, not a shim that leaks its stdio)."""
    e2e = group.e2e

    def left() -> list[str]:
        found = e2e.leftovers([cid])
        found += [f"cgroup {d}" for d in _cgroups(e2e, cid)]
        found += [f"process {p}" for p in _marked_processes(mark)]
        found += [f"shim holds {f}" for f in _open_files(group.shim_pid, cid)]
        return found

    try:
        wait_for(lambda: not left(), timeout=15, interval=0.1)
    except AssertionError:
        raise AssertionError(f"left behind of {cid}: {left()}") from None


def _mark() -> str:
    """A `sleep` argument no other process on the machine has."""
    return str(10_000_000 + secrets.randbelow(10_000_000))


def _suffix(e2e: E2E) -> str:
    """How ctr ends an Unknown error on this line (2.x prints the shim's message alone)."""
    return ": unknown" if e2e.major < 2 else ""


@pytest.mark.parametrize(
    ("point", "expression", "message"),
    [
        ("Create", "1*error(boom)", "boom"),
        ("Create_after", "1*error(boom after)", "boom after"),
        ("Create", "1*panic(oops)", "failpoint Create: panic: oops"),
        ("Create_after", "1*panic(oops)", "failpoint Create.after: panic: oops"),
    ],
)
def test_failed_run_leaves_nothing(
    e2e: E2E, group: Group, point: str, expression: str, message: str
) -> None:
    cid, mark = e2e.new_id(), _mark()
    r = e2e.run("/bin/sleep", mark, cid=cid, opts=group.opts(**{point: expression}))
    assert r.returncode != 0
    assert r.stderr.rstrip().endswith(message + _suffix(e2e)), r.stderr
    _assert_gone(group, cid, mark)
    group.still_serves()


def test_bad_failpoint_is_invalid_argument(e2e: E2E, group: Group) -> None:
    cid, mark = e2e.new_id(), _mark()
    r = e2e.run("/bin/sleep", mark, cid=cid, opts=group.opts(Create="1*explode"))
    assert r.returncode != 0
    assert f"annotation {PREFIX}Create: invalid failpoint expression '1*explode'" in r.stderr
    if e2e.major < 2:
        assert r.stderr.rstrip().endswith(": invalid argument"), r.stderr
    _assert_gone(group, cid, mark)
    group.still_serves()


def test_delay_then_carry_on(e2e: E2E, group: Group) -> None:
    r = e2e.run("/bin/echo", "late", opts=group.opts(Create="1*delay(50)", Start="1*delay(50)"))
    assert (r.returncode, r.stdout) == (0, "late\n"), r.stderr
    group.still_serves()


def test_exec_points(e2e: E2E, group: Group) -> None:
    cid, mark = e2e.new_id(), _mark()
    opts = group.opts(
        Exec="1*error(no exec)",
        Exec_after="1*error(no exec after)",
        Start="1*off->1*error(no exec start)",  # the init's Start goes through
    )
    e2e.run_detached("/bin/sleep", mark, cid=cid, opts=opts)
    for message in ("no exec", "no exec after", "no exec start"):
        r = e2e.exec(cid, "/bin/sleep", mark + "1", exec_id="x")
        assert r.returncode != 0
        assert r.stderr.rstrip().endswith(message + _suffix(e2e)), r.stderr
        assert not _marked_processes(mark + "1")
    # every point spent, and each failure gave the exec id back: it works now
    r = e2e.exec(cid, "/bin/echo", "exec ok", exec_id="x")
    assert (r.returncode, r.stdout) == (0, "exec ok\n"), r.stderr
    e2e.kill_and_delete(cid)
    _assert_gone(group, cid, mark)
    group.still_serves()


def test_kill_and_delete_points(e2e: E2E, group: Group) -> None:
    cid, mark = e2e.new_id(), _mark()
    opts = group.opts(Kill="1*error(no kill)", Delete="1*error(no delete)")
    e2e.run_detached("/bin/sleep", mark, cid=cid, opts=opts)
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert r.returncode != 0 and "no kill" in r.stderr, r.stderr
    assert e2e.status(cid) == "RUNNING"
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert r.returncode == 0, r.stderr
    e2e.wait_status(cid, "STOPPED")
    r = e2e.ctr("task", "delete", cid)
    assert r.returncode != 0 and "no delete" in r.stderr, r.stderr
    assert e2e.status(cid) == "STOPPED"
    e2e.delete_task(cid)
    assert e2e.ctr("container", "delete", cid).returncode == 0
    _assert_gone(group, cid, mark)
    group.still_serves()


@pytest.mark.parametrize(
    ("point", "status"), [("Start", "CREATED"), ("Start_after", "RUNNING")], ids=["before", "after"]
)
def test_failed_start_is_cleaned_up_by_the_caller(
    e2e: E2E, group: Group, point: str, status: str
) -> None:
    """containerd's client deletes no task that has a pid unless told to kill it (`ctr run`
    leaves it, as with containerd-shim-runc-v2): Kill and Delete must then clean up."""
    cid, mark = e2e.new_id(), _mark()
    opts = ("-d", "--null-io", *group.opts(**{point: "1*error(no start)"}))
    r = e2e.ctr(*e2e.run_argv(cid, "/bin/sleep", mark, opts=opts))
    assert r.returncode != 0
    assert r.stderr.rstrip().endswith("no start" + _suffix(e2e)), r.stderr
    # Before: the init waits in `runc create`; after: it runs. The shim tells which.
    assert e2e.status(cid) == status
    assert bool(_marked_processes(mark)) == (status == "RUNNING")
    e2e.kill_and_delete(cid)
    _assert_gone(group, cid, mark)
    group.still_serves()
