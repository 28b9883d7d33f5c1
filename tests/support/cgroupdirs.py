"""Removing a test's own cgroup directory on a real hierarchy."""

from __future__ import annotations

import errno
import os
import time


def rmdir_cgroup(path: str) -> None:
    """rmdir a test cgroup, waiting out EBUSY while the kernel finishes detaching a dead task
    (a blocking helper for fixtures' teardown, bounded at about 5 s)."""
    for _ in range(100):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.05)
        else:
            return
    os.rmdir(path)
