"""Detached tasks: ls, ps, pause, resume, exec, kill, kill --all, delete, metrics."""

from __future__ import annotations

import json

from .helpers import E2E, alive, wait_for
from .terminal import CtrTerminal

# pid 1 ignores SIGTERM unless it installs a handler: this one exits 42 on SIGTERM.
TRAPPING_LOOP = "trap 'exit 42' TERM; while true; do sleep 0.1; done"


def test_detached_lifecycle(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sh", "-c", TRAPPING_LOOP)
    pid, status = e2e.tasks()[cid]
    assert status == "RUNNING"
    assert pid > 0 and alive(pid)

    # ps: the init is listed (and whatever it runs at the moment).
    assert pid in e2e.pids(cid)

    # pause / resume
    r = e2e.ctr("task", "pause", cid)
    assert r.returncode == 0, r.stderr
    assert e2e.status(cid) == "PAUSED"
    r = e2e.exec(cid, "/bin/true", exec_id="while-paused")
    assert r.returncode != 0
    assert "paused" in r.stderr
    r = e2e.ctr("task", "resume", cid)
    assert r.returncode == 0, r.stderr
    assert e2e.status(cid) == "RUNNING"

    # exec: output and exit codes
    r = e2e.exec(cid, "/bin/sh", "-c", "echo exec-out; echo exec-err >&2", exec_id="x-out")
    assert (r.returncode, r.stdout, r.stderr) == (0, "exec-out\n", "exec-err\n")
    r = e2e.exec(cid, "/bin/sh", "-c", "exit 5", exec_id="x-five")
    assert r.returncode == 5, r.stderr
    r = e2e.exec(cid, "/bin/sh", "-c", "kill -9 $$", exec_id="x-killed")
    assert r.returncode == 137, r.stderr
    r = e2e.exec(cid, "/bin/cat", exec_id="x-stdin", input=b"via exec stdin\n")
    assert (r.returncode, r.stdout) == (0, "via exec stdin\n")
    # exec ids can be reused once the previous one is gone (ctr deletes it)
    r = e2e.exec(cid, "/bin/sh", "-c", "exit 6", exec_id="x-five")
    assert r.returncode == 6, r.stderr

    # kill (default SIGTERM), then STOPPED with the trap's status
    r = e2e.ctr("task", "kill", cid)
    assert r.returncode == 0, r.stderr
    e2e.wait_status(cid, "STOPPED")
    assert not alive(pid)
    assert e2e.delete_task(cid) == 42
    assert cid not in e2e.tasks()
    r = e2e.ctr("container", "delete", cid)
    assert r.returncode == 0, r.stderr


def test_kill_all(e2e: E2E) -> None:
    cid = e2e.run_detached(
        "/bin/sh", "-c", "/bin/sleep 1001 & /bin/sleep 1002 & trap 'exit 42' TERM; wait; wait"
    )
    r = e2e.exec(cid, "/bin/sleep", "1003", exec_id="bg", opts=("-d",))
    assert r.returncode == 0, r.stderr
    pids = wait_for(lambda: (p := e2e.pids(cid)) and len(p) >= 4 and p, what="4 processes")
    r = e2e.ctr("task", "kill", "--all", "-s", "SIGKILL", cid)
    assert r.returncode == 0, r.stderr
    e2e.wait_status(cid, "STOPPED")
    wait_for(lambda: not any(alive(p) for p in pids), what=f"all of {pids} dead")
    assert e2e.delete_task(cid) == 137
    r = e2e.ctr("container", "delete", cid)
    assert r.returncode == 0, r.stderr


def test_kill_exec_process(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    r = e2e.exec(cid, "/bin/sleep", "1000", exec_id="victim", opts=("-d",))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(e2e.pids(cid)) == 2, what="exec running")
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", "--exec-id", "victim", cid)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(e2e.pids(cid)) == 1, what="exec gone")
    assert e2e.status(cid) == "RUNNING"
    # A finished exec can still be deleted; killing it again is NotFound.
    r = e2e.ctr("task", "kill", "-s", "SIGKILL", "--exec-id", "victim", cid)
    assert r.returncode != 0
    assert "not found" in r.stderr
    e2e.ctr("task", "delete", "--exec-id", "victim", cid)
    assert e2e.kill_and_delete(cid) == 137


def test_paused_task_can_be_killed(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    r = e2e.ctr("task", "pause", cid)
    assert r.returncode == 0, r.stderr
    assert e2e.status(cid) == "PAUSED"
    assert e2e.kill_and_delete(cid) == 137


def test_task_metrics(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sh", "-c", "/bin/sleep 1000 & wait")
    wait_for(lambda: len(e2e.pids(cid)) == 2, what="two processes")
    r = e2e.ctr("task", "metrics", "--format", "json", cid)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    if "pids" in metrics and "current" in metrics["pids"]:  # cgroup v1 Metrics
        assert metrics["pids"]["current"] == 2
        assert metrics["memory"]["usage"]["usage"] > 0
        assert metrics["cpu"]["usage"]["total"] > 0
    else:  # cgroup v2 Metrics
        assert metrics["pids"]["current"] == 2
        assert metrics["memory"]["usage"] > 0
        assert metrics["cpu"]["usage_usec"] > 0
    r = e2e.ctr("task", "metrics", cid)
    assert r.returncode == 0, r.stderr
    assert cid in r.stdout
    assert "METRIC" in r.stdout
    e2e.kill_and_delete(cid)


WAIT_SIZE = (
    "i=0; while [ $i -lt 100 ]; do s=$(stty size 2>/dev/null); "
    '[ "$s" = "33 77" ] && break; sleep 0.1; i=$((i+1)); done; echo "size=$s"'
)


def test_exec_tty(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")
    exec_argv = (
        "task", "exec", "-t", "--exec-id", "tty-exec", cid,
        "/bin/sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-$((6*7)); " + WAIT_SIZE + "; exit 3",
    )  # fmt: skip
    with CtrTerminal(e2e.containerd, *exec_argv, rows=33, cols=77) as term:
        term.expect(rb"tty-42")
        # ctr sends the size with ResizePty right after Start: wait for it to land.
        term.expect(rb"size=33 77")
        assert term.wait() == 3
    assert e2e.kill_and_delete(cid) == 137
