"""Finding a cgroup: of a live process (`load_cgroup`) or at a cgroupfs path (`cgroup_at`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from trioshim.shim.cgroups.files import DEFAULT_ROOT, Cgroup, read_file
from trioshim.shim.cgroups.v1 import CgroupV1
from trioshim.shim.cgroups.v2 import CgroupV2

# ---------------------------------------------------------------------------- loading


def is_unified(root: str = DEFAULT_ROOT) -> bool:
    """Whether `root` is a cgroup v2 (unified) mount.

    A hybrid host (v1 controllers plus a v2 mount at <root>/unified) is not unified:
    the reference shim uses v1 there.
    """
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _parse_proc_cgroup(text: str) -> Iterator[tuple[list[str], str]]:
    """(controller names, path) per line of /proc/<pid>/cgroup; [] names for v2."""
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"invalid cgroup entry: {line!r}")
        _, controllers, path = parts
        yield ([c for c in controllers.split(",") if c], path)


def _v1_mount_roots() -> dict[str, str]:
    """Mount point -> root inside the hierarchy, for every v1 cgroup mount we can see.

    /proc/<pid>/cgroup paths are relative to the hierarchy's root; when the mount
    itself shows a subtree (a nested setup) the mount's root must be stripped.
    """
    text = read_file("/proc/self/mountinfo")
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if sep + 1 < len(fields) and fields[sep + 1] == "cgroup" and len(fields) > 4:
            out[_unescape_mountinfo(fields[4])] = _unescape_mountinfo(fields[3])
    return out


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _join(base: str, path: str) -> str | None:
    """`base`/`path`, or None when `path` climbs out of `base` (e.g. "/../x" seen from
    inside a cgroup namespace for a process outside it)."""
    joined = os.path.normpath(os.path.join(base, path.lstrip("/")))
    base = os.path.normpath(base)
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        return None
    return joined


def load_cgroup(pid: int, root: str = DEFAULT_ROOT, *, proc: str = "/proc") -> Cgroup | None:
    """The cgroup of process `pid`, or None when it cannot be found.

    On a unified host the `0::<path>` line gives one directory under `root`. On a
    legacy/hybrid host every controller line gives a directory under
    `root/<controller>` (falling back to the combined mount name, e.g.
    `root/cpu,cpuacct`, when there is no per-controller link); `name=systemd` maps
    to `root/systemd`; the v2 line of a hybrid host is ignored; directories that do
    not exist (controller not mounted) are left out.
    """
    text = read_file(os.path.join(proc, str(pid), "cgroup"))
    if text is None:
        return None
    entries = list(_parse_proc_cgroup(text))
    if is_unified(root):
        for controllers, path in entries:
            if not controllers:
                directory = _join(root, path)
                if directory is None:
                    return None
                cg = CgroupV2(directory)
                return cg if cg.exists() else None
        return None

    mount_roots = _v1_mount_roots() if root == DEFAULT_ROOT else {}
    paths: dict[str, str] = {}
    for controllers, path in entries:
        if not controllers:
            continue
        mount_names = [c.removeprefix("name=") for c in controllers]
        for controller, mount_name in zip(controllers, mount_names, strict=True):
            for candidate in (
                os.path.join(root, mount_name),
                os.path.join(root, ",".join(mount_names)),
            ):
                if os.path.isdir(candidate):
                    break
            else:
                continue
            mount_root = mount_roots.get(candidate) or mount_roots.get(os.path.realpath(candidate))
            rel = path
            if mount_root and mount_root != "/" and (path + "/").startswith(mount_root + "/"):
                rel = path[len(mount_root) :]
            directory = _join(candidate, rel)
            if directory is not None and os.path.isdir(directory):
                paths[controller] = directory
    if not paths:
        return None
    return CgroupV1(paths, proc=proc)


def cgroup_at(path: str, root: str = DEFAULT_ROOT) -> Cgroup | None:
    """The cgroup at `path` (a cgroupfs path such as ``/default/c1``), or None when it does
    not exist: for a container whose cgroup is known by its spec rather than by a live pid.

    On a unified host one directory under `root`; otherwise `path` in every v1 hierarchy
    mounted under `root` (a combined mount such as ``cpu,cpuacct`` serves each of its
    controllers; the v2 tree of a hybrid host is ignored, as in :func:`load_cgroup`).
    """
    if is_unified(root):
        directory = _join(root, path)
        if directory is None or not os.path.isdir(directory):
            return None
        return CgroupV2(directory)
    paths: dict[str, str] = {}
    for mount_name in sorted(os.listdir(root)):
        hierarchy = os.path.join(root, mount_name)
        if os.path.islink(hierarchy) or os.path.exists(
            os.path.join(hierarchy, "cgroup.controllers")
        ):
            continue  # a link to a combined mount, or the hybrid host's v2 tree
        directory = _join(hierarchy, path)
        if directory is None or not os.path.isdir(directory):
            continue
        for controller in mount_name.split(","):
            paths["name=" + controller if controller == "systemd" else controller] = directory
    return CgroupV1(paths) if paths else None
