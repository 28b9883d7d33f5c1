"""`cgroup_at(path)`: a container's cgroup found by its cgroupfs path (the wasm shim's Stats),
on fake v1 (hybrid) and v2 trees."""

from __future__ import annotations

from pathlib import Path

from trioshim.shim.cgroups import CgroupV1, CgroupV2, cgroup_at


def _v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    for hierarchy in ("memory", "pids", "cpu,cpuacct", "systemd"):
        (root / hierarchy / "default" / "c1").mkdir(parents=True)
    (root / "cpu").symlink_to("cpu,cpuacct")  # the per-controller links of a combined mount
    (root / "unified" / "default" / "c1").mkdir(parents=True)  # a hybrid host's v2 tree
    (root / "unified" / "cgroup.controllers").write_text("")
    (root / "freezer").mkdir()  # mounted, but the container is not in it
    return root


def test_v1_every_hierarchy_holding_the_path(tmp_path: Path) -> None:
    root = _v1_root(tmp_path)
    cg = cgroup_at("/default/c1", str(root))
    assert isinstance(cg, CgroupV1)
    assert cg.paths == {
        "memory": str(root / "memory/default/c1"),
        "pids": str(root / "pids/default/c1"),
        "cpu": str(root / "cpu,cpuacct/default/c1"),
        "cpuacct": str(root / "cpu,cpuacct/default/c1"),
        "name=systemd": str(root / "systemd/default/c1"),
    }


def test_v1_absent_or_escaping_path_is_none(tmp_path: Path) -> None:
    root = _v1_root(tmp_path)
    assert cgroup_at("/default/c2", str(root)) is None
    assert cgroup_at("/../../etc", str(root)) is None


def test_v2_one_directory(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "default" / "c1").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory pids\n")
    cg = cgroup_at("/default/c1", str(root))
    assert isinstance(cg, CgroupV2) and cg.path == str(root / "default/c1")
    assert cgroup_at("/default/c2", str(root)) is None
