"""A shim that containerd abandons right after ``start`` exits by itself.

containerd writes ``shim-binary-path`` into the bundle after the shim's ``start`` returned; when
that fails (its state filesystem is full) it removes the bundle and never calls Shutdown. The
daemon must notice and exit, removing its socket, like the Go shim's daemon does.

The failure is real: containerd's state dir is a small tmpfs, and a wrapper around the shim
binary (tests/support/fill_after_start.py) fills it to the last byte after a successful
``start``, before containerd reads the reply. The wrapper also records which processes hold the
daemon's socket, so the test knows the daemon's pid before it can go.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.line_containerd import LineContainerd
from trioshim.shim.address import can_connect, remove_socket

from .helpers import E2E, REFERENCE, TRIOSHIM

WRAPPER = Path(__file__).parent.parent / "support" / "fill_after_start.py"
STATE_SIZE = "16m"
EXIT_TIMEOUT = 60.0  # generous: the machine is loaded; a daemon that stays never exits


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` exits within ``timeout`` s (pidfd: woken by the exit itself)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


@pytest.fixture
def full_state(
    make_containerd: Callable[..., LineContainerd], busybox_rootfs: Path, runtime: str
) -> Iterator[tuple[E2E, Path, Path]]:
    """(e2e on a containerd whose state dir is a tmpfs, filler file, record dir); the e2e's
    runtime is the wrapper around ``runtime``'s shim."""
    base = Path(tempfile.mkdtemp(prefix="tsab", dir="/tmp"))
    state, bin_dir, records = base / "state", base / "bin", base / "records"
    for d in (state, bin_dir, records):
        d.mkdir()
    name = "fill" + ("runc" if runtime == REFERENCE else "trioshim")
    daemon = make_containerd(base_dir=base)
    real = (
        daemon.line.shim_runc_v2
        if runtime == REFERENCE
        else os.path.join(os.path.dirname(sys.executable), "containerd-shim-trioshim-v2")
    )
    filler = state / "filler"
    script = bin_dir / f"containerd-shim-{name}-v2"
    argv = [sys.executable, str(WRAPPER), real, str(filler), str(records)]
    script.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
    script.chmod(0o755)
    daemon.path = f"{bin_dir}:{daemon.path}"
    mount = ["mount", "-t", "tmpfs", "-o", f"size={STATE_SIZE}", "tmpfs", str(state)]
    subprocess.run(mount, check=True)
    try:
        daemon.start()
        e2e = E2E(daemon, busybox_rootfs, f"io.containerd.{name}.v2", "test_abandoned")
        e2e.short = "ts" if runtime == TRIOSHIM else "rc"
        yield e2e, filler, records
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        daemon.stop()  # also unmounts the tmpfs (a mount under its base dir)


def test_daemon_abandoned_by_containerd_exits(
    full_state: tuple[E2E, Path, Path], runtime: str
) -> None:
    e2e, filler, records = full_state
    cid = e2e.new_id()
    r = e2e.run("/bin/true", cid=cid)
    assert r.returncode != 0, r.stdout
    assert "no space left on device" in r.stderr, r.stderr
    record = json.loads((records / f"{cid}.json").read_text())
    address, pids = record["address"], record["pids"]
    assert pids, f"no daemon held {address}"
    assert not e2e.containerd.bundle(cid).exists()  # containerd gave up on it
    filler.unlink()

    if runtime == REFERENCE:
        # Known reference behaviour: containerd-shim-runc-v2 (1.6, 1.7 and 2.1 alike) keeps
        # serving its socket with no container, for good; stop it for the leftovers check.
        assert can_connect(address), f"the Go daemon no longer serves {address}"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        assert _wait_exit(pid, EXIT_TIMEOUT), f"daemon {pid} still serving {address}"
    if runtime == REFERENCE:
        remove_socket(address)  # the Go daemon leaves it on SIGTERM
    assert not os.path.lexists(address)
    assert not e2e.leftovers()
