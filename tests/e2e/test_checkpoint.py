"""Checkpoint and restore through containerd with a real criu, on both shims and every line.

criu is the one scripts/setup builds (tests.support.criu). Each test gets a containerd of its
own whose PATH has criu's directory (neither shim hands runc a criu path here, so runc finds
`criu` there) and the busybox image imported: ctr restores a container from a checkpoint image
that names the container's image, so these containers run from an image, not a bare rootfs.

Both shims run under the runtime name io.containerd.runc.v2: ctr hands the checkpoint options
(--exit, --image-path, --work-path) only to runtimes of that name, so for trioshim the daemon's
PATH starts with a containerd-shim-runc-v2 that is containerd-shim-trioshim-v2, the drop-in it
is meant to be.

The workload keeps its state where only a real restore can bring it back: a shell that picks a
random token when it starts and then counts, writing "<token> <count>" to /dev/shm/count. A
restored process goes on with the same token from where it was; a fresh start would pick
another.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import venv_bin_dir
from tests.support.containerd_lines import ContainerdLine
from tests.support.line_containerd import LineContainerd
from tests.support.pause_image import PAUSE_IMAGE, build_pause_image

from .helpers import E2E, REFERENCE, TRIOSHIM, on_own_containerd, wait_for
from .terminal import CtrTerminal

IMAGE = PAUSE_IMAGE  # busybox, every applet in /bin
COUNTER = (
    't=$RANDOM$RANDOM; n=0; while :; do n=$((n+1)); echo "$t $n" > /dev/shm/count; sleep 0.05; done'
)
WITHOUT_CRIU = "without-criu"
_exec_ids = itertools.count()


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image as an OCI archive, for `ctr images import`."""
    return build_pause_image(tmp_path_factory.mktemp("image") / "busybox.tar")


@pytest.fixture
def criu_e2e(
    request: pytest.FixtureRequest,
    runtime: str,
    containerd_line: ContainerdLine,
    busybox_rootfs: Path,
    busybox_image: Path,
    tmp_path: Path,
) -> Iterator[E2E]:
    """An E2E on a containerd of its own, criu on its PATH (unless the test is parametrized
    with WITHOUT_CRIU), `runtime`'s shim serving io.containerd.runc.v2, the image imported."""
    path: list[str] = []
    if runtime == TRIOSHIM:
        alias = tmp_path / "shim-alias"
        alias.mkdir()
        shim = Path(venv_bin_dir()) / "containerd-shim-trioshim-v2"
        (alias / "containerd-shim-runc-v2").symlink_to(shim)
        path.append(str(alias))
    if getattr(request, "param", None) != WITHOUT_CRIU:
        path.append(str(request.getfixturevalue("criu").parent))
    daemon = LineContainerd(containerd_line, extra_path=tuple(path))
    short = "ts" if runtime == TRIOSHIM else "rc"
    with on_own_containerd(request, daemon, busybox_rootfs, REFERENCE, short=short) as env:
        r = env.ctr("images", "import", "--snapshotter", "native", str(busybox_image), timeout=120)
        assert r.returncode == 0, r.stderr
        yield env


