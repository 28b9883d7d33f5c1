"""Subreaper status (``prctl(PR_SET_CHILD_SUBREAPER)``): a container's init, started by runc
which then exits, is reparented to the subreaper, so its exit reaches the shim."""

from __future__ import annotations

import ctypes
import os
from typing import Final

__all__ = ["is_child_subreaper", "set_child_subreaper"]

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # the interpreter's libc; no ldconfig child


def set_child_subreaper(enable: bool = True) -> None:
    """Make this process the subreaper of its descendants (Linux ``PR_SET_CHILD_SUBREAPER``)."""
    if _libc().prctl(_PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_child_subreaper() -> bool:
    """Whether this process is a subreaper (``PR_GET_CHILD_SUBREAPER``)."""
    value = ctypes.c_int(0)
    if _libc().prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return value.value != 0
