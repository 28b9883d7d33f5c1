"""The cgroup a WASI child runs in: created from the OCI spec, limits written, removed after.

runc makes a container's cgroup itself; the wasm shim has no runc, so this module does the small
part of that job a single process needs: the directory named by ``linux.cgroupsPath`` in every
hierarchy (v1: each mounted controller; v2: the one unified tree), the memory and pids limits of
``linux.resources``, joining a pid, counting its OOMs (notifications and kills), and removal.

``cgroupsPath`` comes in two shapes, as in runc: a plain path (``/default/<id>``, the cgroupfs
driver) or ``slice:prefix:name`` (the systemd driver). The second is mapped to the directory
systemd would use (``a-b.slice`` -> ``/a.slice/a-b.slice/<prefix>-<name>.scope``) without asking
systemd for a unit: the wasm shim places one process and nothing else manages that scope.

Reading metrics for the Stats RPC is not here: the shared reader
:func:`trioshim.shim.cgroups.cgroup_at` (the runc shim's too) reads the cgroup made here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from trioshim.shim.cgroups.oom import OOMCount
from trioshim.wasm.errors import CgroupError

__all__ = ["DEFAULT_ROOT", "CgroupLimits", "ContainerCgroup", "cgroup_path"]

log = logging.getLogger(__name__)

DEFAULT_ROOT: Final = "/sys/fs/cgroup"


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """The part of ``linux.resources`` applied to a WASI child (None: not set)."""

    memory: int | None = None  # bytes; -1 = unlimited
    memory_swap: int | None = None  # memory + swap in bytes (v1 semantics, as OCI defines it)
    pids: int | None = None  # -1 or 0 = unlimited
    disable_oom_killer: bool = False  # v1 only, as runc: an OOM stalls the module, no kill

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> CgroupLimits:
        resources = (spec.get("linux") or {}).get("resources") or {}
        memory = resources.get("memory") or {}
        pids = resources.get("pids") or {}
        return cls(
            memory=_int_or_none(memory.get("limit"), "memory.limit"),
            memory_swap=_int_or_none(memory.get("swap"), "memory.swap"),
            pids=_int_or_none(pids.get("limit"), "pids.limit"),
            disable_oom_killer=_bool(memory.get("disableOOMKiller"), "memory.disableOOMKiller"),
        )


def _bool(value: Any, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise CgroupError(f"linux.resources.{name} must be true or false, not {value!r}")


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError(f"linux.resources.{name} must be an integer, not {value!r}")
    return value


def cgroup_path(spec: Mapping[str, Any]) -> str | None:
    """The cgroup directory (relative to a hierarchy's root) the spec asks for, or None."""
    raw = (spec.get("linux") or {}).get("cgroupsPath")
    if not raw:
        return None
    if not isinstance(raw, str):
        raise CgroupError(f"linux.cgroupsPath must be a string, not {raw!r}")
    if raw.startswith("/"):
        path = os.path.normpath(raw)
    else:
        parts = raw.split(":")
        if len(parts) != 3:
            raise CgroupError(f"linux.cgroupsPath {raw!r}: want /path or slice:prefix:name")
        if any("/" in part for part in parts):
            raise CgroupError(f"linux.cgroupsPath {raw!r}: a systemd name cannot hold a /")
        path = _systemd_path(*parts)
    return path  # normalised: ".." stops at the hierarchy's root, as runc's path cleaning does


def _systemd_path(slice_: str, prefix: str, name: str) -> str:
    slice_ = slice_ or "-.slice"
    if not slice_.endswith(".slice") or "/" in slice_:
        raise CgroupError(f"systemd cgroupsPath: {slice_!r} is not a slice name")
    dirs = []
    if slice_ != "-.slice":  # a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice
        words = slice_.removesuffix(".slice").split("-")
        dirs = ["-".join(words[: i + 1]) + ".slice" for i in range(len(words))]
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix else name
    return "/" + "/".join([*dirs, unit])


def _write(path: str, value: str | int) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise CgroupError(f"write {value} to {path}: {exc.strerror}") from exc


def _v1_hierarchies(root: str) -> list[str]:
    """The v1 hierarchy directories under ``root`` (links to combined mounts skipped)."""
    found = []
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        if os.path.islink(directory) or not os.path.isdir(directory):
            continue
        if os.path.exists(os.path.join(directory, "cgroup.controllers")):
            continue  # the v2 tree of a hybrid host: controllers are all in v1
        if os.path.exists(os.path.join(directory, "cgroup.procs")):
            found.append(directory)
    return found


@dataclass(eq=False)
class ContainerCgroup:
    """The directories of one container's cgroup, one per hierarchy."""

    directories: tuple[str, ...]
    unified: bool
    created: tuple[str, ...]  # the ones this object made (and so removes)

    @classmethod
    def create(
        cls, path: str, limits: CgroupLimits, *, root: str = DEFAULT_ROOT
    ) -> ContainerCgroup:
        """Make (or join) ``path`` in every hierarchy under ``root`` and write ``limits``."""
        unified = os.path.exists(os.path.join(root, "cgroup.controllers"))
        bases = [root] if unified else _v1_hierarchies(root)
        if not bases:
            raise CgroupError(f"no cgroup hierarchy found under {root}")
        directories: list[str] = []
        created: list[str] = []
        try:
            for base in bases:
                directory = os.path.join(base, path.lstrip("/"))
                if _make_dirs(base, directory, unified):
                    created.append(directory)
                directories.append(directory)
            cgroup = cls(tuple(directories), unified, tuple(created))
            cgroup._apply(limits)
        except BaseException:
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise
        return cgroup

    def _file(self, name: str) -> str | None:
        """The path of a controller file (``memory.max``...), None when no hierarchy has it."""
        for directory in self.directories:
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate):
                return candidate
        return None

    def _apply(self, limits: CgroupLimits) -> None:
        if self.unified:
            self._apply_v2(limits)
        else:
            self._apply_v1(limits)

    def _need(self, name: str) -> str:
        path = self._file(name)
        if path is None:
            controller = name.partition(".")[0]
            raise CgroupError(
                f"a {controller} limit is asked for but {name} is not there "
                f"(is the {controller} controller mounted?)"
            )
        return path

    def _apply_v1(self, limits: CgroupLimits) -> None:
        if limits.memory is not None:
            memsw = self._file("memory.memsw.limit_in_bytes")  # absent without swap accounting
            if memsw is not None:
                _write(memsw, -1)  # memsw >= limit always; lift it first so the limit fits
            _write(self._need("memory.limit_in_bytes"), limits.memory)
        if limits.memory_swap is not None:
            memsw = self._file("memory.memsw.limit_in_bytes")
            if memsw is not None:  # no swap accounting: no swap to limit
                _write(memsw, limits.memory_swap)
        if limits.pids is not None:
            _write(self._need("pids.max"), "max" if limits.pids <= 0 else limits.pids)
        if limits.disable_oom_killer:
            _write(self._need("memory.oom_control"), 1)

    def _apply_v2(self, limits: CgroupLimits) -> None:
        directory = self.directories[0]
        if limits.memory is not None:
            _write(os.path.join(directory, "memory.max"), _v2_max(limits.memory))
            if limits.memory_swap is not None:
                swap = -1 if limits.memory_swap < 0 else limits.memory_swap - max(limits.memory, 0)
                _write(os.path.join(directory, "memory.swap.max"), _v2_max(swap))
        if limits.pids is not None:
            _write(
                os.path.join(directory, "pids.max"), _v2_max(limits.pids if limits.pids > 0 else -1)
            )

    def add(self, pid: int) -> None:
        """Move ``pid`` into the cgroup in every hierarchy."""
        for directory in self.directories:
            _write(os.path.join(directory, "cgroup.procs"), pid)

    def count_ooms(self) -> OOMCount | None:
        """Start counting the cgroup's OOM notifications (see :class:`OOMCount`); None when it
        has no memory controller or the kernel refuses (then only :meth:`oom_kills` tells)."""
        control = self._file("memory.events" if self.unified else "memory.oom_control")
        if control is None:
            return None
        try:
            return OOMCount.open(os.path.dirname(control), unified=self.unified)
        except OSError as exc:
            log.warning("cannot count OOMs of %s: %s", os.path.dirname(control), exc)
            return None

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup (0 if unknown)."""
        name = "memory.events" if self.unified else "memory.oom_control"
        path = self._file(name)
        if path is None:
            return 0
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Remove the directories this object created (idempotent; the processes are gone)."""
        for directory in self.created:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CgroupError(f"remove {directory}: {exc.strerror}") from exc


