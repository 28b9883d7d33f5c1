"""Many containers at once, many execs at once in one container."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

from .helpers import E2E, wait_for


def test_ten_containers_at_once(e2e: E2E) -> None:
    ids = [e2e.new_id() for _ in range(10)]

    def one(i: int) -> subprocess.CompletedProcess[str]:
        return e2e.run(
            "/bin/sh", "-c", f"sleep 0.5; echo container-{i}; exit {i}", cid=ids[i], timeout=120
        )

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    for i, r in enumerate(results):
        assert (r.returncode, r.stdout, r.stderr) == (i, f"container-{i}\n", ""), (i, r)


def test_ten_detached_containers(e2e: E2E) -> None:
    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: e2e.run_detached("/bin/sleep", "1000"), range(10)))
    tasks = e2e.tasks()
    assert all(tasks[cid][1] == "RUNNING" for cid in ids), tasks
    assert len({tasks[cid][0] for cid in ids}) == 10
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(e2e.kill_and_delete, ids))
    assert statuses == [137] * 10


def test_twenty_concurrent_execs(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")

    def one(i: int) -> subprocess.CompletedProcess[str]:
        script = f"echo exec-{i}; echo err-{i} >&2; sleep 0.{i % 10}; exit {i % 7}"
        return e2e.exec(cid, "/bin/sh", "-c", script, exec_id=f"ex-{i}", timeout=120)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    for i, r in enumerate(results):
        assert (r.returncode, r.stdout, r.stderr) == (i % 7, f"exec-{i}\n", f"err-{i}\n"), (i, r)
    # every exec was deleted by ctr: only the init is left
    wait_for(lambda: len(e2e.pids(cid)) == 1, what="execs gone")
    assert e2e.kill_and_delete(cid) == 137


def test_twenty_concurrent_detached_execs_then_kill_all(e2e: E2E) -> None:
    cid = e2e.run_detached("/bin/sleep", "1000")

    def one(i: int) -> subprocess.CompletedProcess[str]:
        return e2e.exec(cid, "/bin/sleep", "1000", exec_id=f"dx-{i}", opts=("-d",), timeout=120)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    wait_for(lambda: len(e2e.pids(cid)) == 21, what="21 processes")
    r = e2e.ctr("task", "kill", "--all", "-s", "SIGKILL", cid)
    assert r.returncode == 0, r.stderr
    e2e.wait_status(cid, "STOPPED")
    assert e2e.delete_task(cid) == 137
    assert e2e.ctr("container", "delete", cid).returncode == 0
