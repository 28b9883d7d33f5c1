"""Runtime options the way containerd's Go client sends them, through containerd's gRPC API
(`ctr` cannot send them): the 1.x client sends the legacy `containerd.linux.runc.CreateOptions`
to a runtime not named io.containerd.runc* (ours), `containerd.runc.v1.Options` to
io.containerd.runc.v2 (the reference); the 2.x client (and containerd 2.x, which no longer knows
the legacy types) `containerd.runc.v1.Options` to every runtime. containerd hands them to the
shim's start action on stdin, then to Create.

- containerd's TestShimInCgroup / TestShimOOMScore: `WithShimCgroup`; the shim daemon is in the
  cgroup (every cgroup v1 hierarchy it was made in) and its oom_score_adj is containerd's + 1,
  clamped to 1000. On a containerd of its own (the test sets containerd's oom_score_adj).
- containerd's user-namespace test: `WithUIDOwner` / `WithGIDOwner` (io uid/gid): the stdio
  pipes belong to the host ids of the container's root, so runc may hand them on to it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from tests.support.containerd_grpc import TasksClient
from tests.support.rootfs import build_busybox_rootfs
from trioshim.api.containerd.runtime.linux.runctypes import runc_pb2 as runctypes
from trioshim.api.containerd.types.runc.options import oci_pb2

from .helpers import E2E, REFERENCE, wait_for

OOM_SCORE_ADJ_MAX = 1000


def v1_hierarchies() -> list[Path]:
    """Mounted cgroup v1 hierarchies (controllers and named ones), not the unified one."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, target, fstype, *_ = line.split()
            if fstype == "cgroup":
                found.append(Path(target))
    return found


@pytest.fixture
def shim_cgroup() -> Iterator[str]:
    """A fresh cgroup (`/trioshim-e2e/<random>`) in every v1 hierarchy; removed afterwards
    (the test waits for its shims to be gone first)."""
    if not v1_hierarchies():
        pytest.fail("no cgroup v1 hierarchy mounted: this test expects the machine's cgroup v1")
    path = f"/trioshim-e2e/shim-{secrets.token_hex(4)}"
    made: list[Path] = []
    try:
        for hierarchy in v1_hierarchies():
            target = hierarchy
            for part in path.lstrip("/").split("/"):
                target = target / part
                if not target.exists():
                    target.mkdir()
                    made.append(target)
                _inherit_cpuset(target)
        yield path
    finally:
        for target in reversed(made):
            target.rmdir()


