"""The order and content of the events `ctr events` sees."""

from __future__ import annotations

import warnings
from typing import Any

from .helpers import E2E, REFERENCE


def topics_of(e2e: E2E, evs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The topics in order. Under containerd 2.1, containerd-shim-runc-v2's `/tasks/delete`
    now and then has not arrived by `/containers/delete` (seen in about one run in three: the
    shim is shut down right after Delete, while its publisher still holds the event). From the
    reference that is a warning; from ours, a failure."""
    topics = [t for t, _ in evs]
    if e2e.runtime == REFERENCE and "/tasks/delete" not in topics:
        warnings.warn("the reference shim's /tasks/delete came late or not at all", stacklevel=2)
        topics.insert(topics.index("/containers/delete"), "/tasks/delete")
    return topics


def test_events_of_a_run(e2e: E2E) -> None:
    events = e2e.events()
    try:
        cid = e2e.new_id()
        r = e2e.run("/bin/sh", "-c", "exit 3", cid=cid)
        assert r.returncode == 3, r.stderr
        evs = events.wait_topic(cid, "/containers/delete")
    finally:
        events.close()
    assert topics_of(e2e, evs) == [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ], evs
    by_topic = dict(evs)
    pid = by_topic["/tasks/create"]["pid"]
    assert pid > 0
    assert by_topic["/tasks/start"]["pid"] == pid
    exit_ = by_topic["/tasks/exit"]
    assert (exit_["id"], exit_["pid"], exit_.get("exit_status", 0)) == (cid, pid, 3)
    if "/tasks/delete" in by_topic:
        delete = by_topic["/tasks/delete"]
        assert (delete["pid"], delete.get("exit_status", 0)) == (pid, 3)
        assert delete["exited_at"] == exit_["exited_at"]
    assert by_topic["/tasks/create"]["bundle"] == str(e2e.containerd.bundle(cid))


def test_events_of_exec_pause_kill(e2e: E2E) -> None:
    events = e2e.events()
    try:
        cid = e2e.run_detached("/bin/sleep", "1000")
        r = e2e.exec(cid, "/bin/sh", "-c", "exit 7", exec_id="ev-exec")
        assert r.returncode == 7, r.stderr
        assert e2e.ctr("task", "pause", cid).returncode == 0
        assert e2e.ctr("task", "resume", cid).returncode == 0
        assert e2e.kill_and_delete(cid) == 137
        evs = events.wait_topic(cid, "/containers/delete")
    finally:
        events.close()
    assert topics_of(e2e, evs) == [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ], evs
    init_pid = evs[1][1]["pid"]
    added, started, exec_exit = evs[3][1], evs[4][1], evs[5][1]
    assert added["exec_id"] == started["exec_id"] == exec_exit["id"] == "ev-exec"
    assert started["pid"] == exec_exit["pid"] != init_pid
    assert exec_exit["exit_status"] == 7
    init_exit = evs[8][1]
    assert (init_exit["id"], init_exit["pid"], init_exit["exit_status"]) == (cid, init_pid, 137)
