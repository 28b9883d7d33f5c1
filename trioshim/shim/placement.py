"""Put a fork-server worker where the helper it stands for is, before it forks a daemon.

An exec'd shim inherits from containerd its cgroups, resource limits, umask and
``oom_score_adj``; a daemon forked by a fork-server worker would inherit the server's instead.
The helper sends what the kernel shows for it (``/proc/self/cgroup``, ``/proc/self/limits``,
``/proc/self/oom_score_adj`` and its umask; reading them costs the import-light helper next to
nothing) and the worker applies them to itself, so the daemon it forks inherits them: it joins
the helper's cgroup in every hierarchy where it is elsewhere (writing its pid into that
cgroup's ``cgroup.procs``), sets every ``RLIMIT_*`` that differs, then ``oom_score_adj`` and
the umask. Whatever cannot be applied (a cgroup not mounted here, a hard limit an
unprivileged server cannot raise) is a :class:`PlacementError`: the worker declines and the
helper runs the action itself, placed right by construction.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Placement", "PlacementError", "parse_cgroups", "parse_limits"]

_INFINITY = "unlimited"
_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes " " as \040 and so on


class PlacementError(Exception):
    """The worker cannot stand where the helper is."""


# (hierarchy id, controllers) -> path, as in /proc/<pid>/cgroup ("0" and "" for cgroup v2).
Cgroups = dict[tuple[str, str], str]


def parse_cgroups(text: bytes) -> Cgroups:
    cgroups: Cgroups = {}
    for line in text.decode(errors="surrogateescape").splitlines():
        hierarchy, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2 and hierarchy.isdigit()):
            raise PlacementError(f"unreadable cgroup line {line!r}")
        cgroups[hierarchy, controllers] = path
    return cgroups


def parse_limits(text: bytes) -> list[tuple[int, int]]:
    """(soft, hard) per resource number, from ``/proc/<pid>/limits`` (the kernel prints one
    row per ``RLIMIT_*`` in their numeric order, the name in a 25-character column)."""

    def value(word: str) -> int:
        return resource.RLIM_INFINITY if word == _INFINITY else int(word)

    limits = []
    for line in text.decode(errors="replace").splitlines()[1:]:
        words = line[26:].split()
        try:
            limits.append((value(words[0]), value(words[1])))
        except (IndexError, ValueError):
            raise PlacementError(f"unreadable limits line {line!r}") from None
    return limits


@dataclass(frozen=True)
class Placement:
    cgroup: bytes | None  # None: the helper could not read it (nothing to apply)
    limits: bytes | None
    oom_score_adj: bytes | None
    umask: int

    @classmethod
    def from_request(cls, data: object) -> Placement:
        if not isinstance(data, Mapping) or not isinstance(data.get("umask"), int):
            raise PlacementError(f"no placement in the request: {data!r:.200}")
        texts = {}
        for name in ("cgroup", "limits", "oom_score_adj"):
            value = data.get(name)
            if value is not None and not isinstance(value, bytes):
                raise PlacementError(f"placement {name}: {value!r:.200}")
            texts[name] = value
        return cls(umask=data["umask"], **texts)

    def apply(self, proc: str = "/proc/self") -> None:
        """Put this process (single-threaded) where the helper is."""
        if self.limits is not None:
            _apply_limits(parse_limits(self.limits))
        if self.oom_score_adj is not None:
            _apply_oom_score_adj(proc, self.oom_score_adj.strip())
        if self.cgroup is not None:
            _apply_cgroups(proc, parse_cgroups(self.cgroup))
        os.umask(self.umask)


def _apply_limits(limits: list[tuple[int, int]]) -> None:
    for number, wanted in enumerate(limits):
        try:
            if resource.getrlimit(number) != wanted:
                resource.setrlimit(number, wanted)
        except (OSError, ValueError) as exc:
            raise PlacementError(f"resource limit {number} {wanted}: {exc}") from None


def _apply_oom_score_adj(proc: str, wanted: bytes) -> None:
    path = f"{proc}/oom_score_adj"
    try:
        with open(path, "rb") as f:
            if f.read().strip() == wanted:
                return
        with open(path, "wb") as f:
            f.write(wanted)
    except OSError as exc:
        raise PlacementError(f"oom_score_adj {wanted.decode(errors='replace')}: {exc}") from None


def _apply_cgroups(proc: str, wanted: Cgroups) -> None:
    with open(f"{proc}/cgroup", "rb") as f:
        current = parse_cgroups(f.read())
    moves = {key: path for key, path in wanted.items() if current.get(key) != path}
    if not moves:
        return
    with open(f"{proc}/mountinfo", "rb") as f:
        mounts = _cgroup_mounts(f.read())
    pid = str(os.getpid()).encode()
    for (hierarchy, controllers), path in moves.items():
        directory = _cgroup_dir(mounts, controllers, path)
        if directory is None:
            raise PlacementError(
                f"cgroup {hierarchy}:{controllers}:{path}: the hierarchy is not mounted here"
            )
        try:
            with open(os.path.join(directory, "cgroup.procs"), "wb") as f:
                f.write(pid)
        except OSError as exc:
            raise PlacementError(f"cgroup {hierarchy}:{controllers}:{path}: {exc}") from None


@dataclass(frozen=True)
class _Mount:
    controllers: frozenset[str] | None  # None: cgroup v2
    root: str  # the cgroup shown at the mount point
    point: str


def _unescape(field: bytes) -> str:
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field).decode(errors="surrogateescape")


def _cgroup_mounts(mountinfo: bytes) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            sep = fields.index(b"-", 6)
            fstype, options = fields[sep + 1], fields[sep + 3]
        except (ValueError, IndexError):
            continue
        if fstype not in (b"cgroup", b"cgroup2"):
            continue
        controllers = (
            frozenset(options.decode(errors="replace").split(",")) if fstype == b"cgroup" else None
        )
        mounts.append(_Mount(controllers, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _cgroup_dir(mounts: list[_Mount], controllers: str, path: str) -> str | None:
    """The directory of cgroup ``path`` of the hierarchy with ``controllers`` ("" for v2)."""
    for mount in mounts:
        if controllers:
            if mount.controllers is None or not set(controllers.split(",")) <= mount.controllers:
                continue
        elif mount.controllers is not None:
            continue
        root = mount.root.rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount.point + path[len(root) :]
    return None
