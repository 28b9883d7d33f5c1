"""Mount option parsing, the kill-all rule, v2 controllers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import trio

from trioshim.runc import container as c
from trioshim.shim import mounts as m


def test_parse_mount_options() -> None:
    assert m.parse_mount_options(["rbind", "ro"]) == (m.MS_BIND | m.MS_REC | m.MS_RDONLY, "", False)
    flags, data, loop = m.parse_mount_options(
        ["nosuid", "nodev", "ro", "rw", "lowerdir=/a:/b", "upperdir=/u", "loop", "defaults"]
    )
    assert flags == m.MS_NOSUID | m.MS_NODEV
    assert data == "lowerdir=/a:/b,upperdir=/u,defaults"  # flag 0: data, as containerd does
    assert loop


def test_compact_lowerdir() -> None:
    opts = [
        "index=off",
        "lowerdir=/var/lib/s/snapshots/12/fs:/var/lib/s/snapshots/11/fs:/var/lib/s/snapshots/1/fs",
        "upperdir=/u",
    ]
    chdir, compact = m.compact_lowerdir(opts)
    assert chdir == "/var/lib/s/snapshots/"
    assert compact == ["index=off", "upperdir=/u", "lowerdir=12/fs:11/fs:1/fs"]
    assert m.compact_lowerdir(["lowerdir=/only/one"]) == ("", ["lowerdir=/only/one"])
    assert m.compact_lowerdir(["x"]) == ("", ["x"])


def test_mount_text_like_go() -> None:
    overlay = m.Mount("overlay", "overlay", "", ("ro", "lowerdir=/a"))
    assert str(overlay) == "&{overlay overlay  [ro lowerdir=/a]}"


def _bundle(tmp_path: Path, spec: object) -> str:
    (tmp_path / "config.json").write_text(json.dumps(spec))
    return str(tmp_path)


def test_should_kill_all(tmp_path: Path) -> None:
    private = {"linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}}
    assert not c.should_kill_all(_bundle(tmp_path, private))
    joined = {"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}
    assert c.should_kill_all(_bundle(tmp_path, joined))
    host = {"linux": {"namespaces": [{"type": "mount"}]}}
    assert c.should_kill_all(_bundle(tmp_path, host))
    assert c.should_kill_all(_bundle(tmp_path, {}))
    (tmp_path / "config.json").write_text("{broken")
    assert c.should_kill_all(str(tmp_path))
    assert c.should_kill_all(str(tmp_path / "missing"))


def test_enable_v2_controllers(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    leaf = root / "a" / "b" / "c1"
    leaf.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    c.enable_v2_controllers(str(leaf), str(root))
    for d in (root, root / "a", root / "a" / "b"):
        assert (d / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert not (leaf / "cgroup.subtree_control").exists()
    with pytest.raises(ValueError):
        c.enable_v2_controllers(str(tmp_path / "elsewhere"), str(root))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount")
async def test_unmount_does_not_block_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # umount(2) of an overlay rootfs syncs its upper filesystem and can take seconds; every
    # other container of the shim (Wait, exits, stdio) must keep running meanwhile.
    target = tmp_path / "rootfs"
    target.mkdir()
    m.mount(m.Mount("tmpfs", "tmpfs"), str(target))
    libc = m._sys()
    real = libc.umount2

    def slow_umount2(path: bytes, flags: int) -> int:
        time.sleep(0.3)  # a umount that has dirty data to write back
        return int(real(path, flags))

    monkeypatch.setattr(libc, "umount2", slow_umount2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await m.unmount_all(str(target))
            nursery.cancel_scope.cancel()
    finally:
        monkeypatch.undo()
        await m.unmount_all(str(target))
    assert not os.path.ismount(target)  # noqa: ASYNC240
    assert ticks >= 10  # ~60 would fit in the two umount calls
