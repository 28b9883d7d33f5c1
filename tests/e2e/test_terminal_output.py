"""Terminal processes (`ctr task exec -t`, `ctr run -t`): output intact to the last byte.

The exit of a terminal process is reported as soon as its output was delivered (the exit ends
the output); these check that nothing is cut off on the way: several MB through the container's
pty, the shim, the FIFO and ctr, a process that exits at once, and a process that closes its
terminal and writes to it again through /dev/tty (the master reads EIO in between, which is not
the end of the output).
"""

from __future__ import annotations

import warnings

from .helpers import E2E, REFERENCE
from .terminal import ctr_on_tty

COUNT = 400_000  # `seq -s " " 1 COUNT`: about 2.7 MB on one line
SEQ = f'seq -s " " 1 {COUNT}'


def expected_seq() -> bytes:
    return (" ".join(str(i) for i in range(1, COUNT + 1)) + "\n").encode()


def terminal_text(raw: bytes) -> bytes:
    """What the process wrote: the ptys on the way turn each newline into CR LF (and the
    client's terminal may add another CR); the output checked here has no CR of its own."""
    return raw.replace(b"\r", b"")


def assert_intact(e2e: E2E, raw: bytes, expected: bytes, stderr: str) -> None:
    got = terminal_text(raw)
    if e2e.runtime == REFERENCE and len(got) < len(expected) and expected.startswith(got):
        # containerd-shim-runc-v2 publishes a terminal process's exit without waiting for its
        # output and closes the console: the client sometimes misses the tail. Ours must not.
        warnings.warn(
            f"reference runtime lost the last {len(expected) - len(got)} bytes of the terminal",
            stacklevel=2,
        )
        return
    assert len(got) == len(expected), (len(got), got[-80:], stderr)
    assert got == expected


def test_terminal_exec_output_intact(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    expected = expected_seq()
    for n in range(2):
        status, out, err = ctr_on_tty(
            e2e.containerd, "task", "exec", "-t", "--exec-id", f"seq-{n}", cid, "/bin/sh", "-c", SEQ
        )
        assert status == 0, err
        assert_intact(e2e, out, expected, err)
    # A process that writes and exits at once: its exit must not overtake its output.
    status, out, err = ctr_on_tty(
        e2e.containerd, "task", "exec", "-t", "--exec-id", "quick", cid,
        "/bin/sh", "-c", "printf 'last words'; exit 5",
    )  # fmt: skip
    assert status == 5, err
    assert_intact(e2e, out, b"last words", err)
    assert e2e.kill_and_delete(cid) == 137


def test_terminal_run_output_intact(e2e: E2E) -> None:
    cid = e2e.new_id()
    argv = e2e.run_argv(cid, "/bin/sh", "-c", f"{SEQ}; exit 3", opts=("--rm", "-t"))
    status, out, err = ctr_on_tty(e2e.containerd, *argv)
    assert status == 3, err
    assert_intact(e2e, out, expected_seq(), err)


# Closes every descriptor of its terminal (the master reads EIO), then reopens it.
REOPEN = "exec </dev/null >/dev/null 2>&1; sleep 0.2; echo hi >/dev/tty"


def test_terminal_run_reopened(e2e: E2E) -> None:
    cid = e2e.new_id()
    argv = e2e.run_argv(cid, "/bin/sh", "-c", REOPEN, opts=("--rm", "-t"))
    status, out, err = ctr_on_tty(e2e.containerd, *argv)
    assert status == 0, err
    assert_intact(e2e, out, b"hi\n", err)


def test_terminal_exec_reopened(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    status, out, err = ctr_on_tty(
        e2e.containerd, "task", "exec", "-t", "--exec-id", "reopen", cid, "/bin/sh", "-c", REOPEN
    )
    assert status == 0, err
    assert_intact(e2e, out, b"hi\n", err)
    assert e2e.kill_and_delete(cid) == 137
