"""A burst of connections to the socket of a shim containerd launched: none is refused.

Clients that open many connections at once (monitoring, a restarted containerd reconnecting
every task, a load test) get EAGAIN from a non-blocking connect once the shim's listen queue
is full. containerd-shim-runc-v2 listens with the system's maximum (`net.core.somaxconn`), so
a burst of that size is queued, not refused; ours must do the same (it listened with 128 and
refused most of a 2,000-connection burst).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from .helpers import E2E

BURST = 2000


def _system_maximum() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_a_burst_of_connections_is_queued_not_refused(e2e: E2E) -> None:
    burst = min(BURST, _system_maximum())
    cid = e2e.run_detached("/bin/sleep", "1000")
    path = e2e.containerd.shim_address(cid)
    refused = 0
    with contextlib.ExitStack() as stack:
        for _ in range(burst):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:  # EAGAIN: the listen queue was full
                refused += 1
    # The shim still answers after the burst (every connection was accepted and dropped).
    state = e2e.call_shim(cid, "State", e2e.task_api.StateRequest(id=cid))
    assert state.pid > 0
    assert e2e.kill_and_delete(cid) == 137
    assert refused == 0, f"{refused} of {burst} connections refused"
