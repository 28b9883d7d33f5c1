"""The kit's manager: its ``delete`` action answers at once unless a rootfs is left mounted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from tests.support.delete_action import delete_without_event_loop, run_delete, with_own_stop
from trioshim.shim.flags import Flags
from trioshim.shim.mounts import Mount, mount, unmount_all
from trioshim.task.main import TaskManager

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def _flags(bundle: Path) -> Flags:
    return Flags(namespace="ns", id="c1", bundle=str(bundle), action="delete")


def test_a_bundle_without_a_mount_is_answered_with_no_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "c1"
    (bundle / "rootfs").mkdir(parents=True)
    reply = delete_without_event_loop(TaskManager("t"), bundle, monkeypatch)
    assert (reply.pid, reply.exit_status) == (0, 137)


@needs_root
def test_a_rootfs_left_mounted_is_left_to_stop(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    source = tmp_path / "source"
    source.mkdir()
    mount(Mount("bind", str(source), options=("bind",)), str(rootfs))
    try:
        log = logging.getLogger("test.delete")
        assert TaskManager("t").stop_at_once(_flags(tmp_path), str(tmp_path), log) is None
    finally:
        trio.run(unmount_all, str(rootfs))
    assert TaskManager("t").stop_at_once(_flags(tmp_path), str(tmp_path), log) is not None


def test_a_subclass_with_its_own_stop_has_it_run_by_the_delete_action(tmp_path: Path) -> None:
    cls, ran = with_own_stop(TaskManager)
    bundle = tmp_path / "c1"
    (bundle / "rootfs").mkdir(parents=True)
    run_delete(cls("t"), bundle)
    assert ran == ["c1"]
