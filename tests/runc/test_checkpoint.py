"""Checkpoint and restore through the task service when criu fails, however it fails.

criu may be missing, may fail before any work (runc's version handshake: a broken or
unsupported criu), or may fail in the middle of a dump (here: the image directory fills up).
Whatever happened, the error reaches the caller naming the problem, the task's temporary criu
work directory is gone, and the container keeps running. Which criu runc uses is chosen per
container through the runc options' `criu_path`, so these tests do not depend on what the
machine has on PATH. Real checkpoints and restores through containerd are in
tests/e2e/test_checkpoint.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from tests.runc.service_harness import Harness, exec_request, is_mounted
from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as api
from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.api.containerd.types.task import task_pb2 as task_types
from trioshim.ttrpc.errors import Code

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)

RUNC_FAILED = "runc did not terminate successfully: exit status 1: "

# A criu that fails every request, as an unusable criu does (`criu check` failing included).
BROKEN_CRIU = """\
#!/bin/sh
echo "criu: this criu cannot work here" >&2
exit 1
"""


def _unusable_criu(tmp: Path, how: str) -> tuple[str, list[str]]:
    """(criu_path, what the error must say) for a criu that is `absent` or `broken`: runc's
    handshake with criu fails first, naming criu's path when it cannot even be started."""
    path = tmp / f"criu-{how}"
    if how == "broken":
        path.write_text(BROKEN_CRIU)
        path.chmod(0o755)
        return str(path), ["CRIU version check failed: "]
    return str(path), ["CRIU version check failed: ", f"{path}: no such file or directory"]


@pytest.fixture
def small_dir(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: too small for any process's pages, so criu fails in mid-dump."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


async def _assert_still_running(h: Harness, container_id: str, pid: int) -> None:
    state = await h.call("State", api.StateRequest(id=container_id))
    assert (state.status, state.pid) == (task_types.RUNNING, pid)
    os.kill(pid, 0)  # the very process, not a restored copy


def _assert_nothing_left(h: Harness, container_id: str) -> None:
    work = h.tmp / container_id / "work"
    assert sorted(p.name for p in work.iterdir()) == []  # the temporary criu-work is gone


async def test_checkpoint_of_a_created_task_is_refused(harness: Harness) -> None:
    h = harness
    await h.create("cc", ["sleep", "1000"])
    err = await h.fails("Checkpoint", api.CheckpointTaskRequest(id="cc", path=str(h.tmp / "img")))
    assert (err.code, err.message) == (Code.UNKNOWN, "cannot checkpoint a task in created state")
    assert not (h.tmp / "img").exists()


@pytest.mark.parametrize("exit", [False, True], ids=["leave-running", "exit"])
@pytest.mark.parametrize("how", ["absent", "broken"])
async def test_checkpoint_with_unusable_criu(harness: Harness, how: str, exit: bool) -> None:
    h = harness
    criu_path, named = _unusable_criu(h.tmp, how)
    created = await h.create("ck", ["sleep", "1000"], criu_path=criu_path)
    await h.call("Start", api.StartRequest(id="ck"))
    image = h.tmp / "img"
    request = api.CheckpointTaskRequest(id="ck", path=str(image))
    if exit:
        request.options.CopyFrom(_checkpoint_options(exit=True))
    err = await h.fails("Checkpoint", request)
    dump_log = h.tmp / "ck" / "criu-dump.log"
    assert err.code == Code.UNKNOWN
    assert err.message.startswith(RUNC_FAILED), err.message
    assert all(text in err.message for text in named), err.message
    assert err.message.endswith(f" path= {dump_log}"), err.message
    _assert_nothing_left(h, "ck")
    await _assert_still_running(h, "ck", created.pid)


@pytest.mark.parametrize("exit", [False, True], ids=["leave-running", "exit"])
async def test_checkpoint_failing_in_mid_dump(
    harness: Harness, criu: Path, small_dir: Path, exit: bool
) -> None:
    h = harness
    created = await h.create("cm", ["sleep", "1000"], criu_path=str(criu))
    await h.call("Start", api.StartRequest(id="cm"))
    request = api.CheckpointTaskRequest(id="cm", path=str(small_dir / "img"))
    if exit:
        request.options.CopyFrom(_checkpoint_options(exit=True))
    err = await h.fails("Checkpoint", request)
    dump_log = h.tmp / "cm" / "criu-dump.log"
    assert err.code == Code.UNKNOWN
    assert err.message.startswith(f"{RUNC_FAILED}criu failed: type "), err.message
    assert err.message.endswith(f" path= {dump_log}"), err.message
    log = dump_log.read_text()  # criu's own account, kept for the caller
    assert "No space left on device" in log, log[-2000:]
    _assert_nothing_left(h, "cm")
    await _assert_still_running(h, "cm", created.pid)


@pytest.mark.parametrize("how", ["absent", "broken"])
async def test_restore_with_unusable_criu(harness: Harness, how: str) -> None:
    h = harness
    criu_path, named = _unusable_criu(h.tmp, how)
    image = h.tmp / "image"
    image.mkdir()
    # enough of an image for runc to hand it to criu
    (image / "descriptors.json").write_text('["/dev/null","/dev/null","/dev/null"]')
    created = await h.create("r1", ["sleep", "1000"], checkpoint=str(image), criu_path=criu_path)
    assert created.pid == 0
    assert h.events.of("/tasks/create")[-1].checkpoint == str(image)
    state = await h.call("State", api.StateRequest(id="r1"))
    assert (state.status, state.pid) == (task_types.CREATED, 0)
    err = await h.fails("Exec", exec_request("r1", "e1", ["true"]))
    assert err.message == "cannot exec in a created state"
    err = await h.fails("Start", api.StartRequest(id="r1"))
    assert err.code == Code.UNKNOWN
    assert err.message.startswith("OCI runtime restore failed: "), err.message
    assert all(text in err.message for text in named), err.message
    deleted = await h.call("Delete", api.DeleteRequest(id="r1"))
    assert deleted.pid == 0
    assert not is_mounted(h.tmp / "r1" / "rootfs")


async def test_restore_of_a_bad_image_names_criu_log(harness: Harness, criu: Path) -> None:
    h = harness
    image = h.tmp / "image"
    image.mkdir()
    (image / "descriptors.json").write_text('["/dev/null","/dev/null","/dev/null"]')
    await h.create("r2", ["sleep", "1000"], checkpoint=str(image), criu_path=str(criu))
    err = await h.fails("Start", api.StartRequest(id="r2"))
    assert err.code == Code.UNKNOWN
    assert err.message.startswith("OCI runtime restore failed: criu failed: "), err.message
    restore_log = h.tmp / "r2" / "work" / "restore.log"
    assert f"log file: {restore_log}" in err.message
    assert restore_log.stat().st_size > 0
    deleted = await h.call("Delete", api.DeleteRequest(id="r2"))
    assert deleted.pid == 0
    assert not is_mounted(h.tmp / "r2" / "rootfs")


def _checkpoint_options(*, exit: bool) -> any_pb2.Any:
    value = oci_pb2.CheckpointOptions(exit=exit).SerializeToString()
    return any_pb2.Any(type_url="containerd.runc.v1.CheckpointOptions", value=value)