def _v2_max(value: int) -> str:
    return "max" if value < 0 else str(value)


def _make_dirs(base: str, directory: str, unified: bool) -> bool:
    """mkdir -p ``directory`` below ``base``; True if the last level was made by us.

    v1 cpuset starts a new cgroup with no cpus and no memory nodes (no task may join), so each
    new level copies its parent's; v2 ancestors must delegate memory and pids to their children.
    """
    relative = os.path.relpath(directory, base)
    current = base
    made = False
    for part in relative.split(os.sep):
        parent, current = current, os.path.join(current, part)
        if unified:
            _enable_v2_controllers(parent)
        try:
            os.mkdir(current, 0o755)
            made = True
        except FileExistsError:
            made = False
            continue
        except OSError as exc:
            raise CgroupError(f"mkdir {current}: {exc.strerror}") from exc
        for name in ("cpuset.cpus", "cpuset.mems"):
            inherit = os.path.join(parent, name)
            if not unified and os.path.exists(inherit):
                with open(inherit) as f:
                    value = f.read().strip()
                if value:
                    _write(os.path.join(current, name), value)
    return made


def _enable_v2_controllers(directory: str) -> None:
    control = os.path.join(directory, "cgroup.subtree_control")
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as f:
            available = set(f.read().split())
    except OSError:
        return
    wanted = [c for c in ("memory", "pids") if c in available]
    if wanted:
        try:
            _write(control, " ".join("+" + c for c in wanted))
        except CgroupError as exc:
            if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.EBUSY:
                raise
