"""What ``/proc/<pid>/cmdline`` (and so ``ps``) shows for a process that was forked, not exec'd.

A fork-server worker stands in for the helper containerd exec'd, and a daemon forked from a
``start`` helper is the process Go's shim would have exec'd as
``<shim> -namespace N -id ID -address A [-debug]``: both rewrite the argv area they inherited
in place. The area is as large as it was at exec, so the new argv is truncated to it (the
fork server starts with blank room for this). What is left over is zeroed; for the daemon the
area's end is also moved to the new argv's (``PR_SET_MM_MAP``), so the kernel shows exactly
that argv, no empty arguments after it.

A fork server calls :func:`prime` once: its workers and daemons inherit the same memory map,
so they take the map from the server instead of reading ``/proc/self/stat`` (the first file
a fresh child opens: 0.3-0.6 ms each on a loaded machine), and the ``ctypes`` pieces too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

__all__ = ["daemon_argv", "prime", "program_path", "set_cmdline"]

_PR_SET_MM = 35
_PR_SET_MM_MAP = 14  # the whole map at once: needs no CAP_SYS_RESOURCE (all of it is checked)
_UNCHANGED_EXE = 0xFFFFFFFF


def daemon_argv(argv0: str, *, namespace: str, id: str, address: str, debug: bool) -> list[str]:
    """The daemon's argv, in the shape of Go's (``newCommand`` in the shim manager)."""
    argv = [argv0, "-namespace", namespace, "-id", id, "-address", address]
    if debug:
        argv.append("-debug")
    return argv


def program_path() -> str:
    """The program containerd ran, as it named it: the script in the interpreter's own argv
    (``sys.argv[0]`` may have been changed since, e.g. by ``runpy.run_path``), else
    ``sys.argv[0]`` (a fork-server worker's, which is the helper's)."""
    import sys

    argv, orig = sys.argv, getattr(sys, "orig_argv", [])
    if argv and len(orig) > len(argv) and orig[len(orig) - len(argv) + 1 :] == argv[1:]:
        return str(orig[len(orig) - len(argv)])
    return argv[0] if argv else ""


# The memory map's fields (see _stat_fields) as :func:`prime` read them; valid in the primed
# process and in its forks until one of them moves its argv area (_trim forgets them).
_primed: list[bytes] | None = None


def prime() -> None:
    """Read the memory map and build the ``ctypes`` pieces now, for this process's forks."""
    global _primed
    _primed = _stat_fields()
    _libc()
    _mm_map_type()


def _stat_fields() -> list[bytes] | None:
    """``/proc/self/stat`` after ``pid (comm)``: field N is at index N - 3."""
    if _primed is not None:
        return _primed
    try:
        with open("/proc/self/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


@functools.cache
def _libc() -> Any:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    return libc


@functools.cache
def _mm_map_type() -> Any:
    import ctypes

    class MmMap(ctypes.Structure):  # struct prctl_mm_map
        _fields_ = [
            (name, ctypes.c_uint64)
            for name in [
                "start_code",
                "end_code",
                "start_data",
                "end_data",
                "start_brk",
                "brk",
                "start_stack",
                "arg_start",
                "arg_end",
                "env_start",
                "env_end",
                "auxv",
            ]
        ] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]

    return MmMap


def set_cmdline(args: Sequence[str], *, exact: bool = False) -> bool:
    """Show ``args`` as this process's command line; ``exact`` also trims the argv area to
    them (call it only while single-threaded: see :func:`_trim`). Returns whether the whole of
    ``args`` fits (a truncated argv is still written)."""
    import ctypes

    fields = _stat_fields()
    try:
        start, end = int(fields[48 - 3]), int(fields[49 - 3])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return False
    size = end - start
    if size <= 1:
        return False
    data = b"\0".join(a.encode(errors="replace") for a in args) + b"\0"
    fits = len(data) <= size
    if not fits:
        data = data[: size - 1] + b"\0"
    ctypes.memmove(start, data.ljust(size, b"\0"), size)
    if exact and fits and len(data) < size:
        _trim(fields, start + len(data))  # type: ignore[arg-type]
    return fits


def _trim(fields: list[bytes], arg_end: int) -> None:
    """Move the argv area's end (``PR_SET_MM_MAP``: every field of the memory map is given
    back as it is, ``brk`` from ``sbrk(0)``, so no other thread may move it meanwhile). On
    failure (an old kernel, no ``CONFIG_CHECKPOINT_RESTORE``) the zeroed tail stays: empty
    arguments after the real ones."""
    import ctypes

    global _primed
    _primed = None  # the argv area is about to move
    libc = _libc()
    brk = libc.sbrk(0) or 0

    def field(n: int) -> int:
        return int(fields[n - 3])

    with contextlib.suppress(IndexError, ValueError):
        mm = _mm_map_type()(
            field(26), field(27), field(45), field(46), field(47), brk, field(28),
            field(48), arg_end, field(50), field(51), 0, 0, _UNCHANGED_EXE,
        )  # fmt: skip
        ulong = ctypes.c_ulong
        libc.prctl(
            _PR_SET_MM, ulong(_PR_SET_MM_MAP), ctypes.byref(mm), ulong(ctypes.sizeof(mm)), ulong(0)
        )
