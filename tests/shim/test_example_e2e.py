"""The example shim under a real containerd 1.6 (private instance): launched by absolute path,
`ctr run --rm` exit codes, events in order, containerd restarts, a SIGKILLed daemon."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.event_log import EventLog
from tests.e2e.helpers import E2E, wait_for
from tests.support.containerd import PrivateContainerd

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minimal_shim.py"


@pytest.fixture(scope="module")
def shim_binary() -> Iterator[str]:
    """The example behind a `containerd-shim-*` named launcher using this interpreter."""
    with tempfile.TemporaryDirectory(prefix="exshim", dir="/tmp") as tmp:
        path = os.path.join(tmp, "containerd-shim-minimal-v2")
        with open(path, "w") as f:
            f.write(
                f"#!{sys.executable}\nimport runpy\n"
                f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n"
            )
        os.chmod(path, 0o755)
        yield path


@pytest.fixture
def example(shim_binary: str, busybox_rootfs: Path) -> Iterator[E2E]:
    with PrivateContainerd() as containerd:
        yield E2E(containerd, busybox_rootfs, shim_binary, "test_example")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _daemons(env: E2E, cid: str) -> list[int]:
    return [p for p in env.shim_pids_for(cid) if _alive(p)]


def test_ctr_run_rm_returns_exit_code_and_events_in_order(example: E2E) -> None:
    events = EventLog(example.containerd)
    try:
        cid = example.new_id()
        r = example.run("/bin/sh", "-c", "echo hello-from-example; exit 7", cid=cid)
        assert (r.returncode, r.stdout) == (7, "hello-from-example\n"), r.stderr
        evs = events.wait_topic(cid, "/tasks/delete")
        topics = [t for t, _ in evs]
    finally:
        events.close()
    ours = [t for t in topics if t in ("/tasks/create", "/tasks/start", "/tasks/exit")]
    assert ours == ["/tasks/create", "/tasks/start", "/tasks/exit"]
    assert topics.index("/tasks/exit") < topics.index("/tasks/delete")
    wait_for(lambda: not _daemons(example, cid), what="the shim daemon to exit")
    assert not example.containerd.shim_socket(cid).exists()


def test_containerd_restart_then_sigkilled_daemon_cleaned_by_delete(example: E2E) -> None:
    cid = example.run_detached("/bin/sleep", "1000")
    daemon = _daemons(example, cid)
    assert len(daemon) == 1
    socket_path = Path(example.containerd.shim_address(cid))
    assert socket_path.exists()

    example.containerd.restart()  # re-attaches: Connect on the same socket, same daemon
    assert example.tasks()[cid][1] == "RUNNING"
    assert _daemons(example, cid) == daemon

    # The daemon's publisher reconnects to the new containerd: the exit event arrives.
    events = EventLog(example.containerd)
    try:
        assert example.ctr("task", "kill", "-s", "SIGKILL", cid).returncode == 0
        exit_event = dict(events.wait_topic(cid, "/tasks/exit"))["/tasks/exit"]
    finally:
        events.close()
    assert exit_event["exit_status"] == 137
    example.wait_status(cid, "STOPPED")

    os.kill(daemon[0], signal.SIGKILL)
    # containerd sees the connection close, runs `delete`, which removes the leaked socket.
    wait_for(lambda: example.status(cid) is None, timeout=20, what="the task to be gone")
    wait_for(lambda: not socket_path.exists(), what="the leaked socket to be removed")
    bundle = example.containerd.bundle(cid)
    wait_for(lambda: not bundle.exists(), what="containerd to remove the bundle")
    assert example.ctr("container", "delete", cid).returncode == 0
