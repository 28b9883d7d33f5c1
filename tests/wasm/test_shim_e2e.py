"""containerd-shim-triowasm-v2 (the task kit over WasmEngine) under a real private containerd,
every line: `ctr run --rm --rootfs DIR` with WASI modules compiled in the test; output, args,
exit codes, a trap, a module that cannot load, Kill, metrics, a memory limit's OOM kill and
its TaskOOM, an OOM that stalls a module published while it runs, events."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.event_log import EventLog
from tests.e2e.helpers import E2E, wait_for
from tests.support.containerd import PrivateContainerd
from tests.wasm import modules
from trioshim.shim.cgroups import is_unified

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("wasmshim")
    path = root / "containerd-shim-triowasm-v2"
    path.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from trioshim.wasm.launcher import main\nmain()\n"
    )
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def wasm_rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "wasmroot"
    root.mkdir()
    for name, wat in [
        ("hello.wasm", modules.HELLO),
        ("args.wasm", modules.ARGS_ENV),
        ("loop.wasm", modules.LOOP),
        ("exit7.wasm", modules.EXIT_7),
        ("trap.wasm", modules.TRAP),
        ("lib.wasm", modules.NO_START),
        ("write.wasm", modules.WRITE_FILE),
    ]:
        modules.install(root, name, wat)
    return root


@pytest.fixture
def env(
    request: pytest.FixtureRequest, containerd: PrivateContainerd, wasm_rootfs: Path, launcher: str
) -> Iterator[E2E]:
    e2e = E2E(containerd, wasm_rootfs, launcher, request.node.name, short="wasm")
    yield e2e
    try:
        wait_for(lambda: not e2e.leftovers(), timeout=10, interval=0.1)
    except AssertionError:
        left = e2e.leftovers()
        e2e.force_cleanup()
        pytest.fail(f"left behind: {left}", pytrace=False)


def test_hello_output_and_events(env: E2E) -> None:
    events = EventLog(env.containerd)
    try:
        cid = env.new_id("hello")
        r = env.run("/hello.wasm", cid=cid)
        assert (r.returncode, r.stdout, r.stderr) == (0, "hello, wasm\n", "")
        topics = [t for t, _ in events.wait_topic(cid, "/tasks/delete")]
    finally:
        events.close()
    assert [t for t in topics if t.startswith("/tasks/")] == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ]


def test_args_exit_trap(env: E2E, wasm_rootfs: Path) -> None:
    r = env.run("/args.wasm", "a", "b c")
    assert (r.returncode, r.stdout) == (0, "/args.wasm\0a\0b c\0"), r.stderr
    assert env.run("/exit7.wasm").returncode == 7
    t = env.run("/trap.wasm")
    assert (t.returncode, t.stderr) == (134, "")
    assert env.run("/write.wasm").returncode == 0
    assert (wasm_rootfs / "written.txt").read_bytes() == b"from wasm\n"


def test_load_failure_fails_start(env: E2E) -> None:
    r = env.run("/lib.wasm")
    assert r.returncode != 0
    assert "no _start" in r.stderr, r.stderr


@pytest.mark.parametrize(("sig", "status"), [("SIGKILL", 137), ("SIGTERM", 143)])
def test_kill(env: E2E, sig: str, status: int) -> None:
    cid = env.run_detached("/loop.wasm")
    pid, state = env.tasks()[cid]
    assert state == "RUNNING" and pid > 0
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    r = env.ctr("task", "kill", "-s", sig, cid, timeout=30)
    assert r.returncode == 0, r.stderr
    env.wait_status(cid, "STOPPED")
    assert env.delete_task(cid) == status
    assert env.ctr("container", "delete", cid).returncode == 0
    assert f"memory:/{env.containerd.namespace}/{cid}" in cgroup  # ctr's /<namespace>/<id>


def test_task_metrics_read_the_modules_cgroup(env: E2E) -> None:
    cid = env.run_detached("/loop.wasm")
    r = env.ctr("task", "metrics", "--format", "json", cid)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["pids"]["current"] == 1  # the module's process, alone in its cgroup
    if "usage_usec" in metrics["cpu"]:  # cgroup v2 Metrics
        assert metrics["memory"]["usage"] > 0 and metrics["cpu"]["usage_usec"] > 0
    else:  # cgroup v1 Metrics
        assert metrics["memory"]["usage"]["usage"] > 0 and metrics["cpu"]["usage"]["total"] > 0
    r = env.ctr("task", "metrics", cid)
    assert r.returncode == 0, r.stderr
    assert cid in r.stdout and "METRIC" in r.stdout
    env.kill_and_delete(cid)


def test_a_memory_limit_ends_a_hungry_module_with_an_oom_kill(env: E2E, wasm_rootfs: Path) -> None:
    modules.install(wasm_rootfs, "hog.wasm", modules.HOG)  # touches 256 MiB
    events = EventLog(env.containerd)
    try:
        fed = env.new_id("fed")
        assert env.run("/hog.wasm", cid=fed).returncode == 0
        fed_events = events.wait_topic(fed, "/tasks/delete")
        starved = env.new_id("starved")
        r = env.run("/hog.wasm", cid=starved, opts=("--memory-limit", str(96 << 20)))
        assert r.returncode == 137, r.stderr
        starved_events = events.wait_topic(starved, "/tasks/delete")
    finally:
        events.close()
    assert "/tasks/oom" not in [t for t, _ in fed_events]
    topics = [t for t, _ in starved_events if t.startswith("/tasks/")]
    # one TaskOOM, published as the kernel notified it or handed over with the exit, and either
    # way before the exit, as runc's shim
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit", "/tasks/delete"]
    assert dict(starved_events)["/tasks/oom"]["container_id"] == starved


@pytest.mark.skipif(is_unified(), reason="cgroup v2 has no switch for the OOM killer")
def test_an_oom_that_stalls_a_module_is_published_while_it_runs(
    env: E2E, wasm_rootfs: Path, tmp_path: Path
) -> None:
    """With the OOM killer off (disableOOMKiller) a module at its limit stalls until killed:
    its /tasks/oom must come while it is stalled, and only then do we kill it."""
    modules.install(wasm_rootfs, "hog.wasm", modules.HOG)
    cid = env.new_id("stalled")
    spec = env.spec(cid, ["/hog.wasm"])
    limit = 96 << 20  # memory + swap too: with swap, the hog would swap instead of stalling
    memory = {"limit": limit, "swap": limit, "disableOOMKiller": True}
    spec["linux"].setdefault("resources", {})["memory"] = memory
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec))
    events = EventLog(env.containerd)
    try:
        r = env.ctr(
            "run", "-d", "--null-io", "--runtime", env.runtime, "--config", str(config), cid
        )
        assert r.returncode == 0, r.stderr
        before_kill = _task_topics(events.wait_topic(cid, "/tasks/oom"))
        assert env.status(cid) == "RUNNING"  # stalled at its limit, not ended by the OOM
        assert env.kill_and_delete(cid) == 137  # our SIGKILL
        after = _task_topics(events.wait_topic(cid, "/tasks/delete"))
    finally:
        events.close()
    assert before_kill[:3] == ["/tasks/create", "/tasks/start", "/tasks/oom"]
    assert "/tasks/exit" not in before_kill
    # one event per notification the shim read (each thread of the stalled module may notify)
    ooms = after.count("/tasks/oom")
    start, end = ["/tasks/create", "/tasks/start"], ["/tasks/exit", "/tasks/delete"]
    assert ooms >= 1 and after == [*start, *["/tasks/oom"] * ooms, *end]


def _task_topics(events: list[tuple[str, object]]) -> list[str]:
    return [topic for topic, _ in events if topic.startswith("/tasks/")]
