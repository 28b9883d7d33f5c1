"""The two task-kit examples, in-process on MockClock (time stands still; the host processes
they start are real)."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2

from trioshim.api.containerd.runtime.task.v2 import shim_pb2 as pb
from trioshim.testing.task import open_task_shim
from trioshim.ttrpc import Unknown

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_lines(name: str) -> int:
    """Lines of code beyond imports, docstrings, comments and blank lines."""
    text = (EXAMPLES / f"{name}.py").read_text()
    body = text.split('"""', 2)[2]  # after the module docstring
    return sum(
        1
        for line in body.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "import ", "from "))
    )


def test_the_examples_are_short() -> None:
    assert code_lines("host_engine") <= 15
    assert code_lines("host_instance") <= 40


async def test_host_engine_runs_args_with_stdio_and_exit_code(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    log = tmp_path / "out.log"
    async with open_task_shim(load("host_engine").HostProcess()) as kit:
        status = await kit.run(
            "c1",
            ["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"],
            stdout=f"file://{log}",
            stderr=f"file://{log}",
        )
        await kit.wait_for_events(4)
    assert status == 3
    assert sorted(log.read_text().split()) == ["hi", "oops"]
    assert kit.topics("c1") == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


async def test_host_engine_forwards_kill(mock_clock: trio.testing.MockClock) -> None:
    async with open_task_shim(load("host_engine").HostProcess()) as kit:
        await kit.create("c1", ["/bin/sleep", "1000"])
        await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGTERM))
        waited = await kit.task.Wait(pb.WaitRequest(id="c1"))
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
    assert waited.exit_status == 128 + signal.SIGTERM


async def test_host_instance_runs_the_init_and_an_exec(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    out = tmp_path / "exec.out"
    out.touch()
    async with open_task_shim(load("host_instance").HostBackend()) as kit:
        await kit.create("c1", ["/bin/sleep", "1000"])
        started = await kit.task.Start(pb.StartRequest(id="c1"))
        pids = await kit.task.Pids(pb.PidsRequest(id="c1"))
        assert [p.pid for p in pids.processes] == [started.pid]
        spec = any_pb2.Any(value=b'{"args": ["/bin/sh", "-c", "echo from-exec; exit 4"]}')
        await kit.task.Exec(
            pb.ExecProcessRequest(id="c1", exec_id="e1", stdout=str(out), spec=spec)
        )
        await kit.task.Start(pb.StartRequest(id="c1", exec_id="e1"))
        assert (await kit.task.Wait(pb.WaitRequest(id="c1", exec_id="e1"))).exit_status == 4
        await kit.task.Delete(pb.DeleteRequest(id="c1", exec_id="e1"))
        await kit.task.Kill(pb.KillRequest(id="c1", signal=signal.SIGKILL))
        assert (await kit.task.Wait(pb.WaitRequest(id="c1"))).exit_status == 137
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        await kit.wait_for_events(7)
    assert out.read_text() == "from-exec\n"
    assert kit.topics("c1") == [
        "/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
        "/tasks/exit", "/tasks/exit", "/tasks/delete",
    ]  # fmt: skip


async def test_host_engine_a_missing_program_fails_start_clearly(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_task_shim(load("host_engine").HostProcess()) as kit:
        await kit.create("c1", ["/no/such/program"])
        with pytest.raises(Unknown, match=r"engine host-process: .*No such file"):
            await kit.task.Start(pb.StartRequest(id="c1"))
        await kit.task.Delete(pb.DeleteRequest(id="c1"))
        assert await kit.run("c2", ["/bin/true"]) == 0  # the shim serves on
