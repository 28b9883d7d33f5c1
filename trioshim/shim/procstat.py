"""What ``/proc/PID/stat`` tells about another process: its parent, and since when it runs.

The start time tells a live process from a later one that reuses its pid, where no pidfd can
(the fork server and the shared process both watch their containerd this way without one).
"""

from __future__ import annotations

__all__ = ["parent_pid", "running_since"]


def _stat(pid: int) -> list[bytes] | None:
    """``/proc/PID/stat`` after ``pid (comm)``: field N is at index N - 3."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    try:
        return None if fields is None else int(fields[1])
    except (IndexError, ValueError):
        return None


def running_since(pid: int) -> int | None:
    """The start time of ``pid`` if it is running (not a zombie), else ``None``."""
    fields = _stat(pid)
    try:
        return None if fields is None or fields[0] in (b"Z", b"X") else int(fields[19])
    except (IndexError, ValueError):
        return None
