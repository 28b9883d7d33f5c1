"""A container: its bundle files, rootfs mounts, runtime options, init and exec processes.

The runtime options and the bundle files written from them are trioshim.runc.options'.

Rootfs: every ``Mount`` of the Create request is mounted, in order, onto ``<bundle>/rootfs``
(its ``target`` is ignored), with mount(2) through ctypes and containerd's fstab-style option
parsing. The stack is unmounted on Delete and when Create fails: ``umount`` until ``EINVAL``
(nothing mounted any more), ``EBUSY`` retried 50 times at 50 ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from trioshim.api.containerd.types.runc.options import oci_pb2
from trioshim.runc.cgroups import Cgroup, load_cgroup
from trioshim.runc.options import decode_options, decode_restore_options, write_bundle_files
from trioshim.runc.process import (
    ExecProcess,
    InitProcess,
    IOOpener,
    Process,
    unknown,
)
from trioshim.runc.runc_cli import Runc
from trioshim.runc.stdio import StdioConfig
from trioshim.shim.failpoint import Failpoints
from trioshim.shim.reaper import Reaper
from trioshim.ttrpc.errors import NotFound

# --- mounts -------------------------------------------------------------------------------------

MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_SYNCHRONOUS: Final = 0x10
MS_REMOUNT: Final = 0x20
MS_MANDLOCK: Final = 0x40
MS_DIRSYNC: Final = 0x80
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_SILENT: Final = 0x8000
MS_UNBINDABLE: Final = 1 << 17
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
_PROPAGATION: Final = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# option -> (clear, flag): containerd mount_linux.go parseMountOptions
_FLAGS: Final[dict[str, tuple[bool, int]]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    def __str__(self) -> str:  # Go's %v of *mount.Mount
        return f"&{{{self.type} {self.source} {self.target} [{' '.join(self.options)}]}}"


def parse_mount_options(options: Iterable[str]) -> tuple[int, str, bool]:
    """fstab-style options -> (MS_* flags, data string, loop wanted)."""
    flags = 0
    data: list[str] = []
    loop = False
    for option in options:
        known = _FLAGS.get(option)
        if known is not None and known[1] != 0:
            clear, flag = known
            flags = flags & ~flag if clear else flags | flag
        elif option == "loop":
            loop = True
        else:
            data.append(option)
    return flags, ",".join(data), loop


def compact_lowerdir(options: Sequence[str]) -> tuple[str, list[str]]:
    """For a long overlay option list: (common parent dir, options relative to it)."""
    index = next((i for i, o in enumerate(options) if o.startswith("lowerdir=")), -1)
    if index < 0:
        return "", list(options)
    dirs = options[index][len("lowerdir=") :].split(":")
    if len(dirs) == 1:
        return "", list(options)
    common = os.path.commonprefix(dirs)  # noqa: RUF071 - character-wise, as containerd
    if not common:
        return "", list(options)
    # snapshot ids are digits: step back to the parent so "snapshots/1" never splits a name
    common = os.path.dirname(common)
    if common == "/":
        return "", list(options)
    common += "/"
    rest = [o for i, o in enumerate(options) if i != index]
    return common, [*rest, "lowerdir=" + ":".join(d[len(common) :] for d in dirs)]


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's libc; no ldconfig child
        self.mount = libc.mount
        self.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self.umount2 = libc.umount2
        self.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


_libc: _Libc | None = None


def _sys() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _sys().mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount(m: Mount, target: str) -> None:
    """Mount ``m`` on ``target`` as containerd's ``Mount.Mount`` does (no FUSE helpers)."""
    options: Sequence[str] = m.options
    chdir = ""
    if m.type == "overlay" and sum(len(o) for o in options) >= os.sysconf("SC_PAGESIZE") - 512:
        chdir, options = compact_lowerdir(options)
    flags, data, loop = parse_mount_options(options)
    if loop:
        raise OSError(errno.ENOTSUP, "loop mounts are not supported")
    if len(data) > os.sysconf("SC_PAGESIZE"):
        raise OSError(errno.EINVAL, "mount options is too long")
    plain = flags & ~_PROPAGATION
    if not flags & MS_REMOUNT or data:
        if chdir:
            # Relative lowerdirs: resolve against the common parent. Synchronous, so no other
            # task of this thread can observe the changed working directory.
            cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.chdir(chdir)
                _mount(m.source, target, m.type, plain, data)
            finally:
                os.fchdir(cwd)
                os.close(cwd)
        else:
            _mount(m.source, target, m.type, plain, data)
    if flags & _PROPAGATION:
        _mount("", target, "", flags & (_PROPAGATION | MS_REC | MS_SILENT), "")
    if plain & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:
        _mount("", target, "", plain | MS_REMOUNT, "")