def _inherit_cpuset(cgroup: Path) -> None:
    """A new v1 cpuset cgroup has no CPUs nor memory nodes (nothing can join it) until given
    its parent's, as containerd's cgroups library does when it creates one."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (cgroup / name).exists() and not (cgroup / name).read_text().strip():
            (cgroup / name).write_text((cgroup.parent / name).read_text())


def proc_cgroups(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {hierarchy id: path}."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {hid: path for hid, _, path in (line.split(":", 2) for line in lines)}


def oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def go_client_options(major: int, runtime: str, **fields: Any) -> Message:
    """What containerd's Go client (of that major version) puts in CreateTaskRequest.options
    for these fields (WithShimCgroup: shim_cgroup, WithUIDOwner: io_uid, ...)."""
    if major >= 2 or runtime.startswith("io.containerd.runc"):
        return oci_pb2.Options(**fields)
    return runctypes.CreateOptions(**fields)


def test_shim_cgroup_and_oom_score(private_e2e: E2E, shim_cgroup: str) -> None:
    e2e = private_e2e
    assert e2e.containerd.proc is not None
    containerd_score_file = Path(f"/proc/{e2e.containerd.proc.pid}/oom_score_adj")
    original_score = containerd_score_file.read_text()
    v1_ids = {hid for hid in proc_cgroups(os.getpid()) if hid != "0"}
    options = go_client_options(e2e.major, e2e.runtime, shim_cgroup=shim_cgroup)
    legacy = e2e.major < 2 and e2e.runtime != REFERENCE
    assert isinstance(options, runctypes.CreateOptions if legacy else oci_pb2.Options)
    ids = []
    try:
        with TasksClient(e2e.containerd.address, e2e.namespace) as tasks:
            # 300 -> 301; 1000 (the maximum) -> 1000, as containerd's shim.AdjustOOMScore does
            for containerd_score, expected in ((300, 301), (OOM_SCORE_ADJ_MAX, OOM_SCORE_ADJ_MAX)):
                containerd_score_file.write_text(str(containerd_score))
                cid = e2e.new_id()
                ids.append(cid)
                created = e2e.ctr(
                    "container", "create", "--runtime", e2e.runtime, "--rootfs", e2e.rootfs,
                    cid, "/bin/sleep", "1000",
                )  # fmt: skip
                assert created.returncode == 0, created.stderr
                tasks.create(cid, options)
                [shim] = e2e.shim_pids_for(cid)
                placed = proc_cgroups(shim)
                assert {hid: placed[hid] for hid in v1_ids} == dict.fromkeys(v1_ids, shim_cgroup)
                assert oom_score_adj(shim) == expected
                procs = {
                    int(pid)
                    for h in v1_hierarchies()
                    for pid in (h / shim_cgroup.lstrip("/") / "cgroup.procs").read_text().split()
                }
                assert shim in procs
    finally:
        containerd_score_file.write_text(original_score)
        for cid in ids:
            e2e.ctr("task", "delete", "--force", cid, timeout=60)
            e2e.ctr("container", "delete", cid, timeout=60)
        wait_for(
            lambda: not any(e2e.shim_pids_for(cid) for cid in ids),
            timeout=20,
            what="the shims to exit",
        )


USERNS_HOST_ID = 100000  # the host id of the container's root (uid and gid)


@pytest.fixture
def userns_rootfs() -> Iterator[Path]:
    """A busybox rootfs the container's root owns (as a remapping snapshotter would make it), on
    a path everybody may traverse (pytest's tmp dirs are 0700 root: closed to the user
    namespace)."""
    base = Path(tempfile.mkdtemp(prefix="tsu", dir="/tmp"))
    try:
        base.chmod(0o755)
        rootfs = build_busybox_rootfs(base / "rootfs")
        for path in [rootfs, *rootfs.rglob("*")]:
            os.lchown(path, USERNS_HOST_ID, USERNS_HOST_ID)
        yield rootfs
    finally:
        shutil.rmtree(base)


def test_user_namespace_stdio_owner(e2e: E2E, userns_rootfs: Path, tmp_path: Path) -> None:
    """A container in a user namespace reopens its stdout pipe: the shim made the pipe
    `io_uid:io_gid`, the host ids of the container's root, so the container's root owns it
    (without them it is the host root's, unmapped in the namespace, and the open is refused;
    runc's attempt to give it to the container's root fails quietly)."""
    cid = e2e.new_id()
    # Reopening the pipe (/dev/stdout) checks its owner and mode (0600), unlike writing to fd 1.
    spec = e2e.spec(
        cid, ["/bin/sh", "-c", "echo hello >/dev/stdout && stat -L -c %u:%g /dev/stdout"]
    )
    spec["root"]["path"] = str(userns_rootfs)
    spec["linux"]["namespaces"].append({"type": "user"})
    mapping = [{"containerID": 0, "hostID": USERNS_HOST_ID, "size": 65536}]
    spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = mapping
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec))
    log = tmp_path / "stdout.log"
    options = go_client_options(
        e2e.major, e2e.runtime, io_uid=USERNS_HOST_ID, io_gid=USERNS_HOST_ID
    )
    created = e2e.ctr("container", "create", "--runtime", e2e.runtime, "--config", str(config), cid)
    assert created.returncode == 0, created.stderr
    try:
        with TasksClient(e2e.containerd.address, e2e.namespace) as tasks:
            tasks.create(cid, options, stdout=f"file://{log}")
            tasks.start(cid)
            e2e.wait_status(cid, "STOPPED")
            deleted = tasks.delete(cid)
        assert log.read_text() == "hello\n0:0\n"  # stderr goes there too
        assert deleted.exit_status == 0
    finally:
        if e2e.status(cid) is not None:
            e2e.ctr("task", "delete", "--force", cid, timeout=60)
        e2e.ctr("container", "delete", cid, timeout=60)