def _run_counter(env: E2E) -> str:
    cid = env.new_id()
    r = env.ctr(
        "run", "-d", "--null-io", "--snapshotter", "native", IMAGE, cid,
        "/bin/sh", "-c", COUNTER, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    env.wait_status(cid, "RUNNING")
    return cid


def _count(env: E2E, cid: str) -> tuple[str, int] | None:
    """(token, count) as the container's counter last wrote it, None before its first write."""
    r = env.exec(cid, "/bin/cat", "/dev/shm/count", exec_id=f"read-{next(_exec_ids)}")
    fields = r.stdout.split()
    if r.returncode != 0 or len(fields) != 2:
        return None  # not written yet, or read between truncate and write
    return fields[0], int(fields[1])


def _count_beyond(env: E2E, cid: str, n: int) -> tuple[str, int]:
    """The counter of `cid` once it is past `n`: the process runs (and counts)."""
    result: tuple[str, int] = wait_for(
        lambda: (c := _count(env, cid)) is not None and c[1] > n and c,
        timeout=30,
        interval=0.1,
        what=f"the counter of {cid} past {n} (is {_count(env, cid)})",
    )
    return result


def _shim_exe(env: E2E, cid: str) -> str:
    """What the task's shim runs: containerd-shim-runc-v2 (Go) or a python (ours)."""
    (pid,) = env.shim_pids_for(cid)
    return os.path.basename(os.readlink(f"/proc/{pid}/exe"))


def _check_shim(env: E2E, cid: str, runtime: str) -> None:
    exe = _shim_exe(env, cid)
    if runtime == TRIOSHIM:
        assert exe.startswith("python"), exe
    else:
        assert exe == "containerd-shim-runc-v2", exe


# --- checkpoints that work --------------------------------------------------------------------


def test_checkpoint_leave_running_then_restore_into_new_container(
    criu_e2e: E2E, runtime: str
) -> None:
    env = criu_e2e
    cid = _run_counter(env)
    _check_shim(env, cid, runtime)
    token, n = _count_beyond(env, cid, 0)
    ref = f"localhost/trioshim/checkpoint:{cid}"
    r = env.ctr("container", "checkpoint", "--task", cid, ref, timeout=120)
    assert r.returncode == 0, r.stderr
    assert env.status(cid) == "RUNNING"
    assert _count_beyond(env, cid, n)[0] == token  # the very process goes on
    # The restored spec keeps the original's cgroup: the original goes first.
    env.kill_and_delete(cid)
    new = env.new_id("restored")
    r = env.ctr("container", "restore", "--live", new, ref, timeout=120)
    assert r.returncode == 0, r.stderr
    env.wait_status(new, "RUNNING")
    _check_shim(env, new, runtime)
    restored_token = _count_beyond(env, new, n)[0]
    assert restored_token == token, "a fresh process, not the checkpointed one"
    assert env.kill_and_delete(new) == 137
    r = env.ctr("images", "rm", ref, timeout=60)
    assert r.returncode == 0, r.stderr


def test_checkpoint_with_exit(criu_e2e: E2E) -> None:
    env = criu_e2e
    cid = _run_counter(env)
    _count_beyond(env, cid, 0)
    r = env.ctr("task", "checkpoint", "--exit", cid, timeout=120)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert name.startswith(f"containerd.io/checkpoint/{cid}:"), r.stdout
    env.wait_status(cid, "STOPPED")
    assert env.delete_task(cid) == 137  # criu kills the dumped tree
    images = env.ctr("images", "ls", "-q", timeout=60).stdout.split()
    assert name in images
    assert env.ctr("container", "delete", cid, timeout=60).returncode == 0
    assert env.ctr("images", "rm", name, timeout=60).returncode == 0


def test_checkpoint_to_image_and_work_path(criu_e2e: E2E, tmp_path: Path) -> None:
    env = criu_e2e
    cid = _run_counter(env)
    token, n = _count_beyond(env, cid, 0)
    image, work = tmp_path / "image", tmp_path / "work"
    r = env.ctr(
        "task", "checkpoint", "--image-path", str(image), "--work-path", str(work), cid,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # no checkpoint image in containerd: the files are the checkpoint
    assert {"inventory.img", "pstree.img"} <= {p.name for p in image.iterdir()}
    assert "Dumping finished successfully" in (work / "dump.log").read_text()
    assert _count_beyond(env, cid, n)[0] == token
    env.kill_and_delete(cid)


def test_terminal_checkpoint_and_restore(
    criu_e2e: E2E, runtime: str, containerd_line: ContainerdLine
) -> None:
    env = criu_e2e
    cid = env.new_id("tty")
    run = ("run", "-t", "--snapshotter", "native", IMAGE, cid, "/bin/sh")
    with CtrTerminal(env.containerd, *run) as first:
        env.wait_status(cid, "RUNNING")
        _check_shim(env, cid, runtime)
        first.send(b"v=$RANDOM$RANDOM; echo token-$v-end\n")
        token = first.expect(rb"token-(\d+)-end").group(1)
        ref = f"localhost/trioshim/checkpoint:{cid}"
        r = env.ctr("container", "checkpoint", "--task", cid, ref, timeout=120)
        assert r.returncode == 0, r.stderr
        first.send(b"echo still-$v-end\n")
        assert first.expect(rb"still-(\d+)-end").group(1) == token
        r = env.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
        assert r.returncode == 0, r.stderr
        assert first.wait() == 137  # ctr run -t deletes the task
    assert env.ctr("container", "delete", cid, timeout=60).returncode == 0
    new = env.new_id("tty-restored")
    with CtrTerminal(env.containerd, "container", "restore", "--live", new, ref) as second:
        if containerd_line.name == "1.6":
            # ctr 1.6 restores without a console for the task, and runc will not restore a
            # terminal without one: the same failure from both shims.
            second.expect(
                rb"OCI runtime restore failed: cannot allocate tty if runc will detach "
                rb"without setting console socket"
            )
            assert second.wait() != 0
            env.wait_status(new, "CREATED")
            assert env.delete_task(new) == 0
        else:
            second.send(b"echo again-$v-end\n")
            assert second.expect(rb"again-(\d+)-end").group(1) == token
            second.send(b"exit 3\n")
            assert second.wait() == 3  # ctr restore -t waits and deletes the task
    assert env.ctr("container", "delete", new, timeout=60).returncode == 0
    assert env.ctr("images", "rm", ref, timeout=60).returncode == 0


# --- checkpoints that fail --------------------------------------------------------------------


def _assert_failed_but_running(env: E2E, cid: str, r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode != 0
    assert env.status(cid) == "RUNNING"
    work = env.containerd.bundle(cid) / "work"
    assert not (work / "criu-work").exists()


@pytest.mark.parametrize("criu_e2e", [WITHOUT_CRIU], indirect=True)
def test_checkpoint_without_criu(criu_e2e: E2E) -> None:
    env = criu_e2e
    cid = _run_counter(env)
    token, n = _count_beyond(env, cid, 0)
    r = env.ctr("task", "checkpoint", "--exit", cid, timeout=120)
    _assert_failed_but_running(env, cid, r)
    assert 'CRIU version check failed: exec: "criu": executable file not found in $PATH' in (
        r.stderr
    ), r.stderr
    assert _count_beyond(env, cid, n)[0] == token
    env.kill_and_delete(cid)


def test_checkpoint_failing_in_mid_dump(criu_e2e: E2E, tmp_path: Path) -> None:
    env = criu_e2e
    cid = _run_counter(env)
    token, n = _count_beyond(env, cid, 0)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        r = env.ctr("task", "checkpoint", "--exit", "--image-path", str(small / "img"), cid)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    _assert_failed_but_running(env, cid, r)
    dump_log = env.containerd.bundle(cid) / "criu-dump.log"
    assert "criu failed: type " in r.stderr, r.stderr
    assert f"path= {dump_log}" in r.stderr, r.stderr
    assert "No space left on device" in dump_log.read_text()
    assert _count_beyond(env, cid, n)[0] == token
    env.kill_and_delete(cid)