def _umount(path: bytes) -> int:
    """``umount2(path, 0)``: 0, or the errno (read in the calling thread: it is per-thread)."""
    if _sys().umount2(path, 0) == 0:
        return 0
    return ctypes.get_errno()


async def unmount_all(target: str) -> None:
    """Unmount everything stacked on ``target`` (a no-op when nothing is, or it is missing)."""
    if not target or not os.path.exists(target):  # noqa: ASYNC240 - a stat, never blocks long
        return
    path = target.encode()
    while True:
        for _ in range(50):
            # In a worker thread: unmounting an overlay syncs its upper filesystem, which can
            # take seconds, and this thread serves every other container of the shim.
            err = await trio.to_thread.run_sync(_umount, path)
            if err == 0:
                break
            if err in (errno.EINVAL, errno.ENOENT):
                return
            if err != errno.EBUSY:
                raise OSError(err, os.strerror(err), target)
            await trio.sleep(0.05)
        else:
            raise OSError(
                errno.EBUSY, f"failed to unmount target {target}: device or resource busy"
            )


async def mount_rootfs(mounts: Sequence[Mount], rootfs: str) -> None:
    """Stack ``mounts`` on ``rootfs``; on failure undo what was mounted and raise."""
    for m in mounts:
        try:
            mount(m, rootfs)
        except OSError as exc:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await unmount_all(rootfs)
            text = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.strerror and exc.strerror != os.strerror(exc.errno or 0):
                text = exc.strerror
            text = text[:1].lower() + text[1:]
            raise unknown(f"failed to mount rootfs component {m}: {text}") from exc


def enable_v2_controllers(path: str, root: str = "/sys/fs/cgroup") -> None:
    """Enable every controller of the unified root in ``cgroup.subtree_control`` of each
    ancestor of ``path`` (the root included, ``path`` itself not), so that the container's
    cgroup gets them all (containerd's ``ToggleControllers``). Raises the last failure."""
    with open(os.path.join(root, "cgroup.controllers"), encoding="ascii") as f:
        controllers = f.read().split()
    if not controllers:
        return
    line = " ".join(f"+{c}" for c in controllers)
    relative = os.path.relpath(path, root)
    if relative.startswith(".."):
        raise ValueError(f"{path} is not below {root}")
    parts = [] if relative == "." else relative.split(os.sep)
    error: OSError | None = None
    for depth in range(len(parts)):
        target = os.path.join(root, *parts[:depth], "cgroup.subtree_control")
        try:
            with open(target, "w", encoding="ascii") as f:
                f.write(line)
            error = None
        except OSError as exc:
            error = exc
    if error is not None:
        raise error


