"""The task-kit examples and README's shim under a real private containerd (every line):
`ctr run --rm --runtime <launcher> --rootfs DIR` prints the output and returns the exit
status, events come in order, an exec runs (instance level), and nothing is left behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.event_log import EventLog
from tests.e2e.helpers import E2E, wait_for
from tests.e2e.terminal import CtrTerminal
from tests.support.containerd import PrivateContainerd
from tests.task.readme_shim import readme_shim_source

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def launchers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``containerd-shim-<name>-v2`` launchers running each program with this interpreter."""
    root = tmp_path_factory.mktemp("kitshims")
    readme = root / "readme_shim.py"
    readme.write_text(readme_shim_source())
    programs = {
        "engine": EXAMPLES / "host_engine.py",
        "instance": EXAMPLES / "host_instance.py",
        "readme": readme,
    }
    out = {}
    for name, program in programs.items():
        path = root / f"containerd-shim-kit{name}-v2"
        path.write_text(
            f"#!{sys.executable}\nimport runpy\n"
            f"runpy.run_path({str(program)!r}, run_name='__main__')\n"
        )
        path.chmod(0o755)
        out[name] = str(path)
    return out


@pytest.fixture
def env(
    request: pytest.FixtureRequest, containerd: PrivateContainerd, busybox_rootfs: Path
) -> Iterator[E2E]:
    e2e = E2E(containerd, busybox_rootfs, "", request.node.name, short="kit")
    yield e2e
    try:
        wait_for(lambda: not e2e.leftovers(), timeout=10, interval=0.1)
    except AssertionError:
        left = e2e.leftovers()
        e2e.force_cleanup()
        pytest.fail(f"left behind: {left}", pytrace=False)


@pytest.mark.parametrize("which", ["engine", "instance", "readme"])
def test_ctr_run_rm_output_exit_status_and_events(
    env: E2E, launchers: dict[str, str], which: str
) -> None:
    env.runtime = launchers[which]
    events = EventLog(env.containerd)
    try:
        cid = env.new_id(which)
        r = env.run("/bin/sh", "-c", "echo out-$0; echo err >&2; exit 7", which, cid=cid)
        assert (r.returncode, r.stdout, r.stderr) == (7, f"out-{which}\n", "err\n")
        topics = [t for t, _ in events.wait_topic(cid, "/tasks/delete")]
    finally:
        events.close()
    assert [t for t in topics if t.startswith("/tasks/")] == [
        "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete",
    ]  # fmt: skip


def test_instance_example_runs_an_exec_and_is_killed(env: E2E, launchers: dict[str, str]) -> None:
    env.runtime = launchers["instance"]
    cid = env.run_detached("/bin/sleep", "1000")
    r = env.ctr("task", "exec", "--exec-id", "e1", cid, "/bin/sh", "-c", "echo in-exec; exit 3")
    assert (r.returncode, r.stdout) == (3, "in-exec\n"), r.stderr
    assert env.kill_and_delete(cid) == 137  # SIGKILL reached the host process


def test_engine_example_on_a_terminal(env: E2E, launchers: dict[str, str]) -> None:
    """`ctr run -t`: the process is on a terminal and its output arrives. (Its size is not
    checked here: ctr sends ResizePty only after Start, so the process may run before it;
    tests/task/test_terminal.py checks the resize in order.)"""
    env.runtime = launchers["engine"]
    cid = env.new_id("tty")
    script = "test -t 0 && test -t 1 && echo on-a-tty; exit 4"
    argv = env.run_argv(cid, "/bin/sh", "-c", script, opts=("--rm", "-t"))
    with CtrTerminal(env.containerd, *argv) as tty:
        tty.expect(rb"on-a-tty\r*\n")
        assert tty.wait() == 4
