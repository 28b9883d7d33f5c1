"""What ``/proc/<pid>/cmdline`` shows for a forked process that rewrote its argv, with the
memory map read by the process itself or taken from a parent that primed it (a fork server)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from trioshim.shim import cmdline

    if sys.argv[1] == "primed":
        cmdline.prime()
    read, write = os.pipe()
    hold, release = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        worker = cmdline.set_cmdline(["/bin/helper", "-id", "x", "start"])
        shown = open("/proc/self/cmdline", "rb").read()
        daemon = cmdline.set_cmdline(["/bin/daemon", "-id", "x"], exact=True)
        os.write(write, repr((worker, shown, daemon)).encode())
        os.close(write)
        os.close(release)
        os.read(hold, 1)  # until the parent has looked
        os._exit(0)
    os.close(write)
    worker, shown, daemon = eval(os.read(read, 65536))
    exact = open(f"/proc/{child}/cmdline", "rb").read()
    os.close(release)
    os.waitpid(child, 0)
    print(repr((worker, shown.split(b"\\0")[:4], daemon, exact)))
    """
)


@pytest.mark.parametrize("how", ["read", "primed"])
def test_a_child_shows_the_argv_it_set(how: str) -> None:
    room = " " * 200  # as the fork server keeps blank room in its argv
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, how, room],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    worker, shown, daemon, exact = eval(out)
    assert worker and daemon
    assert shown == [b"/bin/helper", b"-id", b"x", b"start"]
    assert exact == b"/bin/daemon\0-id\0x\0"  # exactly: the area's end moved