def should_kill_all(bundle: str) -> bool:
    """Whether the init's exit must be followed by ``runc kill --all <id> 9``: unless the
    container has a private PID namespace (the kernel then kills the rest itself)."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            spec = json.load(f)
        namespaces = spec["linux"]["namespaces"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    for ns in namespaces or ():
        if isinstance(ns, dict) and ns.get("type") == "pid":
            return bool(ns.get("path"))
    return True


# --- the container ------------------------------------------------------------------------------


class Container:
    """One container of the shim: init, execs (by id, plus reserved ids), cgroup, rootfs."""

    def __init__(
        self,
        container_id: str,
        bundle: str,
        init: InitProcess,
        *,
        namespace: str,
        options: oci_pb2.Options,
        rootfs: str = "",
    ) -> None:
        self.id = container_id
        self.bundle = bundle
        self.init = init
        self.namespace = namespace
        self.options = options
        self.rootfs = rootfs
        self.execs: dict[str, ExecProcess] = {}
        self.reserved: set[str] = set()
        self.cgroup: Cgroup | None = None
        self.failpoints: Failpoints | None = None  # set by the annotations of its spec

    def __repr__(self) -> str:
        return f"<Container {self.id} {self.init.state.name}>"

    @classmethod
    async def create(
        cls,
        request: Any,
        *,
        namespace: str,
        reaper: Reaper,
        open_io: IOOpener,
        options: oci_pb2.Options | None = None,
    ) -> Container:
        """Write the bundle files, mount the rootfs, ``runc create``; undo the mounts on error.

        ``request`` is a ``CreateTaskRequest`` (task API v2 or v3); ``options`` its decoded
        runtime options (decoded here when not given).
        """
        packed = request.options if request.HasField("options") else None
        opts = options
        if opts is None:
            opts = decode_options(packed)
        bundle = request.bundle
        mounts = [Mount(m.type, m.source, m.target, tuple(m.options)) for m in request.rootfs]
        rootfs = ""
        if mounts:
            rootfs = os.path.join(bundle, "rootfs")
            with contextlib.suppress(FileExistsError):
                os.mkdir(rootfs, 0o711)
        write_bundle_files(bundle, opts)
        runc = Runc.for_container(
            reaper,
            bundle=bundle,
            namespace=namespace,
            binary=opts.binary_name,
            root=opts.root,
            criu=opts.criu_path,
            systemd_cgroup=opts.systemd_cgroup,
        )
        init = InitProcess(
            request.id,
            bundle,
            runc,
            StdioConfig(request.stdin, request.stdout, request.stderr, request.terminal),
            no_pivot=opts.no_pivot_root,
            no_new_keyring=opts.no_new_keyring,
            criu_work_path=opts.criu_work_path,
            restore=decode_restore_options(packed),
        )
        container = cls(request.id, bundle, init, namespace=namespace, options=opts, rootfs=rootfs)
        await mount_rootfs(mounts, rootfs)
        try:
            await init.create(
                open_io, checkpoint=request.checkpoint, parent=request.parent_checkpoint
            )
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await unmount_all(rootfs)
            raise
        if init.pid > 0:
            container.load_cgroup(init.pid)
        return container

    def load_cgroup(self, pid: int) -> None:
        try:
            self.cgroup = load_cgroup(pid)
        except Exception:  # the reference only logs this; Stats then answers NotFound
            self.cgroup = None

    # -- processes -----------------------------------------------------------------------------

    def process(self, exec_id: str) -> Process:
        """The init for ``""``, else the exec, else NotFound ``process does not exist <id>``."""
        if not exec_id:
            return self.init
        process = self.execs.get(exec_id)
        if process is None:
            raise NotFound(f"process does not exist {exec_id}")
        return process

    def reserve(self, exec_id: str) -> bool:
        """Claim an exec id (False: in use or being added)."""
        if exec_id in self.execs or exec_id in self.reserved or exec_id == self.id:
            return False
        self.reserved.add(exec_id)
        return True

    def add_exec(self, process: ExecProcess) -> None:
        self.reserved.discard(process.id)
        self.execs[process.id] = process

    def release(self, exec_id: str) -> None:
        self.reserved.discard(exec_id)

    def remove_exec(self, exec_id: str) -> None:
        self.execs.pop(exec_id, None)

    def find_exec_by_pid(self, pid: int) -> ExecProcess | None:
        for process in self.execs.values():
            if process.pid == pid:
                return process
        return None

    def should_kill_all(self) -> bool:
        return should_kill_all(self.bundle)

    async def unmount_rootfs(self) -> None:
        await unmount_all(self.rootfs)

    async def abandon(self) -> None:
        """Undo :meth:`create` for a Create that failed after it: the container killed and
        deleted in runc, its stdio closed, its rootfs unmounted (shielded, errors ignored:
        the Create reports its own)."""
        await self.init.abandon()
        with trio.CancelScope(shield=True), contextlib.suppress(OSError):
            await unmount_all(self.rootfs)
