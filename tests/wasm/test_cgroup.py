"""Cgroup placement from the OCI spec: path forms, limits parsing, and directory handling on a
fake cgroupfs (the real hierarchies are exercised in test_cgroup_limits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.wasm import modules
from trioshim.shim.reaper import open_reaper
from trioshim.wasm import (
    CgroupError,
    CgroupLimits,
    ContainerCgroup,
    WasmProcess,
    cgroup_path,
    run_module,
)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/default/c1", "/default/c1"),
        ("/a//b/./c/", "/a/b/c"),
        ("/a/../../etc", "/etc"),  # cleaned like runc does: never above the hierarchy root
        ("system.slice:cri-containerd:c1", "/system.slice/cri-containerd-c1.scope"),
        (
            "kubepods-besteffort-podx.slice:cri-containerd:c1",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice"
            "/cri-containerd-c1.scope",
        ),
        (":cri-containerd:c1", "/cri-containerd-c1.scope"),  # "-.slice", the root slice
        ("machine.slice::c1.slice", "/machine.slice/c1.slice"),
    ],
)
def test_cgroups_path_forms(raw: str, path: str) -> None:
    assert cgroup_path({"linux": {"cgroupsPath": raw}}) == path


@pytest.mark.parametrize("spec", [{}, {"linux": {}}, {"linux": {"cgroupsPath": ""}}])
def test_no_cgroups_path_means_no_cgroup(spec: dict[str, object]) -> None:
    assert cgroup_path(spec) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("system.slice:p:../x", "cannot hold a /"),
        ("relative/path", "want /path or slice:prefix:name"),
        ("notaslice:p:n", "not a slice name"),
        (7, "must be a string"),
    ],
)
def test_bad_cgroups_path_is_refused(raw: object, message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        cgroup_path({"linux": {"cgroupsPath": raw}})


def test_limits_from_spec() -> None:
    spec = {
        "linux": {"resources": {"memory": {"limit": 64 << 20, "swap": -1}, "pids": {"limit": 32}}}
    }
    assert CgroupLimits.from_spec(spec) == CgroupLimits(64 << 20, -1, 32)
    assert CgroupLimits.from_spec({}) == CgroupLimits()
    with pytest.raises(CgroupError, match=r"memory\.limit must be an integer"):
        CgroupLimits.from_spec({"linux": {"resources": {"memory": {"limit": "64M"}}}})
    oom_off = {"linux": {"resources": {"memory": {"disableOOMKiller": True}}}}
    assert CgroupLimits.from_spec(oom_off) == CgroupLimits(disable_oom_killer=True)
    with pytest.raises(CgroupError, match=r"disableOOMKiller must be true or false"):
        CgroupLimits.from_spec({"linux": {"resources": {"memory": {"disableOOMKiller": 1}}}})


def _fake_v1(root: Path, *, cpuset: bool = True) -> Path:
    """A v1 layout: memory (and cpuset) hierarchies, a combined-mount link, a hybrid v2 tree.

    A fake cgroupfs cannot remove a directory holding files, so a test that removes what it
    made leaves cpuset (whose values are copied into new directories) out.
    """
    for name in ("memory", "unified", *(["cpuset"] if cpuset else [])):
        (root / name).mkdir()
        (root / name / "cgroup.procs").write_text("")
    (root / "unified" / "cgroup.controllers").write_text("")
    if cpuset:
        (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
        (root / "cpuset" / "cpuset.mems").write_text("0\n")
    (root / "cpu").symlink_to("memory")  # like cpu -> cpu,cpuacct: the same hierarchy twice
    return root


def test_v1_dirs_are_made_in_every_hierarchy_and_cpuset_inherits(tmp_path: Path) -> None:
    root = _fake_v1(tmp_path)
    cgroup = ContainerCgroup.create("/default/c1", CgroupLimits(), root=str(root))
    assert not cgroup.unified
    assert cgroup.directories == (
        str(root / "cpuset/default/c1"),
        str(root / "memory/default/c1"),
    )
    for level in ("default", "default/c1"):
        assert (root / "cpuset" / level / "cpuset.cpus").read_text() == "0-1"
        assert (root / "cpuset" / level / "cpuset.mems").read_text() == "0"
    assert not (root / "unified" / "default").exists()


def test_only_the_leaf_made_is_removed(tmp_path: Path) -> None:
    root = _fake_v1(tmp_path, cpuset=False)
    cgroup = ContainerCgroup.create("/default/c1", CgroupLimits(), root=str(root))
    assert cgroup.created == (str(root / "memory/default/c1"),)
    cgroup.remove()
    cgroup.remove()  # idempotent
    assert not (root / "memory/default/c1").exists()
    assert (root / "memory/default").is_dir()  # a parent may be shared: only the leaf goes


def test_an_existing_cgroup_is_joined_and_left_in_place(tmp_path: Path) -> None:
    root = _fake_v1(tmp_path, cpuset=False)
    (root / "memory" / "pod").mkdir()
    cgroup = ContainerCgroup.create("/pod", CgroupLimits(), root=str(root))
    assert cgroup.created == ()
    cgroup.remove()
    assert (root / "memory" / "pod").is_dir()


def test_a_limit_without_its_controller_fails_and_undoes_the_dirs(tmp_path: Path) -> None:
    root = _fake_v1(tmp_path, cpuset=False)
    with pytest.raises(CgroupError, match=r"pids\.max is not there"):
        ContainerCgroup.create("/c1", CgroupLimits(pids=10), root=str(root))
    assert not (root / "memory" / "c1").exists()


def test_no_hierarchy_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="no cgroup hierarchy"):
        ContainerCgroup.create("/c1", CgroupLimits(), root=str(tmp_path))


def test_v2_delegates_controllers_and_writes_limits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    # a fake cgroupfs does not populate new directories: make the leaf's files in advance
    leaf = tmp_path / "c1"
    leaf.mkdir()
    for name in ("memory.max", "memory.swap.max", "pids.max", "cgroup.procs"):
        (leaf / name).write_text("")
    cgroup = ContainerCgroup.create("/c1", CgroupLimits(64 << 20, 96 << 20, 0), root=str(tmp_path))
    assert cgroup.unified and cgroup.directories == (str(leaf),)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.swap.max").read_text() == str(32 << 20)  # v2 counts swap alone
    assert (leaf / "pids.max").read_text() == "max"
    cgroup.add(1234)
    assert (leaf / "cgroup.procs").read_text() == "1234"


async def _fail_in_fake_cgroupfs(tmp_path: Path, spec: dict[str, object]) -> tuple[str, list[int]]:
    """run_module with cgroups under a fake root, expected to raise a CgroupError itself (not
    an exception group around one); its message and the statuses of the children reaped."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    module = modules.install(rootfs, "hello.wasm", modules.HELLO)
    started: list[WasmProcess] = []
    reaped: list[int] = []
    _, signals = trio.open_memory_channel[int](0)
    async with open_reaper() as reaper:
        with reaper.subscribe() as exits:
            with pytest.raises(CgroupError) as error:
                await run_module(
                    reaper,
                    spec=spec,
                    rootfs=str(rootfs),
                    args=[module],
                    env=[],
                    cwd="/",
                    stdin=None,
                    stdout=None,
                    stderr=None,
                    signals=signals,
                    on_start=started.append,
                    cgroup_root=str(tmp_path / "cgroupfs"),
                )
            while True:
                try:
                    reaped.append(exits.receive_nowait().status)
                except trio.WouldBlock:
                    break
    assert started == []
    return str(error.value), reaped


async def test_a_cgroup_that_cannot_be_made_fails_plainly_before_the_spawn(
    tmp_path: Path,
) -> None:
    (tmp_path / "cgroupfs").mkdir()
    root = _fake_v1(tmp_path / "cgroupfs", cpuset=False)
    spec = {"linux": {"cgroupsPath": "/c1", "resources": {"pids": {"limit": 8}}}}
    message, reaped = await _fail_in_fake_cgroupfs(tmp_path, spec)
    assert "pids.max is not there" in message
    assert reaped == []  # nothing was spawned
    assert not (root / "memory" / "c1").exists()


async def test_a_cgroup_that_cannot_be_joined_fails_plainly_and_the_child_is_killed(
    tmp_path: Path,
) -> None:
    (tmp_path / "cgroupfs").mkdir()
    root = _fake_v1(tmp_path / "cgroupfs", cpuset=False)
    (root / "memory" / "c1" / "cgroup.procs").mkdir(parents=True)  # writing it fails: EISDIR
    message, reaped = await _fail_in_fake_cgroupfs(tmp_path, {"linux": {"cgroupsPath": "/c1"}})
    assert "cgroup.procs: Is a directory" in message
    assert reaped == [137]  # spawned, then killed and reaped before the error came out
