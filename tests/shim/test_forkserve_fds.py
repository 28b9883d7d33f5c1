"""The helper's connection is closed in the daemon, and only there: at-fork hooks are inherited
by every later fork, and the daemon's own children reuse the number (the reaper's exec pipes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import fcntl, os
    from trioshim.shim.forking import close_in_next_child

    def is_open(fd):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            return True
        except OSError:
            return False

    conn, other = os.pipe()
    close_in_next_child(conn)
    daemon = os.fork()
    if daemon == 0:
        closed = not is_open(conn)
        reused, _ = os.pipe()  # the lowest free number: the connection's
        child = os.fork()
        if child == 0:
            os._exit(0 if is_open(reused) else 3)
        _, status = os.waitpid(child, 0)
        kept = os.waitstatus_to_exitcode(status) == 0
        os._exit((0 if closed else 1) | (0 if kept else 2) | (0 if reused == conn else 4))
    _, status = os.waitpid(daemon, 0)
    print(os.waitstatus_to_exitcode(status), is_open(conn))
    """
)


def test_the_connection_is_closed_in_the_daemon_not_in_its_children() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    # 0: closed in the daemon, the daemon's child keeps the reused number, which is the same;
    # and the forking process itself keeps its connection.
    assert out == ["0", "True"]
