"""Foreground `ctr run --rm`: output, exit codes, stdin, large stdout, stderr, tty."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from .helpers import E2E, REFERENCE, wait_for
from .terminal import CtrTerminal, set_winsize


def test_echo(e2e: E2E) -> None:
    r = e2e.run("/bin/echo", "hello", "from", "a", "container")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from a container\n"
    assert r.stderr == ""


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_code(e2e: E2E, code: int) -> None:
    r = e2e.run("/bin/sh", "-c", f"echo before; exit {code}")
    assert r.returncode == code, r.stderr
    assert r.stdout == "before\n"


def test_death_by_sigkill_is_137(e2e: E2E) -> None:
    cid = e2e.new_id()
    proc = e2e.containerd.ctr_popen(
        *e2e.run_argv(cid, "/bin/sleep", "1000", opts=("--rm",)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        e2e.wait_status(cid, "RUNNING")
        r = e2e.ctr("task", "kill", "-s", "SIGKILL", cid)
        assert r.returncode == 0, r.stderr
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 137, err


def test_death_by_signal_in_process(e2e: E2E) -> None:
    # Not pid 1 (pid 1 ignores signals it has no handler for): a child shell kills itself.
    r = e2e.run("/bin/sh", "-c", "/bin/sh -c 'kill -TERM $$'; exit $?")
    assert r.returncode == 143, r.stderr


def test_stdin_1mib_random_through_cat(e2e: E2E) -> None:
    data = os.urandom(1 << 20)
    r = e2e.run("/bin/cat", input=data, text=False)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == len(data)
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_stdin_checksum_inside_container(e2e: E2E) -> None:
    data = os.urandom(1 << 20)
    r = e2e.run("/bin/sha256sum", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_stdout_20mb_intact(e2e: E2E, tmp_path: Path) -> None:
    blob = os.urandom(20_000_000)
    (tmp_path / "blob").write_bytes(blob)
    mount = f"type=bind,src={tmp_path},dst=/data,options=rbind:ro"
    r = e2e.run("/bin/cat", "/data/blob", opts=("--mount", mount), text=False, timeout=120)
    assert r.returncode == 0, r.stderr
    if e2e.runtime == REFERENCE and len(r.stdout) < len(blob) and blob.startswith(r.stdout):
        # containerd-shim-runc-v2 1.6 closes the output after a bounded drain at Delete and
        # sometimes loses the tail (containerd issues 12289/12364). Ours must not.
        warnings.warn(
            f"reference runtime lost the last {len(blob) - len(r.stdout)} bytes of stdout",
            stacklevel=1,
        )
        return
    assert len(r.stdout) == len(blob)
    assert r.stdout == blob


def test_stderr_kept_apart(e2e: E2E) -> None:
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 4"
    r = e2e.run("/bin/sh", "-c", script)
    assert r.returncode == 4
    assert r.stdout == "out1\nout2\n"
    assert r.stderr == "err1\nerr2\n"


def test_large_stderr_and_stdout_interleaved(e2e: E2E) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done"
    r = e2e.run("/bin/sh", "-c", script)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.split() == [f"o{i}" for i in range(2000)]
    assert r.stderr.split() == [f"e{i}" for i in range(2000)]


# ---------------------------------------------------------------------------------- tty


def test_tty_with_resize(e2e: E2E) -> None:
    cid = e2e.new_id()
    run = e2e.run_argv(cid, "/bin/sh", opts=("--rm", "-t"))
    with CtrTerminal(e2e.containerd, *run) as term:
        e2e.wait_status(cid, "RUNNING")
        term.send(b"[ -t 0 ] && [ -t 2 ] && echo tty-$((6*7))\n")
        term.expect(rb"tty-42")
        term.send(b"stty size\n")
        term.expect(rb"40 100")
        # Resize: ctr forwards SIGWINCH as ResizePty.
        set_winsize(term.master, 50, 132)
        term.proc.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 10

        def resized() -> bool:
            term.send(b"stty size\n")
            try:
                term.expect(rb"50 132", timeout=1)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                term.proc.send_signal(signal.SIGWINCH)
                return False
            return True

        wait_for(resized, timeout=15, interval=0)
        # Stdout and stderr share the terminal.
        term.send(b"echo to-$((1+1))-stderr >&2\n")
        term.expect(rb"to-2-stderr")
        term.send(b"exit 7\n")
        assert term.wait() == 7
