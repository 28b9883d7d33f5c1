"""Where a cgroup's OOM notifications come from, for :mod:`trioshim.shim.cgroups.oom`: v1's
eventfd registered on ``memory.oom_control`` through ``cgroup.event_control``, v2's inotify
on ``memory.events`` and its counters, and the checks that tell a notification from the
cgroup's removal."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Final

__all__ = [
    "INOTIFY_READ_SIZE",
    "IN_MODIFY",
    "V2Counter",
    "cgroup_removed",
    "inotify_add_watch",
    "inotify_init",
    "is_gone",
    "read_kv",
    "register_v1",
    "register_v2",
    "v1_pending",
]

IN_MODIFY: Final = 0x00000002
INOTIFY_READ_SIZE: Final = 4096


class _Libc:
    """The two inotify calls the os module lacks, through ctypes (loaded on first use)."""

    _lib: ctypes.CDLL | None = None

    @classmethod
    def lib(cls) -> ctypes.CDLL:
        if cls._lib is None:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_init1.restype = ctypes.c_int
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_add_watch.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


def inotify_init() -> int:
    fd: int = _Libc.lib().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def inotify_add_watch(fd: int, path: str, mask: int) -> None:
    wd: int = _Libc.lib().inotify_add_watch(fd, os.fsencode(path), mask)
    if wd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"failed to add inotify watch for {path!r}: {os.strerror(err)}", path)


def read_kv(path: str) -> dict[str, int]:
    """`key value` lines; raises FileNotFoundError (or ENODEV) when the cgroup is gone."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def register_v1(memory_path: str) -> int:
    """An eventfd the kernel signals on every OOM of the memory cgroup at `memory_path`."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        control = os.open(
            os.path.join(memory_path, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC
        )
        try:
            events = os.open(
                os.path.join(memory_path, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC
            )
            try:
                os.write(events, f"{efd} {control}".encode())
            finally:
                os.close(events)
        finally:
            # the kernel holds its own reference to memory.oom_control from here on
            os.close(control)
    except BaseException:
        os.close(efd)
        raise
    return efd


def register_v2(path: str) -> int:
    """An inotify fd watching `memory.events` and `cgroup.events` of the group at `path`."""
    fd = inotify_init()
    try:
        inotify_add_watch(fd, os.path.join(path, "memory.events"), IN_MODIFY)
        # cgroup.events changes when the group empties: the end of the watch
        inotify_add_watch(fd, os.path.join(path, "cgroup.events"), IN_MODIFY)
    except BaseException:
        os.close(fd)
        raise
    return fd


def cgroup_removed(path: str) -> bool:
    # a stat on cgroupfs: in-memory, never blocks for long (the same goes for the
    # small reads of memory.events/cgroup.events done inline by the v2 watch)
    return not os.path.isdir(path)


def is_gone(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR)


def v1_pending(memory_path: str, efd: int) -> Callable[[], bool]:
    """`poll`'s look at a v1 watch: an OOM notification pending on the eventfd (consumed)?"""

    def pending() -> bool:
        # A removed group's signal is left for the watch task: it ends the watch.
        if cgroup_removed(memory_path):
            return False
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            return False
        return True

    return pending


class V2Counter:
    """The `oom_kill` count of a v2 group's `memory.events`, shared by its watch and `poll`."""

    def __init__(self, path: str) -> None:
        self.memory_events = os.path.join(path, "memory.events")
        self._last = 0

    def grew(self) -> bool:
        """Did `oom_kill` grow past the last value seen? OSError: unreadable."""
        oom_kill = read_kv(self.memory_events).get("oom_kill", 0)
        grew = oom_kill > self._last
        self._last = max(self._last, oom_kill)
        return grew

    def pending(self) -> bool:
        try:
            return self.grew()
        except OSError:
            return False  # the watch task sees it too, and ends
