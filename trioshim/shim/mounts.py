"""Mounting a container's root filesystem: containerd's ``Mount`` list stacked on a directory.

Every ``Mount`` of a Create request is mounted, in order, onto the rootfs directory (its
``target`` is ignored), with mount(2) through ctypes and containerd's fstab-style option parsing
(``mount_linux.go``). The stack is unmounted with ``umount`` until ``EINVAL`` (nothing mounted
any more), ``EBUSY`` retried 50 times at 50 ms. Shared by every backend: the runc shim and the
task kit (whose engines get their rootfs mounted the same way).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

__all__ = [
    "Mount",
    "RootfsMountError",
    "compact_lowerdir",
    "has_mount",
    "mount",
    "mount_rootfs",
    "parse_mount_options",
    "unmount_all",
]


class RootfsMountError(Exception):
    """A component of the rootfs could not be mounted (what was mounted is undone)."""


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


def _is_mount_point(path: str) -> bool:
    """Whether something is mounted on ``path`` in our mount namespace (``True`` when
    ``/proc/self/mountinfo`` cannot be read: then only ``umount2`` can tell)."""
    # The kernel writes these four as octal escapes in mountinfo's fields.
    escaped = os.path.realpath(path)
    for char, octal in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        escaped = escaped.replace(char, octal)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode(errors="surrogateescape").splitlines()
    except OSError:
        return True
    return any(line.split(" ", 5)[4:5] == [escaped] for line in lines)


def has_mount(target: str) -> bool:
    """Whether anything is mounted on ``target`` (false when it is missing), without
    unmounting: usually nothing is left (the daemon's Delete unmounted it before the delete
    action runs), and saying so needs no worker thread, which costs the action milliseconds."""
    return bool(target) and os.path.exists(target) and _is_mount_point(target)


async def unmount_all(target: str) -> None:
    """Unmount everything stacked on ``target`` (a no-op when nothing is, or it is missing)."""
    if not has_mount(target):
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
            raise RootfsMountError(f"failed to mount rootfs component {m}: {text}") from exc
